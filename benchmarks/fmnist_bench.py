"""Fashion-MNIST to real photos: a model trained on Fashion-MNIST, tested on clothing photos
with and without Zalando's conversion (`model/fashion_mnist.py`).

Steps:
1. import `../shared/datasets/fashion-mnist/fashion-mnist_test-1000.csv` with the existing
   importer (`import fashion-mnist`) and split it 85/15 by item (seed 0);
2. train simple-cnn + unified head on it at 28x28 grey (`--seeds` runs, each a few seconds);
3. tag the clothing-dataset-small validation photos of the classes that map onto Fashion-MNIST's
   (t-shirt -> T-shirt/top, pants -> Trouser, longsleeve -> Pullover, dress -> Dress,
   outwear -> Coat, shirt -> Shirt, shoes -> Sneaker, Sandal or Ankle boot), three ways:
   - `plain`: the model's own preprocessing (squash the photo to 28x28 grey);
   - `converted`: `to_fashion_mnist(photo)` first (trim, fit 28, sharpen, centre, negate),
     Zalando's documented steps with their subsampling;
   - `converted-box`: the same with box (area) resampling instead of subsampling;
   - `converted-level`: box resampling, and each pixel's grey distance from the background
     instead of the negation (the same on white; black for any plain background).
   Until the `fashion-mnist` resize mode is wired into preprocessing, the conversion is applied
   here, before the model's preprocessing (which then leaves the 28x28 image as it is).

With `--products`, the same on white-background studio photos of the product zip (articleTypes
mapped the same way, e.g. Tshirts -> T-shirt/top, Casual Shoes -> Sneaker, Handbags -> Bag).

Reports accuracy per way (mean over seeds, and each seed), per class, the group level, and the
paired bootstrap interval of converted - plain.

Example:
    python benchmarks/fmnist_bench.py --seeds 3 --out bench-out/fmnist
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
MAPPING = {
    "t-shirt": {"T-shirt/top"},
    "pants": {"Trouser"},
    "longsleeve": {"Pullover"},
    "dress": {"Dress"},
    "outwear": {"Coat"},
    "shirt": {"Shirt"},
    "shoes": {"Sneaker", "Sandal", "Ankle boot"},
}
PRODUCT_MAPPING = {  # studio photos on white: what Zalando's conversion was made for
    "Tshirts": {"T-shirt/top"},
    "Trousers": {"Trouser"},
    "Jeans": {"Trouser"},
    "Sweaters": {"Pullover"},
    "Sweatshirts": {"Pullover"},
    "Dresses": {"Dress"},
    "Jackets": {"Coat"},
    "Shirts": {"Shirt"},
    "Casual Shoes": {"Sneaker"},
    "Sports Shoes": {"Sneaker"},
    "Sandals": {"Sandal"},
    "Handbags": {"Bag"},
}
WAYS = ("plain", "converted", "converted-box", "converted-level")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--csv", type=Path, default=DATASETS / "fashion-mnist" / "fashion-mnist_test-1000.csv"
    )
    p.add_argument(
        "--photos", type=Path, default=DATASETS / "clothing-dataset-small" / "validation"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "fmnist")
    p.add_argument(
        "--products",
        type=Path,
        default=None,
        help="a dataset dir of the product zip (e.g. bench-out/label/products): also score "
        "its white-background photos of the mapped articleTypes",
    )
    p.add_argument("--per-class", type=int, default=60, help="product photos per articleType")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    return p.parse_args()


def prepare(args: argparse.Namespace) -> Path:
    from fashion_tagger.dataset import ops
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.sources.fashion_mnist import import_fashion_mnist

    out = args.out / "fmnist"
    if not (out / "items.parquet").is_file():
        import_fashion_mnist(args.csv, out, workers=1, progress=False)
        ds, _ = ops.split(Dataset.open(out), val=0.15, test=0.0, seed=0, force=True)
        ds.save()
    return out


def train_run(args: argparse.Namespace, data: Path, seed: int) -> tuple[Path, float]:
    from fashion_tagger.training.config import DataConfig, ModelConfig, TrainConfig
    from fashion_tagger.training.train import train

    run = args.out / f"run-seed{seed}"
    if (run / "model.safetensors").is_file():
        return run, 0.0
    config = TrainConfig(
        data=DataConfig(
            image_size=(28, 28), channels=1, workers=0, cache_dir=str(args.out / "cache")
        ),
        model=ModelConfig(backbone="simple-cnn", head="unified", hidden=256),
        epochs=args.epochs,
        batch_size=64,
        lr=3e-3,
        seed=seed,
        checkpoint_every=0,
        progress=False,
    )
    t = time.perf_counter()
    train(data, run, config)
    return run, time.perf_counter() - t


def photos(folder: Path) -> list[tuple[Path, str]]:
    out = []
    for cls in sorted(MAPPING):
        out += [(f, cls) for f in sorted((folder / cls).glob("*.jpg"))]
    return out


def product_photos(root: Path, per_class: int) -> list[tuple[Path, str]]:
    """The first `per_class` photos (by item id) of each mapped articleType of the zip."""
    from fashion_tagger.dataset.core import Dataset

    ds = Dataset.open(root)
    out: list[tuple[Path, str]] = []
    for cls in sorted(PRODUCT_MAPPING):
        rows = [i for i, p in enumerate(ds.labels) if p and p[-1] == cls][:per_class]
        out += [(ds.image_path(i), cls) for i in rows]
    return out


def inputs(files: list[tuple[Path, str]]) -> dict[str, list]:
    """The model inputs of each way: the photo itself, or its 28x28 conversion."""
    from fashion_tagger.dataset import images
    from fashion_tagger.model.fashion_mnist import to_fashion_mnist

    out: dict[str, list] = {w: [] for w in WAYS}
    for f, _ in files:
        img = images.decode(f)
        out["plain"].append(f)
        out["converted"].append(to_fashion_mnist(img))
        out["converted-box"].append(to_fashion_mnist(img, resample="box"))
        out["converted-level"].append(to_fashion_mnist(img, resample="box", level=True))
    return out


def score(
    run: Path, files, ways: dict[str, list], mapping: dict[str, set[str]] = MAPPING
) -> dict[str, np.ndarray]:
    """Per way, (N,) whether the predicted class is one the photo's class maps onto."""
    from fashion_tagger.inference.tagger import Tagger

    tagger = Tagger.load(run, backend="torch")
    truth = [mapping[c] for _, c in files]
    out = {}
    for way, srcs in ways.items():
        preds = tagger.predict(srcs, batch_size=128, top_k=1)
        assert not any(p.error for p in preds), [p.error for p in preds if p.error][:3]
        out[way] = np.array([p.labels[-1] in t for p, t in zip(preds, truth, strict=True)])
        out[way + ":pred"] = np.array([p.labels[-1] for p in preds])
    return out


def fmnist_val_accuracy(run: Path, data: Path) -> float:
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.inference.tagger import Tagger

    ds = Dataset.open(data).split("val")
    tagger = Tagger.load(run, backend="torch")
    preds = tagger.predict([ds.image_path(i) for i in range(len(ds))], batch_size=256, top_k=1)
    return float(np.mean([p.labels == ds.labels[i] for i, p in enumerate(preds)]))


def bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % paired bootstrap interval of mean(a) - mean(b) over photos."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    diffs = a[idx].mean(axis=1) - b[idx].mean(axis=1)
    return float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def main() -> None:
    import torch

    torch.set_num_threads(1)
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepare(args)
    files = photos(args.photos)
    t = time.perf_counter()
    ways = inputs(files)
    convert_ms = (time.perf_counter() - t) / len(files) * 1000 / (len(WAYS) - 1)
    classes = np.array([c for _, c in files])
    results: dict = {"photos": len(files), "per_class_n": {}, "seeds": []}
    for c in MAPPING:
        results["per_class_n"][c] = int((classes == c).sum())
    hits: dict[str, list[np.ndarray]] = {w: [] for w in WAYS}
    hits_p: dict[str, list[np.ndarray]] = {w: [] for w in WAYS}
    products = product_photos(args.products, args.per_class) if args.products else []
    product_ways = inputs(products) if products else {}
    results["product_photos"] = len(products)
    for seed in range(args.seeds):
        run, secs = train_run(args, data, seed)
        got = score(run, files, ways)
        entry = {
            "seed": seed,
            "train_s": round(secs, 1),
            "fmnist_val_acc": fmnist_val_accuracy(run, data),
        }
        for w in WAYS:
            hits[w].append(got[w])
            entry[w] = float(got[w].mean())
            entry[w + "_per_class"] = {c: float(got[w][classes == c].mean()) for c in MAPPING}
            entry[w + "_predicted"] = dict(
                zip(*np.unique(got[w + ":pred"], return_counts=True), strict=True)
            )
            entry[w + "_predicted"] = {k: int(v) for k, v in entry[w + "_predicted"].items()}
        if products:
            got_p = score(run, products, product_ways, PRODUCT_MAPPING)
            for w in WAYS:
                hits_p[w].append(got_p[w])
                entry["products_" + w] = float(got_p[w].mean())
        results["seeds"].append(entry)
        print(
            json.dumps({k: v for k, v in entry.items() if "per_class" not in k}, default=str),
            flush=True,
        )
    for w in WAYS:
        accs = [float(h.mean()) for h in hits[w]]
        results[w] = {"mean": float(np.mean(accs)), "min": min(accs), "max": max(accs)}
    a = np.concatenate(hits["converted"]).astype(float)
    b = np.concatenate(hits["plain"]).astype(float)
    results["converted_minus_plain_ci95"] = bootstrap(a, b)
    for w in WAYS if products else ():
        accs = [float(h.mean()) for h in hits_p[w]]
        results["products_" + w] = {
            "mean": float(np.mean(accs)),
            "min": min(accs),
            "max": max(accs),
        }
    if products:
        a = np.concatenate(hits_p["converted"]).astype(float)
        b = np.concatenate(hits_p["plain"]).astype(float)
        results["products_converted_minus_plain_ci95"] = bootstrap(a, b)
    results["convert_ms_per_photo"] = round(convert_ms, 2)
    results["chance"] = float(np.mean([len(MAPPING[c]) / 10 for c in classes]))
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps({k: v for k, v in results.items() if k != "seeds"}, indent=2, default=str))


if __name__ == "__main__":
    main()

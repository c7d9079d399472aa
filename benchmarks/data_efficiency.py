"""What pretrained weights buy as the catalogue shrinks, and what each time budget buys.

Every run trains the same product dataset dir (imported and split by item with val 0.15, test
0.15, seed 0) under a time budget sized by `plan_budget` and enforced by `max_time`, then is
scored on the whole test split, which no run sees. A run is `WEIGHTS:TRAIN_IMAGES:MINUTES`:
- WEIGHTS `lite0`: the default pretrained recipe (EfficientNet-Lite0 from its weights package,
  128x96, heads alone for the first epoch, backbone at 0.1x the learning rate, channels_last;
  batch 64, lr 2e-3), or `none`: the best from-scratch recipe measured before (simple-cnn,
  80x64, batch 128, lr 3e-3). Both: unified head, hidden 512, label smoothing 0.1, no class
  weights, no augmentation. `frozen`: the `make demo` recipe (heads on frozen Lite0
  features, batch 256, 20 epochs), timed whole.
- TRAIN_IMAGES: how many train images to keep (`all`, or a number: whole items drawn at random
  with seed 0, each smaller set inside the larger ones). The val split shrinks in proportion
  (at least 300 images), as a user with that catalogue would have; the test split stays whole.
- MINUTES: the budget.

Each finished run is skipped on a re-run, so an interrupted benchmark resumes.

Example:
    python benchmarks/data_efficiency.py --products data/products --out bench-out/efficiency
    python benchmarks/data_efficiency.py --runs lite0:all:10,lite0:all:3 --out bench-out/budgets
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _products
import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
ZIP = ROOT.parent / "shared" / "datasets" / "fashion-product-images-small.zip"
CURVE = ",".join(f"{w}:{n}:3" for n in ("1000", "3000", "10000", "all") for w in ("lite0", "none"))
RECIPES = {
    "lite0": {"weights": "lite0", "image_size": None, "batch_size": 64, "lr": 2e-3},
    "none": {"weights": None, "image_size": (80, 64), "batch_size": 128, "lr": 3e-3},
    "frozen": {"weights": "lite0", "image_size": None, "batch_size": 256, "lr": 2e-3},
}
FROZEN_EPOCHS = 20
"""`frozen` is what `quickstart` and `make demo` train: heads alone on Lite0 features computed
once, for a fixed 20 epochs (seconds each); its budget is a ceiling, and its wall time, features
included, is what the table reports."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ZIP, help="the product zip (imported if needed)")
    p.add_argument("--products", type=Path, help="an imported, split product dataset dir to use")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "efficiency")
    p.add_argument("--runs", default=CURVE, help="comma-separated WEIGHTS:TRAIN_IMAGES:MINUTES")
    p.add_argument("--workers", type=int, default=2)
    return p.parse_args()


def subset(products: Path, n: int | None, out: Path) -> Path:
    """`products` with only `n` train images (whole items, seed 0, nested as n grows) and the
    val split cut in the same proportion; the other rows keep no split, so no run sees them."""
    from fashion_tagger.dataset import ops
    from fashion_tagger.dataset.core import Dataset

    if n is None:
        return products
    target = out / f"train-{n}"
    if (target / "items.parquet").is_file():
        return target
    ds = Dataset.open(products)
    split = np.array(ds.table.column("split").to_pylist(), dtype=object)
    items = np.array(ds.table.column("item_id").to_pylist(), dtype=object)
    n_train = int((split == "train").sum())
    keep_val = max(300, round((split == "val").sum() * n / n_train))
    for name, quota in (("train", n), ("val", keep_val)):
        rows = np.flatnonzero(split == name)
        order = np.random.default_rng(0).permutation(sorted(set(items[rows])))
        rank = {item: i for i, item in enumerate(order)}
        rows = rows[np.argsort([rank[i] for i in items[rows]], kind="stable")]
        split[rows[quota:]] = ""  # whole items: a photo's siblings follow it in this order
    table = ds.table.set_column(
        ds.table.schema.get_field_index("split"), "split", pa.array(split.tolist(), pa.string())
    )
    ops.relocate(ds.with_table(table), target).save()
    return target


def config_for(weights: str, minutes: float, cache: Path):
    from fashion_tagger.training.config import DataConfig, ModelConfig, TrainConfig

    r = RECIPES[weights]
    return TrainConfig(
        data=DataConfig(
            image_size=r["image_size"], class_weights="none", workers=2, cache_dir=str(cache)
        ),
        model=ModelConfig(
            backbone="simple-cnn",  # the weights' alias picks its own architecture
            head="unified",
            hidden=512,
            weights=r["weights"],
            freeze_backbone=weights == "frozen",
        ),
        batch_size=r["batch_size"],
        lr=r["lr"],
        label_smoothing=0.1,
        max_time=str(minutes),
        checkpoint_every=0,
        progress=False,
    )


def run_one(spec: str, products: Path, args: argparse.Namespace) -> dict:
    from dataclasses import replace

    from train_bench import score

    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.model.rundir import RunDir
    from fashion_tagger.training.budget import plan_budget
    from fashion_tagger.training.train import train

    weights, size, minutes = spec.split(":")
    n = None if size == "all" else int(size)
    data = subset(products, n, args.out)
    cache = args.out / "cache"
    run_dir = args.out / "runs" / spec.replace(":", "-")
    if not (run_dir / "model.json").is_file():
        config = config_for(weights, float(minutes), cache)
        counts = Dataset.open(data).split_counts()
        if config.model.freeze_backbone:
            epochs, fraction = FROZEN_EPOCHS, 1.0
        else:
            epochs, fraction = plan_budget(config, counts["train"], float(minutes), counts["val"])
        t = time.perf_counter()
        train(data, run_dir, replace(config, epochs=epochs, train_fraction=fraction))
        wall = time.perf_counter() - t
        (run_dir / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
        print(f"{spec}: trained in {wall:.0f} s", flush=True)
    run = RunDir.open(run_dir)
    res, _ = score(run_dir, products, "test", cache)
    training = run.config["training"]
    wall = run_dir / "wall_seconds.txt"
    return {
        "wall_seconds": float(wall.read_text()) if wall.is_file() else None,
        "train_images": Dataset.open(data).split_counts()["train"],
        "epochs": training["epochs_run"],
        "train_fraction": training.get("train_fraction", 1.0),
        "train_seconds": training["seconds"],
        "images_per_s": training["throughput"]["images_per_s"],
        "test": res,
    }


def table(results: dict) -> str:
    lines = [
        "| run | train images | epochs x share | train min | wall min | img/s | master | sub | articleType (acc / wF1) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for spec, r in results.items():
        lv = r["test"]["levels"]
        acc = [100 * v["accuracy"] for v in lv.values()]
        leaf = list(lv.values())[-1]
        lines.append(
            f"| {spec} | {r['train_images']} | {r['epochs']} x {r['train_fraction']:.2f} | "
            f"{r['train_seconds'] / 60:.1f} | {(r.get('wall_seconds') or float('nan')) / 60:.1f} | "
            f"{r['images_per_s']:.0f} | {acc[0]:.1f} | {acc[1]:.1f} | "
            f"{acc[-1]:.1f} / {100 * leaf['weighted_f1']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    products = args.products or _products.prepare_products(
        args.data, args.out / "products", workers=args.workers
    )
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for spec in args.runs.split(","):
        results[spec] = run_one(spec, products, args)
        print(spec, json.dumps(results[spec]), flush=True)
        path.write_text(json.dumps(results, indent=2))
    print(table({s: results[s] for s in args.runs.split(",")}))
    print(f"results: {path}")


if __name__ == "__main__":
    main()

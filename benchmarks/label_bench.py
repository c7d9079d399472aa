"""Auto-labelling: how right are the rows `label` accepts on its own, and how many are there?

Steps (each skipped when its output exists, so a re-run only redoes what is missing):
1. import the Kaggle "Fashion Product Images (Small)" zip and split it by item: 70 % train,
   10 % val (both labelled: the 80 % the model learns from), 20 % test (treated as unlabelled);
2. train a short fast recipe: simple-cnn + unified head at 80x64 for `--minutes` (the clocked
   schedule), no class weights, label smoothing 0.1;
3. `label` the test photos (their stored files, as if scraped: no labels go in) into a new
   dataset dir at the default `--min-confidence 0.9`; every row keeps its path confidence in
   meta, so the other thresholds are read from the same run;
4. per threshold: the share of rows accepted automatically and their precision against the true
   labels (whole path, and per level), and the accuracy of the queued rest.

Example:
    python benchmarks/label_bench.py --minutes 4 --out bench-out/label
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _products
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATASETS / "fashion-product-images-small.zip")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "label")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--min-confidence", type=float, default=0.9)
    return p.parse_args()


def prepare(args: argparse.Namespace) -> Path:
    return _products.prepare_products(
        args.data, args.out / "products", workers=args.workers, val=0.1, test=0.2
    )


def train_run(args: argparse.Namespace, data: Path) -> tuple[Path, float]:
    from fashion_tagger.training.config import DataConfig, ModelConfig, TrainConfig
    from fashion_tagger.training.train import train

    run = args.out / "run"
    if (run / "model.safetensors").is_file():
        return run, 0.0
    config = TrainConfig(
        data=DataConfig(
            image_size=(80, 64),
            class_weights="none",
            workers=args.workers,
            cache_dir=str(args.out / "cache"),
        ),
        model=ModelConfig(backbone="simple-cnn", head="unified", hidden=512),
        epochs=args.epochs,
        batch_size=128,
        lr=3e-3,
        label_smoothing=0.1,
        max_time=str(args.minutes),
        seed=0,
        checkpoint_every=0,
        progress=False,
    )
    t = time.perf_counter()
    train(data, run, config)
    return run, time.perf_counter() - t


def main() -> None:
    import torch

    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.inference.label import label

    torch.set_num_threads(2)
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepare(args)
    run, train_s = train_run(args, data)
    test = Dataset.open(data).split("test")
    truth = {
        test.table.column("sha256")[i].as_py(): tuple(test.labels[i]) for i in range(len(test))
    }
    files = sorted({test.image_path(i) for i in range(len(test))})
    out = args.out / "labelled"
    t = time.perf_counter()
    summary = label(run, files, out, args.min_confidence, batch_size=128, progress=False)
    label_s = time.perf_counter() - t
    ds = Dataset.open(out)
    conf = np.array([ds.meta(i)["confidence"] for i in range(len(ds))])
    pred = [tuple(ds.meta(i)["predicted"]) for i in range(len(ds))]
    true = [truth[s] for s in ds.table.column("sha256").to_pylist()]
    depth = max(len(t) for t in true)  # not ds.info.levels: empty while no row is labelled
    right = np.array([p == t for p, t in zip(pred, true, strict=True)])
    right_lvl = np.array(
        [[p[: d + 1] == t[: d + 1] for d in range(depth)] for p, t in zip(pred, true, strict=True)]
    )
    rows = []
    for p in THRESHOLDS:
        acc = conf >= p
        rows.append(
            {
                "threshold": p,
                "accepted_share": float(acc.mean()),
                "accepted": int(acc.sum()),
                "precision_path": float(right[acc].mean()) if acc.any() else None,
                "precision_per_level": [float(x) for x in right_lvl[acc].mean(axis=0)]
                if acc.any()
                else None,
                "queued_accuracy": float(right[~acc].mean()) if (~acc).any() else None,
            }
        )
    results = {
        "recipe": "simple-cnn + unified, 80x64, no class weights, label smoothing 0.1, "
        f"{args.minutes} min clocked schedule on CPU",
        "train_s": round(train_s, 1),
        "test_photos": len(files),
        "labelled_rows": len(ds),
        "label_s": round(label_s, 1),
        "photos_per_s": round(len(ds) / label_s, 1),
        "summary_at_default": summary.to_dict() | {"skipped": len(summary.skipped)},
        "levels": list(Dataset.open(data).level_names),
        "thresholds": rows,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

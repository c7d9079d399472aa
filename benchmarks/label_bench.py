"""Auto-labelling: how right are the rows `label` accepts on its own, and how many are there?

Steps (the import, the trained run and the probabilities are kept, so a re-run redoes little):
1. import the Kaggle "Fashion Product Images (Small)" zip and split it by item (seed 0): 70 %
   train, 10 % val (the 80 % the model learns from), 20 % test (treated as unlabelled);
2. train `make demo`'s recipe: frozen pretrained Lite0 features + unified head, 20 epochs,
   batch 256, hidden 512, lr 2e-3, label smoothing 0.1, no class weights. `train` ends by
   fitting one temperature per level on val (model.json `temperature`, `temperature_fit`);
3. the model's probabilities on every test photo, once at T = 1 (`Tagger` with the
   temperatures set aside) and scaled as model.json says (`model.calibration`, the function
   the Tagger applies): per threshold 0.5..0.95, the share of photos whose path confidence
   reaches it and the precision of those rows against their true labels, whole path and per
   level; the ECE (15 bins) of the path confidence before and after scaling;
4. `label` itself on the test photos (their stored files, as if scraped: no label goes in) at
   its default --min-confidence, timed (photos/s), and checked against step 3's table.

Example:
    python benchmarks/label_bench.py --out bench-out/label
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import _products
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATASETS / "fashion-product-images-small.zip")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "label")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument(
        "--min-confidence", type=float, default=None, help="for step 4 (default: label's)"
    )
    p.add_argument("--no-label", action="store_true", help="skip step 4 (the timed label run)")
    p.add_argument(
        "--label-photos", type=int, default=0, help="step 4 on the first N test photos (0 = all)"
    )
    return p.parse_args()


def train_run(args: argparse.Namespace, data: Path) -> tuple[Path, float]:
    """Step 2: the quickstart recipe on the products (skipped when the run dir exists)."""
    from fashion_tagger.training.config import DataConfig, ModelConfig, TrainConfig
    from fashion_tagger.training.train import train

    run = args.out / "run-lite0"
    if (run / "model.json").is_file():
        return run, 0.0
    config = TrainConfig(
        data=DataConfig(
            class_weights="none", workers=args.workers, cache_dir=str(args.out / "cache")
        ),
        model=ModelConfig(head="unified", hidden=512, weights="lite0", freeze_backbone=True),
        epochs=20,
        batch_size=256,
        lr=2e-3,
        label_smoothing=0.1,
        seed=0,
        checkpoint_every=0,
        progress=False,
    )
    t = time.perf_counter()
    train(data, run, config)
    return run, time.perf_counter() - t


def raw_probabilities(run: Path, files: list[Path], cache: Path) -> list[np.ndarray]:
    """Step 3a: per level, the model's own (T = 1) probabilities on `files` (cached .npz)."""
    from fashion_tagger.inference.tagger import Tagger

    if cache.is_file():
        with np.load(cache) as z:
            return [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
    tagger = Tagger.load(run, backend="torch")
    raw = Tagger(replace(tagger.spec, temperatures=()), tagger.backend, "torch")
    parts: list[list[np.ndarray]] = []
    for batch in raw.iter_probs(files, batch_size=128):
        if batch.errors:
            raise SystemExit(f"unreadable test photos: {batch.errors}")
        parts.append(batch.probs.levels)
    levels = [np.concatenate(p) for p in zip(*parts, strict=True)]
    np.savez(cache, **{f"level_{i}": p for i, p in enumerate(levels)})
    return levels


def table(leaves, levels: list[np.ndarray], truth: np.ndarray) -> tuple[list[dict], float]:
    """Per threshold: accepted share and precision (path, per level) of the accepted rows; and
    the ECE of the path confidence."""
    from fashion_tagger.model import calibration as cal

    paths, conf = cal.path_confidence(leaves, levels)
    right_lvl = np.stack(
        [(paths[:, : d + 1] == truth[:, : d + 1]).all(axis=1) for d in range(truth.shape[1])],
        axis=1,
    )
    right = (paths == truth).all(axis=1)
    rows = []
    for p in THRESHOLDS:
        acc = conf >= p
        rows.append(
            {
                "threshold": p,
                "accepted": int(acc.sum()),
                "accepted_share": float(acc.mean()),
                "precision_path": float(right[acc].mean()) if acc.any() else None,
                "precision_per_level": [float(x) for x in right_lvl[acc].mean(axis=0)]
                if acc.any()
                else None,
                "queued_path_accuracy": float(right[~acc].mean()) if (~acc).any() else None,
            }
        )
    return rows, cal.expected_calibration_error(conf, right)


def timed_label(args: argparse.Namespace, run: Path, files: list[Path]) -> dict:
    """Step 4: the real `label` over the test photos, timed, at its default threshold."""
    import inspect

    from fashion_tagger.curation.label import label
    from fashion_tagger.dataset.core import Dataset

    default = inspect.signature(label).parameters["min_confidence"].default
    p = default if args.min_confidence is None else args.min_confidence
    out = args.out / "labelled"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    summary = label(run, files, out, p, batch_size=64, progress=False)
    seconds = time.perf_counter() - t
    ds = Dataset.open(out)
    conf = {ds.table.column("sha256")[i].as_py(): ds.meta(i)["confidence"] for i in range(len(ds))}
    return {
        "min_confidence": p,
        "photos": summary.photos,
        "rows": summary.added,
        "labelled": summary.labelled,
        "queued": summary.queued,
        "seconds": round(seconds, 1),
        "photos_per_s": round(summary.added / seconds, 1),
        "load_1min_after": round(os.getloadavg()[0], 2),
        "confidence_by_sha": conf,
    }


def main() -> None:
    import torch

    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.model import calibration as cal
    from fashion_tagger.model.decode import LeafTable
    from fashion_tagger.model.rundir import RunDir

    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = _products.prepare_products(
        args.data, args.out / "products", workers=args.workers, val=0.1, test=0.2
    )
    run_dir, train_s = train_run(args, data)
    run = RunDir.open(run_dir)
    spec = run.spec
    test = Dataset.open(data).split("test")
    # one row per distinct photo (label keeps one row per content hash)
    first = {}
    for i, sha in enumerate(test.table.column("sha256").to_pylist()):
        first.setdefault(sha, i)
    rows = sorted(first.values())
    files = [test.image_path(i) for i in rows]
    truth = np.array([spec.taxonomy.encode(test.labels[i]) for i in rows], dtype=np.int64)
    t = time.perf_counter()
    raw = raw_probabilities(run_dir, files, args.out / f"test-probs-{spec.model_id}.npz")
    probs_s = time.perf_counter() - t
    scaled = cal.apply_temperatures(raw, spec.temperatures)
    leaves = LeafTable.from_taxonomy(spec.taxonomy)
    before, ece_before = table(leaves, raw, truth)
    after, ece_after = table(leaves, scaled, truth)
    results = {
        "recipe": "frozen Lite0 features + unified head (hidden 512), 20 epochs, batch 256, "
        "lr 2e-3, label smoothing 0.1, no class weights (make demo's)",
        "split": "by item, seed 0: train 70 %, val 10 %, test 20 % (auto-labelled)",
        "train_s": round(train_s, 1),
        "test_photos": len(files),
        "levels": list(spec.level_names),
        "temperatures": dict(zip(spec.level_names, spec.temperatures, strict=True)),
        "temperature_fit": run.config.get("temperature_fit"),
        "test_ece_path": {"bins": cal.ECE_BINS, "before": ece_before, "after": ece_after},
        "test_path_accuracy": float(
            (cal.path_confidence(leaves, scaled)[0] == truth).all(1).mean()
        ),
        "probabilities_s": round(probs_s, 1),
        "thresholds_before": before,
        "thresholds_after": after,
    }
    if not args.no_label:
        n = args.label_photos or len(files)
        timed = timed_label(args, run_dir, files[:n])
        conf_by_sha = timed.pop("confidence_by_sha")
        # label's own confidences are step 3's scaled ones (same function, same photos)
        shas = [test.table.column("sha256")[i].as_py() for i in rows[:n]]
        conf = cal.path_confidence(leaves, [p[:n] for p in scaled])[1]
        mine = np.array([conf_by_sha[s] for s in shas])
        timed["max_confidence_difference_vs_table"] = float(np.max(np.abs(mine - conf)))
        results["label"] = timed
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

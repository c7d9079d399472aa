"""Training with 2 DDP processes versus 1 on the same CPU cores: step time, images/s and the
validation accuracy after the same number of epochs.

The data is the synthetic shapes dataset of the tests (`tests/run_fixtures.py`: shape > colour,
size and stripe attributes, all learnable from the pixels), `--images` of them at 32x32, split
60/20/20. Each configuration is one `fashion-tagger train` command, so DDP launches its second
process as a user's run would; `--accelerator cpu --strategy ddp` are passed when the CLI has
them (plain `--devices 2` picks DDP on CPU too). Both runs use the same per-process batch, so
with 2 processes a step sees twice the images and an epoch has half the steps.

Timing comes from the run dir: `model.json` records rank 0's time in steps and waiting for data
(`training.throughput`), the steps run and the best validation accuracy. The unified head runs
with `--messages latent` here: with label messages it holds one classifier that no output uses,
which DDP refuses unless told to look for unused parameters (see the report of issue 13).

    python benchmarks/ddp_bench.py                      # 2,000 images, 6 epochs, 1 vs 2
    python benchmarks/ddp_bench.py --images 4000 --epochs 10 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "fashion_tagger"]


def make_dataset(root: Path, n: int) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from run_fixtures import make_synthetic_dataset

    return make_synthetic_dataset(root, n=n, seed=0)


def _cli_has(flag: str) -> bool:
    text = subprocess.run([*CLI, "train", "--help"], capture_output=True, text=True).stdout
    return flag in text


def train_once(
    dataset: Path, run: Path, devices: int, threads: int | None, args: argparse.Namespace
) -> dict:
    cmd = [
        *CLI, "train", str(dataset), "--out", str(run), "--devices", str(devices),
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
        "--image-size", "32", "--hidden", "128", "--messages", "latent", "--lr", "3e-3",
        "--workers", "0", "--no-progress", "--class-weights", "none", "--seed", "0",
        "--checkpoint-every", "0",
    ]  # fmt: skip
    if devices > 1 and _cli_has("--strategy"):
        cmd += ["--accelerator", "cpu", "--strategy", "ddp"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads:  # torch's intra-op threads per process (Lightning gives DDP processes one each)
        env["OMP_NUM_THREADS"] = str(threads)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(
            f"train --devices {devices} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )
    model = json.loads((run / "model.json").read_text())
    training, metrics = model["training"], model["metrics"]
    tp = training["throughput"]
    steps = training["global_step"]
    return {
        "processes": devices,
        "threads": threads or "default",
        "steps": steps,
        "step_s": round(tp["train_seconds"] / steps, 4),
        "train_seconds": tp["train_seconds"],
        "data_fraction": tp["data_fraction"],
        # rank 0 sees 1/devices of each epoch; the run as a whole sees all of it
        "images_per_s": round(tp["images_per_s"] * devices, 1),
        "fit_seconds": training["seconds"],
        "wall_seconds": round(wall, 1),
        "val_acc_leaf": round(metrics["val_acc_leaf"], 4),
        **{k: round(v, 4) for k, v in metrics.items() if k.startswith("val_acc_")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32, help="Per process.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    try:
        dataset = make_dataset(tmp / "data", args.images)
        load = [round(os.getloadavg()[0], 2)]
        runs = []
        # one process with torch's default threads (all cores) and with one thread, then DDP
        for k, (devices, threads) in enumerate(((1, None), (1, 1), (2, None))):
            runs.append(train_once(dataset, tmp / f"run{k}", devices, threads, args))
            load.append(round(os.getloadavg()[0], 2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    one, _, two = runs
    result = {
        "images": args.images,
        "epochs": args.epochs,
        "batch_per_process": args.batch_size,
        "cores": os.cpu_count(),
        "runs": runs,
        "speedup_images_per_s": round(two["images_per_s"] / one["images_per_s"], 3),
        "val_acc_leaf_gap": round(two["val_acc_leaf"] - one["val_acc_leaf"], 4),
        "load_avg_1m": load,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.images} synthetic images, {args.epochs} epochs, batch {args.batch_size}/process")
    for r in runs:
        print(
            f"  {r['processes']} process(es), threads {r['threads']}: {r['steps']} steps of {1000 * r['step_s']:.1f} ms, "
            f"{r['images_per_s']} images/s, data wait {100 * r['data_fraction']:.0f} %, "
            f"fit {r['fit_seconds']} s (wall {r['wall_seconds']} s), "
            f"val_acc_leaf {100 * r['val_acc_leaf']:.1f} %"
        )
    print(f"  2 vs 1 (default threads): x{result['speedup_images_per_s']} images/s, val accuracy gap "
          f"{100 * result['val_acc_leaf_gap']:+.1f} points; load {load}")  # fmt: skip


if __name__ == "__main__":
    main()

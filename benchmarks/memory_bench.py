"""Training memory benchmark: the process tree's own memory while `train` runs at 224x224.

Own memory is anonymous plus shared-memory PSS (`Pss_Anon + Pss_Shmem` in
`/proc/PID/smaps_rollup`), summed over `train` and every process below it (decode workers,
loader workers), sampled every `--interval` seconds. The page cache and file-backed mappings
(the memory-mapped decoded cache) are the kernel's and not counted; RSS is reported beside it.

Steps:
1. import the Kaggle product zip and split it by item 70/15/15 (seed 0), once (`_products`);
2. optionally a random subset of `--images` rows (hard-linked copy) for a short run;
3. `fashion-tagger train DIR --backbone simple-cnn --weights none --image-size 224x224 --epochs 1
   --train-fraction 0.03 --batch-size 32 --json` in a subprocess, with a fresh run dir, so the
   split is decoded into a new cache during the measured run;
4. peak own memory, peak RSS, wall time and the training images/s from `train --json`.

Example:
    nice -n 10 .venv/bin/python benchmarks/memory_bench.py --out bench-out/memory
    .venv/bin/python benchmarks/memory_bench.py --images 6000 --json   # a short run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import _products

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
MiB = 1024 * 1024


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DATASETS / "fashion-product-images-small.zip")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "memory")
    p.add_argument("--images", type=int, default=0, help="random subset of N rows (0 = all)")
    p.add_argument("--image-size", default="224x224")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-fraction", type=float, default=0.03)
    p.add_argument("--workers", type=int, default=2, help="import and decode workers")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p.parse_args()


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc/*/stat (ppid is the 4th field after the name)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rollup(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/smaps_rollup (empty when the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return out


def tree_memory(root: int) -> tuple[int, int, int]:
    """(own bytes = Pss_Anon + Pss_Shmem, RSS bytes, processes) of `root` and its descendants."""
    tree, todo, own, rss, n = _children(), [root], 0, 0, 0
    while todo:
        pid = todo.pop()
        todo += tree.get(pid, [])
        r = _rollup(pid)
        if r:
            own += (r.get("Pss_Anon", 0) + r.get("Pss_Shmem", 0)) * 1024
            rss += r.get("Rss", 0) * 1024
            n += 1
    return own, rss, n


class Sampler(threading.Thread):
    """Samples a process tree's memory until stopped; keeps the peaks."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_own = self.peak_rss = self.peak_procs = self.samples = 0
        self.series: list[tuple[float, int, int, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.done.is_set():
            own, rss, n = tree_memory(self.pid)
            self.series.append((round(time.perf_counter() - t0, 2), own // MiB, rss // MiB, n))
            self.peak_own, self.peak_rss = max(self.peak_own, own), max(self.peak_rss, rss)
            self.peak_procs = max(self.peak_procs, n)
            self.samples += 1
            self.done.wait(self.interval)


def subset(src: Path, out: Path, n: int) -> Path:
    """A random `n` rows of the dataset at `src` (splits kept), hard-linked into `out` once."""
    if (out / "items.parquet").is_file():
        return out
    import numpy as np

    from fashion_tagger.dataset.core import Dataset

    ds = Dataset.open(src)
    rows = np.sort(np.random.default_rng(0).permutation(len(ds))[:n])
    part = ds.with_table(ds.table.take(rows))
    part.copy_to(out).save()
    return out


def measure(dataset: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    """Run `train` once under the sampler; its own numbers and the tree's peaks."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "fashion_tagger", "train", str(dataset), "--out", str(run_dir),
        "--backbone", "simple-cnn", "--weights", "none", "--image-size", args.image_size,
        "--epochs", "1", "--train-fraction", str(args.train_fraction),
        "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--no-progress", "--json",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid, args.interval)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"train failed ({proc.returncode}): {' '.join(cmd)}")
    with open(run_dir.parent / "memory.csv", "w") as f:  # when the peak came: which phase
        f.write("seconds,own_mib,rss_mib,processes\n")
        f.writelines(",".join(map(str, row)) + "\n" for row in sampler.series)
    result = json.loads(stdout)
    throughput = result.get("throughput", {})
    return {
        "command": " ".join(cmd[2:]),
        "peak_own_mib": round(sampler.peak_own / MiB),
        "peak_rss_mib": round(sampler.peak_rss / MiB),
        "peak_processes": sampler.peak_procs,
        "samples": sampler.samples,
        "wall_s": round(wall, 1),
        "images_per_s": throughput.get("images_per_s"),
        "images_per_cpu_s": throughput.get("images_per_cpu_s"),
        "train_images": throughput.get("images"),
    }


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    products = _products.prepare_products(
        args.data, args.out / "products", workers=args.workers, val=0.15, test=0.15
    )
    dataset = (
        subset(products, args.out / f"products-{args.images}", args.images)
        if args.images
        else products
    )
    from fashion_tagger.dataset.core import Dataset

    splits = Dataset.open(dataset).split_counts()
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    out = {
        "dataset": str(dataset),
        "splits": splits,
        "git_rev": rev,
        **measure(dataset, args.out / "run", args),
    }
    out["load_average"] = [round(x, 1) for x in os.getloadavg()]
    out["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for k, v in out.items():
        print(f"{k:>18}: {v}")


if __name__ == "__main__":
    main()

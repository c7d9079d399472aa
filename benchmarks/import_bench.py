"""Import throughput and memory: the Kaggle products zip and clothing-dataset-small.

Each import runs in a fresh subprocess into a temp dir; we report images/s and memory:
the peak of the summed RSS of that process and all its worker children, sampled from /proc every
20 ms (Linux), and `getrusage` peaks of the main process and of its largest worker. CPU seconds
(user + system, all processes) show the cost independent of how busy a shared machine is:
images per CPU-second x cores is the rate an otherwise idle machine would reach.

    python benchmarks/import_bench.py                 # both datasets
    python benchmarks/import_bench.py --only kaggle-products --workers 2 --repeat 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
JOBS = {
    "kaggle-products": DATASETS / "fashion-product-images-small.zip",
    "folders": DATASETS / "clothing-dataset-small",
}

CHILD = """
import json, resource, sys, time
from fashion_tagger.sources import get_importer
kind, src, out, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) or None
t = time.perf_counter()
result = get_importer(kind)(src, out, workers=workers, progress=False)
seconds = time.perf_counter() - t
me = resource.getrusage(resource.RUSAGE_SELF)
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
print(json.dumps({"images": len(result.dataset), "skipped": result.report["skipped"],
                  "seconds": seconds, "cpu_seconds": cpu,
                  "rss_main_kib": me.ru_maxrss, "rss_worker_kib": kids.ru_maxrss}))
"""


def _tree_rss_kib(pid: int) -> int:
    """Summed VmRSS of `pid` and its descendants, from /proc (0 where unreadable)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(
                next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:"))
            )
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def run_one(kind: str, src: Path, workers: int) -> dict:
    """One import in a fresh interpreter; returns its measurements."""
    with tempfile.TemporaryDirectory(prefix="import-bench-") as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, kind, str(src), str(Path(tmp) / "ds"), str(workers)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss_kib(proc.pid))
            time.sleep(0.02)
        stdout, stderr = proc.communicate()
    if proc.returncode:
        sys.exit(f"{kind} import failed:\n{stderr}")
    return json.loads(stdout.strip().splitlines()[-1]) | {"rss_tree_kib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(JOBS), help="Run one dataset only.")
    parser.add_argument("--workers", type=int, default=0, help="Decoding processes (0: all cores).")
    parser.add_argument("--repeat", type=int, default=1, help="Runs per dataset (best is shown).")
    parser.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    args = parser.parse_args()

    results = []
    for kind, src in JOBS.items():
        if args.only and kind != args.only:
            continue
        if not src.exists():
            sys.exit(f"{src} not found: the benchmark needs ../shared/datasets")
        runs = [run_one(kind, src, args.workers) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["seconds"])
        results.append(
            {
                "dataset": src.name,
                "importer": kind,
                "images": best["images"],
                "skipped": best["skipped"],
                "seconds": round(best["seconds"], 2),
                "images_per_s": round(best["images"] / best["seconds"]),
                "all_runs_s": [round(r["seconds"], 2) for r in runs],
                "cpu_seconds": round(best["cpu_seconds"], 1),
                "images_per_cpu_s": round(best["images"] / best["cpu_seconds"]),
                "peak_rss_main_mib": round(best["rss_main_kib"] / 1024),
                "peak_rss_worker_mib": round(best["rss_worker_kib"] / 1024),
                "peak_rss_total_mib": round(best["rss_tree_kib"] / 1024),
            }
        )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        "| dataset | images | skipped | wall s | images/s | CPU s (all processes) | images per CPU-s "
        "| peak RSS, all processes (MiB) | main / largest worker (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['dataset']} | {r['images']:,} | {r['skipped']} | {r['seconds']} | "
            f"{r['images_per_s']:,} | {r['cpu_seconds']} | {r['images_per_cpu_s']:,} | "
            f"{r['peak_rss_total_mib']} | "
            f"{r['peak_rss_main_mib']} / {r['peak_rss_worker_mib']} |"
        )


if __name__ == "__main__":
    main()

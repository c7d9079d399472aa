"""Batch tagging on Ray Data versus the local `predict`: images/s on the same images, model and
backend, and what the measured per-core rate projects for N nodes.

The images are the first `--images` JPEGs (by name) of the Kaggle product photos zip, unpacked
once to a temp folder. The model is `--run RUN_DIR`, or a stand-in with the shape of the
products quickstart model (simple-cnn at 80x64, unified head, hidden 512; random weights: speed
does not depend on them), exported to ONNX as `fashion-tagger export` does. Both engines read
the same folder and write Parquet; the rows are checked equal (paths, and scores within 1e-5)
before any figure is printed.

Each engine runs `--repeat` times, alternating, and keeps its best time, so a neighbour's burst
on a shared machine hurts less. The Ray time covers the whole job on a running cluster (listing,
actors starting, decode tasks, model, Parquet writes); starting the local cluster is timed
apart, as a cluster is started once for many jobs.

    python benchmarks/ray_bench.py                          # 5,000 images, 2 repeats
    python benchmarks/ray_bench.py --run runs/products --images 2000 --concurrency 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "fashion-product-images-small.zip"


def unpack_images(zip_path: Path, n: int, folder: Path) -> Path:
    """The first `n` JPEGs of the zip (sorted by name) as files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(m for m in z.namelist() if m.lower().endswith(".jpg"))[:n]
        for name in names:
            (folder / Path(name).name).write_bytes(z.read(name))
    return folder


def stand_in_run(run_dir: Path, images: Path) -> Path:
    """A run dir shaped like the products quickstart model, exported to ONNX."""
    from fashion_tagger.inference.onnx import export_onnx
    from fashion_tagger.model import ModelSpec, build_model, save_model
    from fashion_tagger.taxonomy import Taxonomy

    tax = Taxonomy.from_paths(
        [
            ("Apparel", "Topwear", "Tshirts"),
            ("Apparel", "Topwear", "Shirts"),
            ("Apparel", "Bottomwear", "Jeans"),
            ("Footwear", "Shoes", "Casual Shoes"),
            ("Footwear", "Sandal", "Sandals"),
            ("Accessories", "Bags", "Handbags"),
            ("Accessories", "Watches", "Watches"),
        ],
        ["masterCategory", "subCategory", "articleType"],
    )
    spec = ModelSpec(
        model_id="",
        backbone={"name": "simple-cnn", "pretrained": False, "in_chans": 3},
        head={"kind": "unified", "hidden": 512, "dropout": 0.0},
        input_size=(80, 64),
        channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        resize="squash",
        taxonomy=tax,
        attribute_names=["season=Summer", "season=Winter", "usage=Casual", "usage=Formal"],
    )
    save_model(run_dir, build_model(spec).eval(), spec, {})
    export_onnx(run_dir, images=images, max_images=16)
    return run_dir


def time_local(run: Path, folder: Path, out: Path, batch_size: int, backend: str) -> float:
    from fashion_tagger.inference.predict import predict_paths

    out.unlink(missing_ok=True)
    t = time.perf_counter()
    predict_paths(run, [folder], out, batch_size=batch_size, backend=backend, progress=False)
    return time.perf_counter() - t


def time_ray(run: Path, folder: Path, out: Path, args: argparse.Namespace) -> tuple[float, dict]:
    from fashion_tagger.inference.ray_predict import predict_ray

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    summary = predict_ray(
        run,
        folder,
        out,
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        backend=args.backend,
        partition_size=args.partition_size,
        cpus_per_actor=args.cpus_per_actor,
        decode_cpus=args.decode_cpus,
    )
    return time.perf_counter() - t, summary


def compare(local: Path, ray_out: Path) -> float:
    """Max score difference between the two outputs; raises if paths or labels differ."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    a = pq.read_table(local).to_pylist()
    b = pa.concat_tables(
        [pq.read_table(p) for p in sorted(ray_out.glob("part-*.parquet"))]
    ).to_pylist()
    if [r["image"] for r in a] != [r["image"] for r in b]:
        raise SystemExit("the engines' rows differ in images or order")
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if [p["label"] for p in x["path"]] != [p["label"] for p in y["path"]]:
            raise SystemExit(f"{x['image']}: labels differ")
        for p, q in zip(x["path"], y["path"], strict=True):
            worst = max(worst, abs(p["score"] - q["score"]))
    if worst > 1e-5:
        raise SystemExit(f"scores differ by {worst}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="A run dir (default: a stand-in model).")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Product images zip.")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--backend", default="auto", help="auto, onnx or torch (both engines).")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=1, help="Ray model actors.")
    # on 2 cores the ONNX model is light next to JPEG decoding: half a CPU for the actor and
    # half-CPU decode tasks keep both cores busy (1 and 1 leave the actor's core half idle)
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--decode-cpus", type=float, default=0.5, help="CPUs per decode task.")
    parser.add_argument("--partition-size", type=int, default=1000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="Ray cluster CPUs.")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        folder = unpack_images(args.data, args.images, tmp / "images")
        run = args.run or stand_in_run(tmp / "run", folder)
        time_local(run, folder, tmp / "warm.parquet", args.batch_size, args.backend)  # warm up
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="error")
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_start = time.perf_counter() - t
        local_s, ray_s, startup, summary = [], [], [], {}
        loads = [os.getloadavg()[0]]
        for _ in range(args.repeat):
            local_s.append(
                time_local(run, folder, tmp / "local.parquet", args.batch_size, args.backend)
            )
            seconds, summary = time_ray(run, folder, tmp / "ray", args)
            ray_s.append(seconds)
            startup.append(summary["first_rows_s"])
            loads.append(os.getloadavg()[0])
        worst = compare(tmp / "local.parquet", tmp / "ray")
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.images
    local_ips, ray_ips = n / min(local_s), n / min(ray_s)
    per_core = ray_ips / args.cpus
    result = {
        "images": n,
        "backend": summary.get("backend"),
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "cpus_per_actor": args.cpus_per_actor,
        "decode_cpus": args.decode_cpus,
        "cpus": args.cpus,
        "local_images_per_s": round(local_ips, 1),
        "ray_images_per_s": round(ray_ips, 1),
        "ray_vs_local": round(ray_ips / local_ips, 3),
        "local_seconds": [round(s, 2) for s in local_s],
        "ray_seconds": [round(s, 2) for s in ray_s],
        "ray_cluster_start_s": round(ray_start, 1),
        # a job's fixed cost (workers and actors starting, until the first rows come back)
        # and the rate once it runs: what a job of many more images approaches
        "ray_job_startup_s": startup,
        "ray_steady_images_per_s": round(
            max(n / (s - f) for s, f in zip(ray_s, startup, strict=True)), 1
        ),
        "max_score_diff": worst,
        "ray_per_core_images_per_s": round(per_core, 1),
        "projection_images_per_s": {
            f"{nodes} nodes x {cores} cores": round(nodes * cores * per_core)
            for nodes, cores in ((1, 16), (4, 16), (16, 16), (64, 16))
        },
        "load_avg_1m": [round(v, 2) for v in loads],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{n} images, backend {result['backend']}, batch {args.batch_size}, {args.cpus} CPUs, "
        f"{args.concurrency} actor(s) of {args.cpus_per_actor} CPU, decode tasks of "
        f"{args.decode_cpus} CPU"
    )
    print(f"  local predict: {local_ips:8.1f} images/s  (runs {result['local_seconds']} s)")
    print(f"  ray predict:   {ray_ips:8.1f} images/s  (runs {result['ray_seconds']} s)")
    print(f"  ray / local:   {100 * ray_ips / local_ips:6.1f} %   (goal >= 80 %)")
    print(
        f"  ray job start-up {startup} s; after it {result['ray_steady_images_per_s']} images/s "
        f"({100 * result['ray_steady_images_per_s'] / local_ips:.1f} % of local)"
    )
    print(f"  ray cluster start: {ray_start:.1f} s; max score difference {worst:.2e}")
    print(f"  per core: {per_core:.1f} images/s; projection (linear in cores):")
    for key, value in result["projection_images_per_s"].items():
        print(f"    {key}: {value:,} images/s = {value * 3600 / 1e6:.1f} M images/hour")
    print(f"  1-minute load average during the runs: {result['load_avg_1m']}")


if __name__ == "__main__":
    main()

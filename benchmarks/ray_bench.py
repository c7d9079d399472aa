"""Batch tagging on Ray Data versus the local `predict`: images/s on the same images, model and
backend, and what the measured per-core rate projects for N nodes.

The images are the first `--images` JPEGs (by name) of the Kaggle product photos zip, unpacked
once to a temp folder. The model is `--run RUN_DIR` (exported to ONNX in a copy when it has no
model.onnx), or a stand-in of `--model`: `lite0`, what `make demo` trains on product photos
(heads on a frozen EfficientNet-Lite0 at 128x96), `simple-cnn`, the earlier 80x64 quickstart
shape, or `both`. A stand-in has the label space of the photos' styles.csv and random weights
(speed does not depend on them), exported to ONNX as `fashion-tagger export` does. Both engines
read the same folder and write Parquet; the rows are checked equal (paths, and scores within
1e-5) before any figure is printed.

Each engine runs `--repeat` times, alternating, and keeps its best time, so a neighbour's burst
on a shared machine hurts less. The Ray time covers the whole job on a running cluster (listing,
planning, actors starting and loading the model, decoding, model, Parquet writes); starting the
local cluster is timed apart, as a cluster is started once for many jobs.

    python benchmarks/ray_bench.py --model both             # 5,000 images, 2 repeats
    python benchmarks/ray_bench.py --run demo-out/run --images 2000 --json
"""

from __future__ import annotations

import argparse
import csv
import io
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


MODELS = ("lite0", "simple-cnn")
"""`lite0`: what `make demo`/quickstart trains on product photos (heads on a frozen pretrained
EfficientNet-Lite0 at 128x96); `simple-cnn`: the earlier quickstart shape (80x64), a light
model next to JPEG decoding, where a job's fixed start-up weighs most."""


def product_taxonomy(zip_path: Path):
    """(taxonomy, attribute names) of the product photos' styles.csv: the label space of a
    model trained on them, so the stand-in's heads are as wide as a real run's."""
    from fashion_tagger.taxonomy import Taxonomy

    levels = ["masterCategory", "subCategory", "articleType"]
    with zipfile.ZipFile(zip_path) as z:
        name = next(m for m in z.namelist() if m.endswith("styles.csv"))
        text = io.TextIOWrapper(z.open(name), encoding="utf-8", errors="replace")
        rows = list(csv.DictReader(text))
    paths = {tuple(r[k] for k in levels) for r in rows if all(r.get(k) for k in levels)}
    columns = {"colour": "baseColour", "gender": "gender", "season": "season", "usage": "usage"}
    attrs = {f"{key}={r[col]}" for r in rows for key, col in columns.items() if r.get(col)}
    return Taxonomy.from_paths(sorted(paths), levels), sorted(attrs)


def stand_in_run(model: str, run_dir: Path, images: Path, zip_path: Path) -> Path:
    """A run dir with the architecture, input size and label space of `model` as quickstart
    trains it, random weights (speed does not depend on them), exported to ONNX as
    `fashion-tagger export` does."""
    from fashion_tagger.inference.onnx import export_onnx
    from fashion_tagger.model import ModelSpec, build_model, save_model

    tax, attrs = product_taxonomy(zip_path)
    lite0 = model == "lite0"
    spec = ModelSpec(
        model_id="",
        backbone={
            "name": "tf_efficientnet_lite0" if lite0 else "simple-cnn",
            "pretrained": False,
            "in_chans": 3,
        },
        head={"kind": "unified", "hidden": 512, "dropout": 0.0},
        input_size=(128, 96) if lite0 else (80, 64),
        channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        resize="squash",
        taxonomy=tax,
        attribute_names=attrs,
    )
    save_model(run_dir, build_model(spec).eval(), spec, {})
    export_onnx(run_dir, images=images, max_images=16)
    return run_dir


def with_onnx(run: Path, work: Path, images: Path) -> Path:
    """`run` when it has model.onnx, else a copy of it exported to ONNX (the user's run dir is
    left as it is), so both engines run the backend a user would export for batch jobs."""
    if (run / "model.onnx").is_file():
        return run
    from fashion_tagger.inference.onnx import export_onnx

    copy = work / f"run-{run.name}"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "logs", "*.png"))
    export_onnx(copy, images=images, max_images=16)
    return copy


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
        decode=args.decode,
    )
    return time.perf_counter() - t, summary


def compare(local: Path, ray_out: Path) -> float:
    """Max score difference between the two outputs (path, top-k and attribute scores); raises
    if images, labels, top-k paths, attributes or errors differ."""
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
        for field, key in (("path", "label"), ("top_k", "path"), ("attributes", "name")):
            if [p[key] for p in x[field]] != [p[key] for p in y[field]]:
                raise SystemExit(f"{x['image']}: {field} differs")
            for p, q in zip(x[field], y[field], strict=True):
                worst = max(worst, abs(p["score"] - q["score"]))
        if (x["error"] is None) != (y["error"] is None):
            raise SystemExit(f"{x['image']}: read by one engine only")
    if worst > 1e-5:
        raise SystemExit(f"scores differ by {worst}")
    return worst


def bench_model(run: Path, folder: Path, tmp: Path, args: argparse.Namespace) -> dict:
    """Both engines on `run`, alternating, `--repeat` times each; the rows checked equal."""
    time_local(run, folder, tmp / "warm.parquet", args.batch_size, args.backend)  # warm up
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
    n = args.images
    local_ips, ray_ips = n / min(local_s), n / min(ray_s)
    per_core = ray_ips / args.cpus
    return {
        "run": str(run),
        "backend": summary.get("backend"),
        "local_images_per_s": round(local_ips, 1),
        "ray_images_per_s": round(ray_ips, 1),
        "ray_vs_local": round(ray_ips / local_ips, 3),
        "local_seconds": [round(s, 2) for s in local_s],
        "ray_seconds": [round(s, 2) for s in ray_s],
        # a job's fixed cost (planning, actors starting, until the first rows come back)
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


def report(name: str, r: dict) -> None:
    """The figures of one model as text."""
    local_ips, ray_ips = r["local_images_per_s"], r["ray_images_per_s"]
    print(f"{name}: {r['run']} (backend {r['backend']})")
    print(f"  local predict: {local_ips:8.1f} images/s  (runs {r['local_seconds']} s)")
    print(f"  ray predict:   {ray_ips:8.1f} images/s  (runs {r['ray_seconds']} s)")
    print(f"  ray / local:   {100 * r['ray_vs_local']:6.1f} %   (goal >= 80 %)")
    steady = r["ray_steady_images_per_s"]
    print(
        f"  ray job start-up {r['ray_job_startup_s']} s; after it {steady} images/s "
        f"({100 * steady / local_ips:.1f} % of local); max score difference "
        f"{r['max_score_diff']:.2e}"
    )
    print(f"  per core: {r['ray_per_core_images_per_s']} images/s; projection (linear in cores):")
    for key, value in r["projection_images_per_s"].items():
        print(f"    {key}: {value:,} images/s = {value * 3600 / 1e6:.1f} M images/hour")
    print(f"  1-minute load average during the runs: {r['load_avg_1m']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="A run dir (default: a stand-in of --model).")
    parser.add_argument(
        "--model", choices=(*MODELS, "both"), default="lite0", help="Stand-in model shape(s)."
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Product images zip.")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--backend", default="auto", help="auto, onnx or torch (both engines).")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="Ray cluster CPUs.")
    # on CPUs the actors decode in threads beside their model (`--decode actor`): one actor of
    # one CPU per core keeps every core busy without moving pixels between processes
    parser.add_argument(
        "--concurrency",
        type=int,
        help="Ray model actors (default: --cpus / --cpus-per-actor; fewer with --decode tasks).",
    )
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--decode", default="auto", help="auto, actor or tasks.")
    parser.add_argument("--decode-cpus", type=float, default=0.5, help="CPUs per decode task.")
    parser.add_argument("--partition-size", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.concurrency = args.concurrency or max(1, int(args.cpus // args.cpus_per_actor))

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    results: dict = {}
    try:
        folder = unpack_images(args.data, args.images, tmp / "images")
        if args.run:
            runs = {args.run.name: with_onnx(args.run, tmp, folder)}
        else:
            models = MODELS if args.model == "both" else (args.model,)
            runs = {m: stand_in_run(m, tmp / m, folder, args.data) for m in models}
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="error")
        ray.data.DataContext.get_current().enable_progress_bars = False
        cluster_start = time.perf_counter() - t
        for name, run in runs.items():
            results[name] = bench_model(run, folder, tmp, args)
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    settings = {
        "images": args.images,
        "batch_size": args.batch_size,
        "cpus": args.cpus,
        "concurrency": args.concurrency,
        "cpus_per_actor": args.cpus_per_actor,
        "decode": args.decode,
        "decode_cpus": args.decode_cpus,
        "ray_cluster_start_s": round(cluster_start, 1),
    }
    if args.json:
        print(json.dumps({**settings, "models": results}, indent=2))
        return
    print(
        f"{args.images} images, batch {args.batch_size}, {args.cpus} CPUs, {args.concurrency} "
        f"actor(s) of {args.cpus_per_actor} CPU, decode {args.decode}; ray cluster start "
        f"{cluster_start:.1f} s (outside the figures)"
    )
    for name, r in results.items():
        report(name, r)


if __name__ == "__main__":
    main()

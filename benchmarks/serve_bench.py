"""Service throughput and latency: `fashion-tagger serve` on 127.0.0.1 under concurrent clients.

Starts the real service in a subprocess (same flags as a user would give), sends `--requests`
requests (each `--images` JPEG photos as multipart files) at each concurrency, and reports p50 /
p99 latency, images/s and errors, next to the offline batch throughput of the same model on the
same photos (`Tagger.predict`, decoding included, batch 32): micro-batching should bring the
service close to it. Without `--run`, a run dir with a timm backbone (random weights, a small
taxonomy) is written and exported to ONNX in a temp dir. Photos come from
../shared/datasets/clothing-dataset-small when present, else are generated. The client runs on
the same machine and takes some of its CPU.

    python benchmarks/serve_bench.py                                  # mobilenetv3_large_100, 224 px
    python benchmarks/serve_bench.py --run runs/products --concurrency 1 8 32 --requests 300
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "datasets" / "clothing-dataset-small" / "validation"


def photos(n: int) -> list[bytes]:
    """`n` JPEG photos: real marketplace-like ones when the shared dataset is here."""
    every = sorted(PHOTOS.rglob("*.jpg")) if PHOTOS.is_dir() else []
    files = every[:: max(1, len(every) // n)][:n]
    if files:
        return [f.read_bytes() for f in files]
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (533, 400, 3), dtype=np.uint8)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def make_run(tmp: Path, backbone: str, size: int) -> Path:
    """A run dir with random weights through the project's own code, exported to ONNX."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from inference_bench import small_spec

    from fashion_tagger.inference.onnx import export_onnx
    from fashion_tagger.rundir import save_model
    from fashion_tagger.training.model import build_model

    spec = small_spec(backbone, size)
    torch.manual_seed(0)
    run = save_model(tmp / "run", build_model(spec).eval(), spec).path
    export_onnx(run)
    return run


def offline(run: Path, backend: str, data: list[bytes], min_seconds: float) -> tuple[float, str]:
    from fashion_tagger.inference.tagger import Tagger

    tagger = Tagger.load(run, backend)
    tagger.predict(data[:32], batch_size=32)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        n += len(tagger.predict(data, batch_size=32))
    return n / (time.perf_counter() - start), tagger.backend_name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(
    base: str, data: list[bytes], requests: int, concurrency: int, per_request: int
) -> dict:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def one(i: int) -> None:
            nonlocal errors
            files = [
                ("files", (f"{i}-{k}.jpg", data[(i * per_request + k) % len(data)], "image/jpeg"))
                for k in range(per_request)
            ]
            async with sem:
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/predict", files=files)
                    ok = r.status_code == 200 and len(r.json()["predictions"]) == per_request
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t)
                errors += not ok

        await asyncio.gather(*(one(i) for i in range(min(concurrency, requests))))  # warm-up
        latencies.clear()
        errors = 0
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - start
        healthy = (await client.get("/healthz")).status_code == 200
    lat = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": requests,
        "images_per_s": round(requests * per_request / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "errors": errors,
        "healthy_after": healthy,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--run", type=Path, help="Run dir to serve (default: a random-weight timm model)."
    )
    p.add_argument(
        "--backbone", default="mobilenetv3_large_100", help="timm backbone without --run."
    )
    p.add_argument("--size", type=int, default=224, help="Input size without --run (px).")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=200, help="Requests per concurrency level.")
    p.add_argument("--images", type=int, default=1, help="Images per request.")
    p.add_argument("--photos", type=int, default=64, help="Distinct photos to cycle through.")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument(
        "--offline-seconds", type=float, default=5.0, help="Duration of the offline figure."
    )
    p.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = p.parse_args()

    data = photos(args.photos)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp), args.backbone, args.size)
        offline_ips, backend = offline(run, args.backend, data, args.offline_seconds)
        print(f"offline batch 32 ({backend}): {offline_ips:.1f} img/s", file=sys.stderr)
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "fashion_tagger",
            "serve",
            str(run),
            "--port",
            str(port),
            "--max-batch",
            str(args.max_batch),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--max-images",
            str(max(16, args.images)),
            "--backend",
            args.backend,
        ]
        server = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            import httpx

            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"the service did not start: {' '.join(cmd)}")
                time.sleep(0.3)
            rows = []
            for c in args.concurrency:
                row = asyncio.run(load(base, data, args.requests, c, args.images))
                row["vs_offline"] = round(row["images_per_s"] / offline_ips, 2)
                print(json.dumps(row), file=sys.stderr)
                rows.append(row)
        finally:
            server.terminate()
            server.wait(15)
    result = {
        "model": str(args.run) if args.run else f"{args.backbone} {args.size}px (random weights)",
        "backend": backend,
        "offline_img_s": round(offline_ips, 1),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"model: {result['model']}, backend {backend}, offline batch-32 throughput {offline_ips:.1f} img/s\n"
    )
    print("| concurrency | requests | p50 (ms) | p99 (ms) | images/s | vs offline | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['images_per_s']} | {r['vs_offline'] * 100:.0f} % | {r['errors']} |"
        )


if __name__ == "__main__":
    main()

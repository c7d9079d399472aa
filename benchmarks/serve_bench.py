"""Service throughput and latency: `fashion-tagger serve` on 127.0.0.1 under concurrent clients.

Starts the real service in a subprocess (same flags as a user would give), sends `--requests`
requests (each `--images` JPEG photos as multipart files) at each concurrency, and reports p50 /
p99 latency, images/s, errors and the CPU time the service and the client spent per image, next
to the offline batch throughput of the same model on the same photos (`Tagger.predict`, decoding
included, batch 32): the best of three timings at the start, and the mean of two timings taken
right before and right after each level (the machine's speed drifts). Micro-batching should
bring the service close to it.
Without `--run`, a run dir with a timm backbone (random weights, a small taxonomy) is written and
exported to ONNX in a temp dir. Photos come from
../shared/datasets/clothing-dataset-small when present, else are generated. The client runs on
the same machine, so it is a lean raw-HTTP/1.1 client (see `Connection`) that takes little of
the CPU the service is measured on.

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
    from fashion_tagger.model.load import build_model
    from fashion_tagger.model.rundir import save_model

    spec = small_spec(backbone, size)
    torch.manual_seed(0)
    run = save_model(tmp / "run", build_model(spec).eval(), spec).path
    export_onnx(run)
    return run


def offline_once(tagger, data: list[bytes], min_seconds: float) -> float:
    """One timing of `Tagger.predict` at batch 32 (decoding included), img/s."""
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < min_seconds:
        n += len(tagger.predict(data, batch_size=32))
    ips = n / (time.perf_counter() - start)
    cpu_ms = (time.process_time() - cpu) * 1000 / n
    print(f"offline: {ips:.1f} img/s, {cpu_ms:.2f} ms CPU per image", file=sys.stderr)
    return ips


def offline(run: Path, backend: str, data: list[bytes], min_seconds: float, repeat: int = 3):
    """(best of `repeat` offline timings, backend name, the loaded tagger).

    The best, not the mean: the baseline the service is held to should be what the model can
    do on this machine, not a figure dragged down by a noisy moment.
    """
    from fashion_tagger.inference.tagger import Tagger

    tagger = Tagger.load(run, backend)
    tagger.predict(data[:32], batch_size=32)  # warm-up
    best = max(offline_once(tagger, data, min_seconds) for _ in range(repeat))
    return best, tagger.backend_name, tagger


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(parts: list[tuple[str, bytes]], boundary: str) -> bytes:
    """A multipart/form-data body with each (filename, JPEG) as a `files` field."""
    out = bytearray()
    for name, data in parts:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


class Connection:
    """One keep-alive HTTP/1.1 connection sending ready-made requests.

    The load generator shares the service's cores, so it is kept lean: request bytes are built
    once, and a response is only split into status, headers and body (then JSON-checked). A
    general client (httpx) spent about 6 ms of CPU per request here, a quarter of what the
    service spends per image, and that CPU was taken from the service being measured.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        if "content-length" not in headers:  # the service always sends one
            raise ConnectionError(f"no content-length in the response: {lines[0]}")
        body = await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("connection") == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


def build_requests(
    host: str, port: int, data: list[bytes], count: int, per_request: int
) -> list[bytes]:
    """`count` raw POST /v1/predict requests, each `per_request` photos, cycling through `data`."""
    boundary = "fashion-tagger-bench-boundary"
    out = []
    for i in range(count):
        parts = [
            (f"{i}-{k}.jpg", data[(i * per_request + k) % len(data)]) for k in range(per_request)
        ]
        body = multipart(parts, boundary)
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


async def load(
    host: str, port: int, data: list[bytes], requests: int, concurrency: int, per_request: int
) -> dict:
    raws = build_requests(host, port, data, requests, per_request)
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    latencies: list[float] = []
    errors = 0

    async def client(conn: Connection) -> None:
        nonlocal errors
        while not queue.empty():
            raw = queue.get_nowait()
            t = time.perf_counter()
            try:
                status, body = await conn.request(raw)
                ok = status == 200 and len(json.loads(body)["predictions"]) == per_request
            except (OSError, asyncio.IncompleteReadError, ValueError, KeyError):
                ok = False
                await conn.close()
            latencies.append(time.perf_counter() - t)
            errors += not ok

    conns = [Connection(host, port) for _ in range(concurrency)]
    for raw in raws[: min(concurrency, requests)]:  # warm-up: open every connection
        queue.put_nowait(raw)
    await asyncio.gather(*(client(c) for c in conns))
    latencies.clear()
    errors = 0
    for raw in raws:
        queue.put_nowait(raw)
    start = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    wall = time.perf_counter() - start
    health = Connection(host, port)
    status, _ = await health.request(
        f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    )
    await health.close()
    for c in conns:
        await c.close()
    lat = np.asarray(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": requests,
        "images_per_s": round(requests * per_request / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "errors": errors,
        "healthy_after": status == 200,
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
    p.add_argument("--decode-threads", type=int, help="The service's --decode-threads.")
    p.add_argument(
        "--offline-seconds", type=float, default=5.0, help="Duration of the offline figure."
    )
    p.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = p.parse_args()

    data = photos(args.photos)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp), args.backbone, args.size)
        offline_ips, backend, tagger = offline(run, args.backend, data, args.offline_seconds)
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
        if args.decode_threads:
            cmd += ["--decode-threads", str(args.decode_threads)]
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
                # the offline loop right before and right after each level too: this VM's
                # speed drifts by +-15 % within minutes, and a baseline timed minutes away
                # compares the service with another machine
                before = offline_once(tagger, data, args.offline_seconds)
                server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
                row = asyncio.run(load("127.0.0.1", port, data, args.requests, c, args.images))
                # CPU per image, to see where the machine's time goes (both share the cores).
                images = args.requests * args.images
                row["server_cpu_ms_per_image"] = round(
                    (cpu_seconds(server.pid) - server_cpu) * 1000 / images, 2
                )
                row["client_cpu_ms_per_image"] = round(
                    (time.process_time() - client_cpu) * 1000 / images, 2
                )
                row["vs_offline"] = round(row["images_per_s"] / offline_ips, 2)
                around = (before, offline_once(tagger, data, args.offline_seconds))
                row["offline_around"] = [round(v, 1) for v in around]
                row["vs_offline_around"] = round(row["images_per_s"] / (sum(around) / 2), 2)
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
    print(
        "| concurrency | requests | p50 (ms) | p99 (ms) | images/s | vs best offline "
        "| vs offline around it | errors | service CPU ms/img | client CPU ms/img |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['images_per_s']} | {r['vs_offline'] * 100:.0f} % | "
            f"{r['vs_offline_around'] * 100:.0f} % | {r['errors']} | "
            f"{r['server_cpu_ms_per_image']} | {r['client_cpu_ms_per_image']} |"
        )


if __name__ == "__main__":
    main()

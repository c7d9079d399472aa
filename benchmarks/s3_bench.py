"""Dataset dirs on object storage versus a local disk: import, and one pass of image reading.

A slice of clothing-dataset-small (real photos, ~30 KB each) is imported twice, into a local dir
and into `s3://` on a local S3-compatible server (moto's server mode, its own process on
127.0.0.1). Then one pass reads every image's bytes, as a training epoch's decode step does:
from the local dataset dir, from S3 through a cold mirror (the concurrent fetch), and from the
warm mirror. Each number is images/s; the ratios are S3 / local.

moto is a single Python process, so it stands for the protocol and the request count, not for
a real S3 endpoint's throughput (which is higher and scales with concurrency).

    python benchmarks/s3_bench.py               # 1000 images, 16 requests in flight
    python benchmarks/s3_bench.py --images 3000 --fetch-workers 32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT.parent / "shared" / "datasets" / "clothing-dataset-small"


def _slice(dest: Path, n: int) -> Path:
    """The first `n` photos of the source tree (sorted, class folders kept), copied to `dest`."""
    files = sorted(p for p in SOURCE.rglob("*") if p.is_file())[:n]
    for p in files:
        target = dest / p.relative_to(SOURCE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, target)
    return dest


def _moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def _read_all(root: Path, rels: list[str], size: int = 0) -> int:
    """Read every image (and decode it at `size`, as training's cache build does, when > 0)."""
    from fashion_tagger.dataset.images import decode

    total = 0
    for rel in rels:
        data = (root / rel).read_bytes()
        total += len(data)
        if size:
            decode(data, size=size)
    return total


def _timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1, help="Import decoding processes.")
    ap.add_argument("--fetch-workers", type=int, default=16, help="Requests in flight.")
    ap.add_argument("--size", type=int, default=224, help="Decode size of the epoch pass.")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="s3bench-"))
    proc, endpoint = _moto()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint, FASHION_TAGGER_CACHE=str(tmp / "cache-importer"),
    )  # fmt: skip
    try:
        import fsspec

        from fashion_tagger.dataset.core import Dataset
        from fashion_tagger.sources.folders import import_folders

        fsspec.filesystem("s3").mkdir("bench")
        src = _slice(tmp / "src", args.images)
        kw = dict(workers=args.workers, progress=False)
        t_local, res = _timed(lambda: import_folders(src, tmp / "local", **kw))
        n = len(res.dataset)
        t_s3, _ = _timed(lambda: import_folders(src, "s3://bench/ds", **kw))

        local = Dataset.open(tmp / "local")
        rels = sorted(set(local.table.column("image").to_pylist()))
        t_read_local, nbytes = _timed(lambda: _read_all(local.root, rels))
        t_epoch_local, _ = _timed(lambda: _read_all(local.root, rels, args.size))
        os.environ["FASHION_TAGGER_CACHE"] = str(tmp / "cache-trainer")  # another machine
        remote = Dataset.open("s3://bench/ds")
        t_fetch, root = _timed(lambda: remote.local_images(workers=args.fetch_workers))
        t_cold = t_fetch + _timed(lambda: _read_all(root, rels))[0]
        t_warm, _ = _timed(lambda: _read_all(remote.local_images(), rels))
        t_epoch_s3 = t_fetch + _timed(lambda: _read_all(root, rels, args.size))[0]
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    rate = {
        "import_local": n / t_local,
        "import_s3": n / t_s3,
        "read_local": len(rels) / t_read_local,
        "read_s3_cold": len(rels) / t_cold,
        "read_s3_warm": len(rels) / t_warm,
        "epoch_local": len(rels) / t_epoch_local,
        "epoch_s3_cold": len(rels) / t_epoch_s3,
    }
    result = {
        "images": n,
        "megabytes": round(nbytes / 1e6, 1),
        "fetch_workers": args.fetch_workers,
        "images_per_s": {k: round(v, 1) for k, v in rate.items()},
        "ratio_s3_to_local": {
            "import": round(rate["import_s3"] / rate["import_local"], 3),
            "read_cold": round(rate["read_s3_cold"] / rate["read_local"], 3),
            "read_warm": round(rate["read_s3_warm"] / rate["read_local"], 3),
            "epoch_cold": round(rate["epoch_s3_cold"] / rate["epoch_local"], 3),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

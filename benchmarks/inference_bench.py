"""Inference speed: PyTorch eager vs ONNX Runtime, images/s at batch 1 and 32, on CPU.

Each model is built through the project's own model code (`build_model`: backbone + unified
head, a small 2-level taxonomy with attributes) and exported with `export_module`, exactly as
`fashion-tagger export` does; parity is checked before timing. timm models get random weights
(speed does not depend on them). `--run RUN_DIR` adds a trained run. Both runtimes use the same
number of threads (all cores by default). Each figure is the best of `--repeat` timed loops of
at least `--min-seconds`, after a warm-up, so a busy machine hurts less. Each model's
multiply-accumulates per image are counted, and both runtimes' rates are shown as a share of what
the CPU sustains on a large float32 matrix product: a runtime near that roofline has little
left to gain.

    python benchmarks/inference_bench.py                           # resnet50 + mobilenetv3 at 224
    python benchmarks/inference_bench.py --run runs/products --models
    python benchmarks/inference_bench.py --models mobilenetv3_large_100 --batches 1 8 --json
    python benchmarks/inference_bench.py --run runs/products --int8     # + `export --quantize int8`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def small_spec(backbone: str, size: int):
    """A ModelSpec with a small fashion-like taxonomy (2 levels, 6 leaves, 4 attributes)."""
    from fashion_tagger.model import ModelSpec
    from fashion_tagger.taxonomy import Taxonomy

    tax = Taxonomy.from_paths(
        [
            ("Apparel", "Topwear"),
            ("Apparel", "Bottomwear"),
            ("Apparel", "Dress"),
            ("Footwear", "Shoes"),
            ("Footwear", "Sandal"),
            ("Accessories", "Bags"),
        ],
        ["masterCategory", "subCategory"],
    )
    return ModelSpec(
        model_id=f"bench-{backbone}",
        backbone={"name": backbone, "pretrained": False, "in_chans": 3},
        head={"kind": "unified", "hidden": 512, "dropout": 0.0},
        input_size=(size, size),
        channels=3,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        resize="squash",
        taxonomy=tax,
        attribute_names=["season=Summer", "season=Winter", "usage=Casual", "usage=Formal"],
    )


def timed(fn, x: np.ndarray, min_seconds: float, repeat: int) -> float:
    """Best images/s over `repeat` loops, each running `fn(x)` for at least `min_seconds`."""
    fn(x)  # warm-up (allocations, graph optimisation, oneDNN kernels)
    best = 0.0
    for _ in range(repeat):
        n, start = 0, time.perf_counter()
        while True:
            fn(x)
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, n * len(x) / elapsed)
    return best


def macs_per_image(module, spec) -> float:
    """Multiply-accumulates of one forward pass per image, counted on every Conv2d and Linear."""
    import torch
    from torch import nn

    total = 0

    def count(layer, inputs, out) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            total += out.numel() * layer.in_channels // layer.groups * kh * kw
        else:
            total += out.numel() * layer.in_features

    hooks = [
        m.register_forward_hook(count)
        for m in module.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.inference_mode():
            module.probabilities(torch.zeros(2, spec.channels, *spec.input_size))
    finally:
        for h in hooks:
            h.remove()
    return total / 2


def peak_gmacs(threads: int, n: int = 1024, seconds: float = 1.0) -> float:
    """What this CPU sustains on a large float32 matrix product (GMAC/s): the roofline."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(3):
        k, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            k += 1
        best = max(best, k * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def bench_model(name: str, module, spec, args, threads: int) -> list[dict]:
    import torch

    from fashion_tagger.inference.onnx import (
        OnnxBackend,
        check_parity,
        export_module,
        quantize_int8,
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = export_module(module, spec, Path(tmp) / "model.onnx")
        parity = check_parity(module, spec, path, random_inputs=4)
        backend = OnnxBackend(path, threads=threads)
        int8 = None
        if args.int8:
            # Speed only: ranges from random inputs (the export calibrates on real images).
            calib = np.random.default_rng(1).standard_normal((64, spec.channels, *spec.input_size))
            int8 = OnnxBackend(
                quantize_int8(path, Path(tmp) / "int8.onnx", calib.astype(np.float32)),
                threads=threads,
            )
        rows = []
        gmacs = macs_per_image(module, spec) / 1e9
        h, w = spec.input_size
        rng = np.random.default_rng(0)
        for batch in args.batches:
            x = rng.standard_normal((batch, spec.channels, h, w)).astype(np.float32)

            def eager(a: np.ndarray) -> None:
                with torch.inference_mode():
                    module.probabilities(torch.from_numpy(a))

            t = timed(eager, x, args.min_seconds, args.repeat)
            o = timed(backend, x, args.min_seconds, args.repeat)
            q = timed(int8, x, args.min_seconds, args.repeat) if int8 else None
            rows.append(
                {
                    "model": name,
                    "input": f"{h}x{w}",
                    "batch": batch,
                    "torch_eager_img_s": round(t, 1),
                    "onnxruntime_img_s": round(o, 1),
                    "speedup": round(o / t, 2),
                    "onnxruntime_int8_img_s": round(q, 1) if q else None,
                    "int8_speedup": round(q / t, 2) if q else None,
                    "gmac_per_image": round(gmacs, 3),
                    "torch_eager_gmac_s": round(t * gmacs, 1),
                    "onnxruntime_gmac_s": round(o * gmacs, 1),
                    "parity_max_abs_diff": parity.max_abs_diff,
                }
            )
            print(
                f"{name:28s} {h}x{w} threads {threads} batch {batch:3d}: eager {t:8.1f} img/s  "
                f"onnxruntime {o:8.1f} img/s  x{o / t:.2f}"
                + (f"  int8 {q:8.1f} img/s  x{q / t:.2f}" if q else ""),
                file=sys.stderr,
            )
        return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", type=Path, help="A trained run dir to include.")
    p.add_argument(
        "--models",
        nargs="*",
        default=["resnet50", "mobilenetv3_large_100"],
        help="timm backbones to build with random weights (none: only --run).",
    )
    p.add_argument("--size", type=int, default=224, help="Input size of the timm models (px).")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="Batch sizes.")
    p.add_argument("--min-seconds", type=float, default=2.0, help="Shortest timed loop.")
    p.add_argument("--repeat", type=int, default=3, help="Timed loops per figure (best kept).")
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[0],
        help="Threads for both runtimes, one figure per value (0: all cores). On a busy machine "
        "use 1: OpenMP threads that lose their core make eager PyTorch collapse.",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="Also time the int8 graph (`export --quantize int8`), calibrated on random inputs.",
    )
    p.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = p.parse_args()

    import torch

    from fashion_tagger.model.load import build_model, load_model

    models = []
    if args.run:
        module, spec = load_model(args.run)
        models.append((f"run:{args.run.name} ({spec.backbone['name']})", module, spec))
    for name in args.models:
        spec = small_spec(name, args.size)
        torch.manual_seed(0)
        models.append((name + " (random weights)", build_model(spec).eval(), spec))
    rows, peaks = [], {}
    for threads in [t or len(os.sched_getaffinity(0)) for t in args.threads]:
        peaks[threads] = round(peak_gmacs(threads), 1)
        print(f"threads {threads}: matmul peak {peaks[threads]} GMAC/s", file=sys.stderr)
        torch.set_num_threads(threads)
        for name, module, spec in models:
            rows += [
                {**r, "threads": threads} for r in bench_model(name, module, spec, args, threads)
            ]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "matmul_peak_gmac_s": peaks,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        "| model | input | threads | batch | PyTorch eager (img/s) | ONNX Runtime (img/s) "
        "| speed-up | eager / ORT, % of matmul peak | ORT int8 (img/s) | int8 speed-up |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        peak = peaks[r["threads"]]
        print(
            f"| {r['model']} | {r['input']} | {r['threads']} | {r['batch']} | {r['torch_eager_img_s']} | "
            f"{r['onnxruntime_img_s']} | x{r['speedup']} | "
            f"{100 * r['torch_eager_gmac_s'] / peak:.0f} / {100 * r['onnxruntime_gmac_s'] / peak:.0f} | "
            f"{r['onnxruntime_int8_img_s'] or '-'} | "
            + (f"x{r['int8_speedup']} |" if r["int8_speedup"] else "- |")
        )
    print("\nmatmul peak (GMAC/s): " + ", ".join(f"{t} threads {v}" for t, v in peaks.items()))


if __name__ == "__main__":
    main()

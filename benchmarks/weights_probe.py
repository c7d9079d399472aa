"""Do converted weights work, and how fast does their backbone train on this CPU?

Two probes of `fashion_tagger.model.weights`:

1. imagenet: the converted weights (default `lite0`) in timm's architecture WITH its ImageNet
   classifier, on real photos of clothing-dataset-small (validation split, the first --per-class
   of each class): how often the top-1 / top-5 ImageNet classes name the garment (jersey for
   t-shirts, running shoe / sandal / Loafer... for shoes) and the mean probability on those
   classes. A wrong mapping falls to chance (printed). Also shown, to choose the declared
   architecture and preprocessing: timm's non-TF `efficientnet_lite0` (symmetric padding) with
   the same tensors, and ImageNet's mean/std instead of 0.5.
2. speed: images/s of one training step of the featureless backbone plus a linear head
   (forward + backward + AdamW), batch --batch, at each --sizes (H x W), with and without
   `channels_last`, after --warmup steps, median of --steps. The configurations take turns, so
   load from other processes hits them alike; images per CPU-second (process time) is printed
   too, as it depends less on that load.

Example:
    python benchmarks/weights_probe.py imagenet --per-class 10
    python benchmarks/weights_probe.py speed --threads 2 --sizes 128x96 160x120
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

from fashion_tagger.model.weights import resolve_weights

DATA = Path(__file__).parents[1].parent / "shared" / "datasets" / "clothing-dataset-small"

# ImageNet descriptions (substrings) that count as naming each clothing-dataset-small class
EXPECTED = {
    "t-shirt": ("jersey", "sweatshirt"),
    "longsleeve": ("jersey", "sweatshirt", "cardigan"),
    "shoes": ("running shoe", "Loafer", "clog", "cowboy boot", "sandal", "sock"),
    "pants": ("jean", "pajama", "suit"),
    "shorts": ("swimming trunks", "jean", "miniskirt"),
    "dress": ("gown", "overskirt", "miniskirt", "hoopskirt", "abaya", "sarong", "kimono"),
    "skirt": ("miniskirt", "overskirt", "hoopskirt", "sarong"),
    "hat": ("cowboy hat", "sombrero", "bonnet", "shower cap", "crash helmet"),
    "outwear": ("trench coat", "fur coat", "parka", "cardigan", "poncho", "sweatshirt"),
}


def _classifier_model(arch: str, source: str) -> torch.nn.Module:
    """timm's `arch` with 1000 classes and the converted tensors, classifier included."""
    weights = resolve_weights(source)
    net = timm.create_model(arch, num_classes=1000)
    missing, unexpected = net.load_state_dict(weights.state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return net.eval()


def _score(net: torch.nn.Module, tf, files: dict[str, list[Path]], masks) -> dict[str, float]:
    """top-1 / top-5 hit rates and mean probability on the classes naming the garment."""
    top1 = top5 = mass = n = 0.0
    for cls, fs in files.items():
        x = torch.stack([tf(Image.open(f).convert("RGB")) for f in fs])
        with torch.no_grad():
            p = net(x).softmax(1)
        m = masks[cls]
        top1 += m[p.argmax(1)].sum().item()
        top5 += m[p.topk(5, 1).indices].any(1).sum().item()
        mass += p[:, m].sum(1).sum().item()
        n += len(fs)
    return {"top1": top1 / n, "top5": top5 / n, "mass": mass / n}


def imagenet(source: str, per_class: int) -> None:
    weights = resolve_weights(source)
    info = timm.data.ImageNetInfo()
    descs = [info.index_to_description(i) for i in range(1000)]
    masks = {
        c: torch.tensor([any(n in d for n in ns) for d in descs]) for c, ns in EXPECTED.items()
    }
    files = {c: sorted((DATA / "validation" / c).glob("*.jpg"))[:per_class] for c in EXPECTED}
    chance = statistics.mean(m.float().mean().item() for m in masks.values())
    n = sum(len(f) for f in files.values())
    print(
        f"{source} ({weights.arch}), {n} photos; chance top-1 {chance:.1%}, top-5 ~{5 * chance:.0%}"
    )
    stats = {"0.5": ((0.5,) * 3, (0.5,) * 3), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
    for arch in (weights.arch, weights.arch.removeprefix("tf_")):
        net = _classifier_model(arch, source)
        for label, (mean, std) in stats.items():
            tf = timm.data.create_transform(
                input_size=(3, 224, 224),
                interpolation="bicubic",
                mean=mean,
                std=std,
                crop_pct=0.875,
            )
            s = _score(net, tf, files, masks)
            print(
                f"  {arch:22s} mean/std {label:8s} top-1 {s['top1']:.0%}  top-5 {s['top5']:.0%}"
                f"  probability on the garment {s['mass']:.3f}"
            )


class _Step:
    """One training configuration: backbone + linear head, AdamW, a fixed random batch."""

    def __init__(self, arch: str, size: tuple[int, int], batch: int, channels_last: bool) -> None:
        net = timm.create_model(arch, num_classes=0)
        self.model = torch.nn.Sequential(net, torch.nn.Linear(net.num_features, 10)).train()
        self.x = torch.randn(batch, 3, *size)
        self.y = torch.randint(0, 10, (batch,))
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self, record: bool) -> None:
        t, c = time.perf_counter(), time.process_time()
        self.opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()
        if record:
            self.wall.append(time.perf_counter() - t)
            self.cpu.append(time.process_time() - c)


def speed(arch: str, sizes: list[str], batch: int, threads: int, warmup: int, steps: int) -> None:
    """Round-robin over the configurations, so a busy machine slows them all alike."""
    torch.set_num_threads(threads)
    configs = {}
    for s in sizes:
        h, w = (int(v) for v in s.split("x"))
        for cl in (False, True):
            configs[f"{h}x{w} {'channels_last' if cl else 'contiguous'}"] = _Step(
                arch, (h, w), batch, cl
            )
    load0 = os.getloadavg()[0]
    for i in range(warmup + steps):
        for step in configs.values():
            step.run(record=i >= warmup)
    print(
        f"{arch}, batch {batch}, {threads} threads, median of {steps} steps, load average "
        f"{load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print("  config                    images/s (wall)   images per CPU-second")
    for name, step in configs.items():
        wall = batch / statistics.median(step.wall)
        cpu = batch / statistics.median(step.cpu)
        print(f"  {name:25s} {wall:10.1f} {cpu:18.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="probe", required=True)
    a = sub.add_parser("imagenet")
    a.add_argument("--source", default="lite0")
    a.add_argument("--per-class", type=int, default=10)
    b = sub.add_parser("speed")
    b.add_argument("--arch", default="tf_efficientnet_lite0")
    b.add_argument("--sizes", nargs="+", default=["128x96", "160x120"])
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    if args.probe == "imagenet":
        torch.set_num_threads(1)
        imagenet(args.source, args.per_class)
    else:
        speed(args.arch, args.sizes, args.batch, args.threads, args.warmup, args.steps)


if __name__ == "__main__":
    main()

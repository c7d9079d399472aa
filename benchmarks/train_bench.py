"""Training benchmark: flat vs multi vs unified heads under the same time budget, on CPU.

Steps (each skipped when its output already exists, so a re-run only trains what is missing):
1. import the Kaggle "Fashion Product Images (Small)" zip and split it by item (val 0.15,
   test 0.15, seed 0);
2. the 2,000-image check: `train` on a 2,000-image stratified sample, one epoch, simple-cnn;
3. for each head: train the same backbone for the same number of epochs (sized to fit
   `--minutes` on this machine by timing a few steps; `--minutes` is also each run's
   `max_time`, so the LR schedule follows the clock when the machine is slower than planned);
   then test accuracy and weighted F1 per level (scikit-learn), attribute mAP, training time,
   throughput (images/s) and the share of each step spent waiting for data;
4. clothing-dataset-small: train on its train folder, accuracy on its validation folder.

Example:
    python benchmarks/train_bench.py --minutes 8 --heads flat,multi,unified --out bench-out/train
    python benchmarks/train_bench.py --weights lite0 --image-size auto --minutes 30 --heads unified \
        --batch-size 64 --lr 2e-3 --hidden 512 --skip throughput,sample,clothing
    python benchmarks/train_bench.py --weights lite0 --image-size auto --freeze-backbone --epochs 20 \
        --minutes 10 --batch-size 256 --hidden 512 --seeds 0,1,2 --skip throughput,sample,clothing
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import _products
import numpy as np

from fashion_tagger.model.spec import MESSAGES
from fashion_tagger.training.config import AUGMENT, CLASS_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATASETS / "fashion-product-images-small.zip")
    p.add_argument("--clothing", type=Path, default=DATASETS / "clothing-dataset-small")
    p.add_argument("--out", type=Path, default=ROOT / "bench-out" / "train")
    p.add_argument("--heads", default="flat,multi,unified", help="comma-separated heads to compare")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget per head")
    p.add_argument("--epochs", type=int, default=0, help="fixed epochs (0 = fit --minutes)")
    p.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="share of batches per epoch, with --epochs",
    )
    p.add_argument("--backbone", default="simple-cnn")
    p.add_argument(
        "--weights",
        default="none",
        help="pretrained backbone weights: lite0, timm, a file, or none (from scratch)",
    )
    p.add_argument("--image-size", default="80x64", help="HxW, or auto (the recipe's / backbone's)")
    p.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="heads only, on backbone features computed once (cached across heads and seeds)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument(
        "--messages",
        default="label",
        choices=MESSAGES,
        help="what the unified head's levels pass each other",
    )
    p.add_argument(
        "--class-weights",
        default="none",
        choices=CLASS_WEIGHTS,
        help="none maximises accuracy; inverse/sqrt trade it for rare-class recall (macro F1)",
    )
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument(
        "--augment",
        default="none",
        choices=AUGMENT,
        help="train-time augmentation: light = flip + 2-pixel shift, full = also colour, "
        "rotation, scale, blur, noise",
    )
    p.add_argument(
        "--skip", default="", help="comma-separated parts to skip: throughput,sample,heads,clothing"
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument(
        "--seeds", default="0", help="comma-separated training seeds (the split stays seed 0)"
    )
    return p.parse_args()


def prepare_products(args: argparse.Namespace) -> Path:
    return _products.prepare_products(args.data, args.out / "products", workers=args.workers)


def base_config(args: argparse.Namespace, head: str, epochs: int, seed: int = 0):
    from fashion_tagger.training.config import DataConfig, ModelConfig, TrainConfig

    size = None if args.image_size == "auto" else tuple(int(v) for v in args.image_size.split("x"))
    return TrainConfig(
        data=DataConfig(
            image_size=size,
            augment=args.augment,
            class_weights=args.class_weights,
            workers=args.workers,
            cache_dir=str(args.out / "cache"),
        ),
        model=ModelConfig(
            backbone=args.backbone,
            head=head,
            hidden=args.hidden,
            messages=args.messages,
            weights=args.weights,
            freeze_backbone=args.freeze_backbone,
        ),
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        label_smoothing=args.label_smoothing,
        max_time=str(args.minutes),
        seed=seed,
        checkpoint_every=0,
        progress=False,
    )


def score(run_dir: Path, dataset_dir: Path, split: str, cache: Path) -> tuple[dict, np.ndarray]:
    """Accuracy, weighted and macro F1 per level (consistent decoding), attribute mAP (sklearn);
    and which images each level got right ((N, levels) booleans, False where a level is absent),
    for the paired comparison of heads."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.inference.tagger import Tagger
    from fashion_tagger.model.preprocess import normalize
    from fashion_tagger.training.data import load_split

    tagger = Tagger.load(run_dir, backend="torch")
    spec = tagger.spec
    arrays, _ = load_split(Dataset.open(dataset_dir), split, spec, cache, workers=2, progress=False)
    preds, attr_p = [], []
    for i in range(0, len(arrays), 256):
        probs = tagger.predict_arrays(normalize(arrays.images[i : i + 256], spec))
        preds.append(tagger.best_paths(probs))
        attr_p.append(probs.attributes)
    pred = np.concatenate(preds)
    out: dict = {"n": len(arrays), "levels": {}}
    correct = (pred == arrays.levels) & (arrays.levels >= 0)
    for lvl, name in enumerate(spec.level_names):
        y = arrays.levels[:, lvl]
        ok = y >= 0
        out["levels"][name] = {
            "accuracy": float(accuracy_score(y[ok], pred[ok, lvl])),
            "weighted_f1": float(
                f1_score(y[ok], pred[ok, lvl], average="weighted", zero_division=0)
            ),
            "macro_f1": float(f1_score(y[ok], pred[ok, lvl], average="macro", zero_division=0)),
        }
    if arrays.attributes.shape[1]:
        a = np.concatenate(attr_p)
        has = arrays.attributes.sum(0) > 0
        out["attribute_mAP"] = float(
            np.mean(
                [
                    average_precision_score(arrays.attributes[:, j], a[:, j])
                    for j in np.flatnonzero(has)
                ]
            )
        )
    return out, correct


def throughput(args: argparse.Namespace, products: Path, steps: int = 12) -> dict:
    """Training steps of the chosen configuration (unified head, real loss) on cached pixels:
    wall and CPU time per image, per thread count."""
    import torch

    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.model.load import build_model
    from fashion_tagger.training.module import TaggerModule, hierarchy_loss
    from fashion_tagger.training.train import resolve_spec

    config = base_config(args, "unified", 1).with_recipe()
    spec = resolve_spec(Dataset.open(products), config)
    model = build_model(spec)
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    module = TaggerModule(model, spec, config)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    h, w = spec.input_size
    x = torch.randint(0, 255, (args.batch_size, 3, h, w), dtype=torch.uint8)
    levels = torch.stack([torch.randint(0, n, (args.batch_size,)) for n in spec.taxonomy.sizes], 1)
    attrs = torch.zeros(args.batch_size, len(spec.attribute_names))
    out = {}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        walls, cpus = [], []
        for _ in range(steps):
            t, c = time.perf_counter(), time.process_time()
            loss, _, _ = hierarchy_loss(module(module._inputs(x, train=True)), levels, attrs)
            loss.backward()
            opt.step()
            opt.zero_grad()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        wall, cpu = float(np.median(walls[2:])), float(np.median(cpus[2:]))
        out[f"threads={threads}"] = {
            "images_per_s": round(args.batch_size / wall, 1),
            "images_per_cpu_s": round(args.batch_size / cpu, 1),
        }
    return out


def sample_check(args: argparse.Namespace, products: Path) -> dict:
    """`train` on a 2,000-image sample for one epoch: wall time of the whole call."""
    from fashion_tagger.dataset import ops
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.model.rundir import RunDir
    from fashion_tagger.training.train import train

    sample = args.out / "sample2000"
    if not (sample / "items.parquet").is_file():
        ds, _ = ops.filter_dataset(Dataset.open(products), sample=2000, seed=0)
        ops.relocate(ds, sample).save()
    run_dir = args.out / "runs" / "sample2000"
    if not (run_dir / "model.json").is_file():
        config = base_config(args, "unified", 1)
        config = replace(config, data=replace(config.data, cache_dir=None))  # decoding counts
        t = time.perf_counter()
        train(sample, run_dir, config)
        wall = time.perf_counter() - t
    else:
        wall = RunDir.open(run_dir).config["training"].get("wall_seconds", float("nan"))
    run = RunDir.open(run_dir)
    return {
        "images": len(Dataset.open(sample)),
        "wall_seconds": round(wall, 1),
        "val_acc_leaf": run.config["metrics"].get("val_acc_leaf"),
        "throughput": run.config["training"]["throughput"],
    }


def run_heads(args: argparse.Namespace, products: Path) -> tuple[dict, dict[str, np.ndarray]]:
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.model.rundir import RunDir
    from fashion_tagger.training.budget import plan_budget
    from fashion_tagger.training.train import train

    counts = Dataset.open(products).split_counts()
    n_train, n_val = counts.get("train", 0), counts.get("val", 0)
    epochs, fraction = (
        (args.epochs, args.train_fraction)
        if args.epochs
        else plan_budget(base_config(args, "unified", 1), n_train, args.minutes, n_val)
    )
    print(
        f"{n_train} train images; {epochs} epochs of {fraction:.0%} of them per head "
        f"for {args.minutes} min",
        flush=True,
    )
    results, correct = {}, {}
    seeds = [int(v) for v in args.seeds.split(",")]
    for seed in seeds:  # each seed trains every head, so a slow machine hurts all heads alike
        for head in args.heads.split(","):
            name = head if seeds == [0] else f"{head}-s{seed}"
            run_dir = args.out / "runs" / name
            if not (run_dir / "model.json").is_file():
                t = time.perf_counter()
                config = replace(base_config(args, head, epochs, seed), train_fraction=fraction)
                train(products, run_dir, config)
                print(f"{name}: trained in {time.perf_counter() - t:.0f} s", flush=True)
            run = RunDir.open(run_dir)
            res, correct[name] = score(run_dir, products, "test", args.out / "cache")
            res["train_seconds"] = run.config["training"]["seconds"]
            res["epochs"] = run.config["training"]["epochs_run"]
            res["train_fraction"] = run.config["training"].get("train_fraction", 1.0)
            res["throughput"] = run.config["training"]["throughput"]
            results[name] = res
            print(name, json.dumps(res), flush=True)
    return results, correct


def seed_summary(results: dict, heads: list[str], seeds: list[int]) -> dict:
    """Per head and level: the mean and standard deviation of test accuracy over the seeds."""
    out: dict = {}
    for head in heads:
        runs = [results[f"{head}-s{s}"] for s in seeds]
        out[head] = {
            level: {
                "mean": float(np.mean([r["levels"][level]["accuracy"] for r in runs])),
                "std": float(np.std([r["levels"][level]["accuracy"] for r in runs], ddof=1)),
            }
            for level in runs[0]["levels"]
        }
    return out


def paired(correct: dict[str, np.ndarray], levels: list[str]) -> dict:
    """The unified head against each baseline on the same test images, level by level: the
    accuracy gap, its 95 % interval and McNemar's exact p-value (one seed: this measures how
    sure the test split makes us of the gap, not how much another seed would move it)."""
    from fashion_tagger.evaluation.metrics import paired_comparison

    out = {}
    for name, ok in correct.items():
        head, _, seed = name.partition("-s")
        unified = correct.get("unified" + (f"-s{seed}" if seed else ""))
        if head != "unified" and unified is not None:
            out[f"unified-{name}"] = {
                level: paired_comparison(unified[:, i], ok[:, i]) for i, level in enumerate(levels)
            }
    return out


def paired_table(pairs: dict) -> str:
    lines = [
        "| comparison | level | unified only right | baseline only right | gap (points) | 95 % interval | McNemar p |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for pair, levels in pairs.items():
        for name, r in levels.items():
            lines.append(
                f"| {pair} | {name} | {r['a_only']} | {r['b_only']} | {100 * r['diff']:+.2f} | "
                f"{100 * r['ci95_low']:+.2f} to {100 * r['ci95_high']:+.2f} | {r['p_value']:.3f} |"
            )
    return "\n".join(lines)


def run_clothing(args: argparse.Namespace) -> dict:
    from fashion_tagger.dataset.core import Dataset
    from fashion_tagger.model.rundir import RunDir
    from fashion_tagger.sources.folders import import_folders
    from fashion_tagger.training.budget import plan_budget
    from fashion_tagger.training.config import DataConfig
    from fashion_tagger.training.train import train

    out = args.out / "clothing"
    if not (out / "items.parquet").is_file():
        import_folders(args.clothing, out, workers=args.workers, progress=False)
    ds = Dataset.open(out)
    splits = ds.split_counts()
    run_dir = args.out / "runs" / "clothing"
    if not (run_dir / "model.json").is_file():
        config = base_config(args, "unified", 1)
        config = replace(
            config,
            data=DataConfig(
                image_size=None if args.weights != "none" else (64, 64),
                resize="pad",
                augment="full",
                workers=args.workers,
                cache_dir=str(args.out / "cache"),
            ),
        )
        epochs, fraction = plan_budget(
            config, splits.get("train", 0), args.minutes, splits.get("val", 0)
        )
        train(out, run_dir, replace(config, epochs=epochs, train_fraction=fraction))
    run = RunDir.open(run_dir)
    return {
        "splits": splits,
        "epochs": run.config["training"]["epochs_run"],
        "train_seconds": run.config["training"]["seconds"],
        "val_accuracy": run.config["metrics"].get("val_acc_leaf"),
    }


def table(results: dict) -> str:
    lines = [
        "| head | epochs x share | train s | img/s | data % | "
        + " | ".join(f"{lv} acc / wF1 / mF1" for lv in next(iter(results.values()))["levels"])
        + " | attr mAP |",
    ]
    lines.append("|" + "---|" * (6 + len(next(iter(results.values()))["levels"])))
    for head, r in results.items():
        cells = [
            f"{100 * v['accuracy']:.1f} / {100 * v['weighted_f1']:.1f} / "
            f"{100 * v.get('macro_f1', float('nan')):.1f}"
            for v in r["levels"].values()
        ]
        tp = r["throughput"]
        lines.append(
            f"| {head} | {r['epochs']} x {r.get('train_fraction', 1.0):.2f} | {r['train_seconds']:.0f} | {tp['images_per_s']:.0f} | {100 * tp['data_fraction']:.1f} | "
            + " | ".join(cells)
            + f" | {100 * r.get('attribute_mAP', float('nan')):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}}
    products = prepare_products(args)
    if "throughput" not in skip:
        results["throughput"] = throughput(args, products)
        print("throughput", json.dumps(results["throughput"]), flush=True)
    if "sample" not in skip:
        results["sample2000"] = sample_check(args, products)
        print("sample2000", json.dumps(results["sample2000"]), flush=True)
    if "heads" not in skip:
        results["heads"], correct = run_heads(args, products)
        print(table(results["heads"]), flush=True)
        levels = list(next(iter(results["heads"].values()))["levels"])
        results["paired"] = paired(correct, levels)
        if results["paired"]:
            print(paired_table(results["paired"]), flush=True)
        seeds = [int(v) for v in args.seeds.split(",")]
        if len(seeds) > 1:
            results["seeds"] = seed_summary(results["heads"], args.heads.split(","), seeds)
            print("seeds", json.dumps(results["seeds"]), flush=True)
    if "clothing" not in skip and args.clothing.is_dir():
        results["clothing"] = run_clothing(args)
        print("clothing", json.dumps(results["clothing"]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()

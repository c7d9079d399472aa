"""The label audit on the product zip: injected noise found, flat cleanlab compared, clean zip read.

1. The clean zip. The audit on every row as imported: issues by kind, and the top 30 with item
   ids and image paths (look at them to count the real label errors). Run first: the rows it
   flags are the zip's own label errors, which the noise runs count as false positives.
2. Injected noise. On N rows of the product zip (5k, 10k, all by default), flip `--flip` (5 %) of
   the articleType labels: half to a sibling under the same subCategory, half to a random
   articleType of another subCategory (the whole path moves, so it stays valid). Run the audit's
   scoring on the cached Lite0 features and report, per kind of flip:
   - precision and recall of the flagged rows at the default threshold (and at 0.5, 0.9,
     0.999, to show how the flag moves with it), the best recall at precision >= 0.8 (any
     threshold), and the AUROC of the row score;
   - the same AUROC for the articleType-level score, 1 - P(articleType | given subCategory);
   - `audit --level articleType`'s score, the posterior that the articleType is wrong with the
     subCategory right (`PathScores.level_posteriors`): P / R, R@P0.8 and AUROC as above;
   - flat cleanlab on the leaf label alone (a flat softmax over leaves trained the same way on
     the same folds; self-confidence, flagged at the same threshold and by find_label_issues);
   - precision with the clean zip's own flagged rows left out (what caps precision: those rows
     are real label errors the audit rightly flags, counted as false here).
   Precision for one kind leaves the rows of the other kind out (neither right nor wrong).
3. Cost. Embedding (images/s, measured when the cache lacks images), and per N the seconds of
   the audit's scoring (out-of-fold heads, calibration, cleanlab, kNN) and of flat cleanlab.

The product zip is imported into --data first if that dir does not exist.

Example: python benchmarks/audit_bench.py --data /tmp/products --sizes 5000 10000 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from fashion_tagger.curation.audit import DEFAULT_THRESHOLD, AuditConfig, audit_rows
from fashion_tagger.curation.features import embed, pretrained_backbone
from fashion_tagger.curation.scoring import (
    HeadConfig,
    fit_oof,
    flat_scores,
    item_folds,
    reduce_features,
)
from fashion_tagger.dataset.core import Dataset

THRESHOLDS = (0.5, 0.9, DEFAULT_THRESHOLD, 0.999)

ZIP = Path(__file__).parents[1].parent / "shared" / "datasets" / "fashion-product-images-small.zip"


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count half); nan without positives or negatives."""
    from scipy.stats import rankdata

    pos = int(positive.sum())
    neg = len(positive) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def flip_labels(
    paths: list[tuple[str, ...]], frac: float, seed: int
) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """Flip `frac` of the rows: half to a sibling leaf, half to a leaf of another subCategory.

    Returns the new paths and a code per row: 0 clean, 1 sibling flip, 2 random flip.
    """
    rng = np.random.default_rng(seed)
    leaves = sorted(set(paths))
    siblings = {p: [q for q in leaves if q[:-1] == p[:-1] and q != p] for p in leaves}
    n = len(paths)
    chosen = rng.choice(n, round(frac * n), replace=False)
    half = len(chosen) // 2
    kind = np.zeros(n, dtype=np.int64)
    out = list(paths)
    for r in chosen[:half]:
        if siblings[paths[r]]:
            out[r] = siblings[paths[r]][rng.integers(len(siblings[paths[r]]))]
            kind[r] = 1
    for r in chosen[half:]:
        others = [q for q in leaves if q[:-1] != paths[r][:-1]]
        out[r] = others[rng.integers(len(others))]
        kind[r] = 2
    return out, kind


def prf(flags: np.ndarray, kind: np.ndarray, k: int, scores: np.ndarray) -> dict[str, float]:
    """Precision, recall and AUROC for flip kind `k` against the clean rows."""
    rows = (kind == 0) | (kind == k)
    pos = kind[rows] == k
    f = flags[rows]
    return {
        "precision": float(pos[f].mean()) if f.any() else float("nan"),
        "recall": float(f[pos].mean()) if pos.any() else float("nan"),
        "auroc": auroc(scores[rows], pos),
        "flips": int(pos.sum()),
    }


def recall_at_precision(scores: np.ndarray, kind: np.ndarray, k: int, p: float = 0.8) -> float:
    """The best recall of flip kind `k` (against clean rows) at precision >= p, any threshold."""
    rows = (kind == 0) | (kind == k)
    order = np.argsort(-scores[rows], kind="stable")
    pos = (kind[rows] == k)[order]
    tp = np.cumsum(pos)
    ok = tp / np.arange(1, len(tp) + 1) >= p
    return float((tp[ok] / pos.sum()).max()) if ok.any() and pos.any() else 0.0


def sample_rows(ds: Dataset, n: int, seed: int) -> np.ndarray:
    """Row indices of about `n` rows, whole items, sorted."""
    if n <= 0 or n >= len(ds):
        return np.arange(len(ds))
    items = ds.table.column("item_id").to_pylist()
    order = np.random.default_rng(seed).permutation(sorted(set(items)))
    keep = set(order[:n].tolist())
    return np.array([i for i, it in enumerate(items) if it in keep])


def with_paths(ds: Dataset, paths: list[tuple[str, ...]]) -> Dataset:
    col = pa.array([list(p) for p in paths], pa.list_(pa.string()))
    return ds.with_table(
        ds.table.set_column(ds.table.schema.get_field_index("labels"), "labels", col)
    )


def config(args: argparse.Namespace) -> AuditConfig:
    return AuditConfig(folds=args.folds, seed=args.seed, head=HeadConfig(hidden=args.hidden))


def row_order(table: pa.Table, ds: Dataset) -> np.ndarray:
    """Positions in `ds` of the (sorted) issues table's rows."""
    pos = {img: i for i, img in enumerate(ds.table.column("image").to_pylist())}
    return np.array([pos[i] for i in table.column("image").to_pylist()])


def flat_run(ds: Dataset, feats: np.ndarray, cfg: AuditConfig) -> tuple[np.ndarray, ...]:
    """Flat cleanlab: one softmax over leaves, same features, folds and recipe as the audit."""
    paths = [tuple(p) for p in ds.labels]
    leaves = sorted(set(paths))
    leaf_id = np.array([leaves.index(p) for p in paths])
    x, _ = reduce_features(feats, cfg.head.dims)
    items = ds.table.column("item_id").to_pylist()
    folds = item_folds(items, ["\x1f".join(p) for p in paths], cfg.folds, cfg.seed)
    (leaf_probs,) = fit_oof(x, [leaf_id], [len(leaves)], folds, cfg.head, cfg.seed)
    score, cl_flag = flat_scores(leaf_id, leaf_probs)
    return score, cl_flag


def kind_metrics(score: np.ndarray, kind: np.ndarray, k: int, known: np.ndarray) -> dict:
    """P / R at each threshold, R@P0.8, AUROC, and P at the default without `known` rows."""
    out = prf(score >= DEFAULT_THRESHOLD, kind, k, score)
    out["recall_at_p80"] = recall_at_precision(score, kind, k)
    out["at"] = {}
    for t in THRESHOLDS:
        m = prf(score >= t, kind, k, score)
        out["at"][str(t)] = [round(m["precision"], 3), round(m["recall"], 3)]
    keep = ~known | (kind == k)
    without = prf((score >= DEFAULT_THRESHOLD)[keep], kind[keep], k, score[keep])
    out["precision_without_clean_issues"] = without["precision"]
    out["auroc_without_clean_issues"] = without["auroc"]
    out["recall_at_p80_without_clean_issues"] = recall_at_precision(score[keep], kind[keep], k)
    return out


def noise_run(
    ds: Dataset, feats: np.ndarray, n: int, args: argparse.Namespace, clean_flags: set[str]
) -> dict:
    rows = sample_rows(ds, n, args.seed)
    sub = ds.with_table(ds.table.take(pa.array(rows)))
    paths, kind = flip_labels([tuple(p) for p in sub.labels], args.flip, args.seed)
    noisy = with_paths(sub, paths)
    cfg = config(args)
    t0 = time.perf_counter()
    table, scored = audit_rows(noisy, feats[rows], cfg)
    seconds = time.perf_counter() - t0
    order = row_order(table, noisy)  # the table is sorted; put it back in row order
    score = np.zeros(len(rows))
    score[order] = table.column("score").to_numpy()
    label_flag = np.zeros(len(rows), dtype=bool)
    label_flag[order] = np.array(table.column("kind").to_pylist()) == "label"
    t1 = time.perf_counter()
    flat_score, flat_cl = flat_run(noisy, feats[rows], cfg)
    flat_seconds = time.perf_counter() - t1
    leaf_level = np.nan_to_num(scored.level_scores[:, -1])  # 1 - P(articleType | subCategory)
    leaf_posterior = np.nan_to_num(scored.level_posteriors[:, -1])  # audit --level articleType
    images = noisy.table.column("image").to_pylist()
    known = np.array([img in clean_flags for img in images])

    out = {
        "rows": len(rows),
        "scoring_s": round(seconds, 1),
        "flat_s": round(flat_seconds, 1),
        "noise_rates": [round(float(r), 4) for r in scored.noise_rates],
        "temperatures": [round(float(t), 3) for t in scored.temperatures],
        "clean_issue_rows": int(known[kind == 0].sum()),
    }
    for name, k in (("sibling", 1), ("random", 2)):
        out[f"hier_{name}"] = kind_metrics(score, kind, k, known)
        out[f"hier_{name}"]["label_kind_pr"] = prf(label_flag, kind, k, score)
        out[f"hier_leaf_level_{name}"] = kind_metrics(leaf_level, kind, k, known)
        out[f"hier_leaf_posterior_{name}"] = kind_metrics(leaf_posterior, kind, k, known)
        out[f"flat_{name}"] = kind_metrics(flat_score, kind, k, known)
        out[f"flat_cl_{name}"] = prf(flat_cl, kind, k, flat_score)
    out["flagged"] = {"hier": int((score >= DEFAULT_THRESHOLD).sum()),
                      "flat": int((flat_score >= DEFAULT_THRESHOLD).sum()),
                      "flat_cl": int(flat_cl.sum())}  # fmt: skip
    return out


def clean_run(ds: Dataset, feats: np.ndarray, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    table, scored = audit_rows(ds, feats, config(args))
    seconds = time.perf_counter() - t0
    issues = table.filter(table.column("is_issue"))
    top = issues.slice(0, args.top).to_pylist()
    return {
        "rows": table.num_rows,
        "scoring_s": round(seconds, 1),
        "issues": issues.num_rows,
        "by_kind": dict(Counter(issues.column("kind").to_pylist())),
        "by_level": dict(Counter(lv or "none" for lv in issues.column("level").to_pylist())),
        "label_issues_at": {
            str(t): int(np.sum(table.column("score").to_numpy() >= t)) for t in THRESHOLDS
        },
        "noise_rates": [round(float(r), 4) for r in scored.noise_rates],
        "flagged_images": [
            r["image"] for r in issues.select(["image", "kind"]).to_pylist() if r["kind"] == "label"
        ],
        "top": [
            {k: r[k] for k in ("item_id", "image", "given", "suggested", "score", "kind")}
            for r in top
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/audit-bench-products"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 0])
    parser.add_argument("--flip", type=float, default=0.05)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=HeadConfig().hidden,
                        help="Hidden width of the heads; 0: linear.")  # fmt: skip
    parser.add_argument("--skip-clean", action="store_true")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if not (args.data / "items.parquet").is_file():
        cmd = [sys.executable, "-m", "fashion_tagger", "import", "kaggle-products", str(ZIP),
               "--out", str(args.data), "--no-progress"]  # fmt: skip
        subprocess.run(cmd, check=True)
    ds = Dataset.open(args.data)
    net, spec = pretrained_backbone()
    t0 = time.perf_counter()
    feats, embedded = embed(ds, net, spec, progress=False)
    embed_s = time.perf_counter() - t0
    results: dict = {
        "rows": len(ds),
        "backbone": f"{spec.backbone} {spec.input_size} ({spec.source})",
        "embedded_now": embedded,
        "embed_s": round(embed_s, 1),
        "images_per_s": round(embedded / embed_s, 1) if embedded else None,
        "noise": [],
    }
    print(json.dumps({k: v for k, v in results.items() if k != "noise"}), flush=True)
    clean_flags: set[str] = set()
    if not args.skip_clean:
        results["clean"] = c = clean_run(ds, feats, args)
        clean_flags = set(c["flagged_images"])
        shown = {k: v for k, v in c.items() if k not in ("top", "flagged_images")}
        print(json.dumps(shown), flush=True)
        for i, r in enumerate(c["top"], 1):
            print(f"{i:2d} {r['score']:.4f} {r['kind']:<18} item {r['item_id']:>6} "
                  f"{' > '.join(r['given'])}  ->  {' > '.join(r['suggested'])}  {r['image']}")  # fmt: skip
    for n in args.sizes:
        r = noise_run(ds, feats, n, args, clean_flags)
        results["noise"].append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()

"""The label audit: out-of-fold scores rank flipped labels first, along the taxonomy's paths."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fashion_tagger.curation.audit import (
    AuditConfig,
    audit,
    issues_settings,
    read_issues,
    write_issues,
)
from fashion_tagger.curation.features import AuditError, FeatureSpec, embed
from fashion_tagger.curation.scoring import (
    HeadConfig,
    item_folds,
    score_paths,
)
from fashion_tagger.dataset import store
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.manifest import rows_to_table
from fashion_tagger.errors import DatasetError
from fashion_tagger.model.decode import LeafTable
from fashion_tagger.taxonomy import Taxonomy

LEVELS = ["masterCategory", "subCategory", "articleType"]
TREE = {
    ("Apparel", "Topwear"): ["Tshirts", "Shirts", "Tops"],
    ("Apparel", "Bottomwear"): ["Jeans", "Shorts"],
    ("Footwear", "Shoes"): ["Casual Shoes", "Sports Shoes", "Heels"],
    ("Footwear", "Sandal"): ["Sandals"],
    ("Accessories", "Bags"): ["Handbags", "Backpacks"],
}
LEAVES = [(*k, leaf) for k, leaves in TREE.items() for leaf in leaves]


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def make_dataset(
    root: Path, paths: list[tuple[str, ...]], items: list[str] | None = None
) -> Dataset:
    """A dataset dir with one tiny distinct JPEG per row (content does not matter here)."""
    rows = []
    for i, p in enumerate(paths):
        buf = io.BytesIO()
        Image.new("RGB", (6, 8), (i % 251, (i // 251) % 251, 7)).save(buf, format="PNG")
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        rel = store.put(root, sha, "png", data)
        item = items[i] if items else f"item{i}"
        rows.append({"image": rel, "sha256": sha, "item_id": item, "labels": list(p)})
    return Dataset.create(root, rows_to_table(rows), {"name": root.name, "levels": LEVELS})


def clustered(n: int, noise: float, flip: float, seed: int):
    """Rows whose features cluster by leaf; a fraction `flip` carries another leaf's label."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, len(LEAVES), n)
    centres = rng.normal(size=(len(LEAVES), 32)) * 3
    feats = centres[true] + rng.normal(scale=noise, size=(n, 32))
    flipped = rng.random(n) < flip
    given = true.copy()
    given[flipped] = (true[flipped] + rng.integers(1, len(LEAVES), flipped.sum())) % len(LEAVES)
    return feats.astype(np.float32), [LEAVES[g] for g in given], [LEAVES[t] for t in true], flipped


PRODUCT_CLASSES = ("Tshirts", "Jeans", "Casual Shoes", "Handbags", "Watches", "Sandals")


def product_sample(zip_path: Path, root: Path, per_class: int, seed: int = 0) -> Dataset:
    """A dataset dir of `per_class` real product photos for each of `PRODUCT_CLASSES`."""
    import csv

    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
        styles = next(n for n in names if n.endswith("styles.csv"))
        base = styles.rsplit("/", 1)[0]
        text = z.read(styles).decode("utf-8", errors="replace").splitlines()
        by_class: dict[str, list[dict]] = {c: [] for c in PRODUCT_CLASSES}
        for row in csv.DictReader(text):
            if row.get("articleType") in by_class and f"{base}/images/{row['id']}.jpg" in names:
                by_class[row["articleType"]].append(row)
        rows = []
        for cls in PRODUCT_CLASSES:
            for k in rng.choice(len(by_class[cls]), per_class, replace=False):
                r = by_class[cls][k]
                data = z.read(f"{base}/images/{r['id']}.jpg")
                sha = hashlib.sha256(data).hexdigest()
                rel = store.put(root, sha, "jpg", data)
                labels = [r["masterCategory"], r["subCategory"], r["articleType"]]
                rows.append({"image": rel, "sha256": sha, "item_id": r["id"], "labels": labels})
    return Dataset.create(root, rows_to_table(rows), {"name": "products", "levels": LEVELS})


def flip_across_branches(ds: Dataset, frac: float, seed: int) -> tuple[Dataset, np.ndarray]:
    """Give a fraction of rows a random leaf of another masterCategory (the path stays valid)."""
    rng = np.random.default_rng(seed)
    labels = [list(p) for p in ds.labels]
    leaves = sorted({tuple(p) for p in labels})
    flipped = rng.random(len(labels)) < frac
    for i in np.flatnonzero(flipped):
        others = [leaf for leaf in leaves if leaf[0] != labels[i][0]]
        labels[i] = list(others[rng.integers(len(others))])
    col = pa.array(labels, pa.list_(pa.string()))
    table = ds.table.set_column(ds.table.schema.get_field_index("labels"), "labels", col)
    return ds.with_table(table).save(), flipped


def scores_in_manifest_order(root: Path, column: str = "score") -> np.ndarray:
    issues = read_issues(root).to_pylist()
    by_image = {r["image"]: r[column] for r in issues}
    return np.array([by_image[i] for i in Dataset.open(root).table.column("image").to_pylist()])


FAST = AuditConfig(head=HeadConfig(epochs=20))


# -- the audit on real product photos ---------------------------------------------------------
def test_audit_ranks_flipped_product_photos_first(datasets_dir: Path, tmp_path: Path) -> None:
    """Real photos, labels flipped at random, a cheap untrained CNN: flipped rows rank first."""
    from fashion_tagger.model.backbones import create_backbone

    zip_path = datasets_dir / "fashion-product-images-small.zip"
    ds = product_sample(zip_path, tmp_path / "ds", per_class=40)
    ds, flipped = flip_across_branches(ds, 0.1, seed=1)
    assert flipped.sum() >= 10
    import torch

    torch.manual_seed(0)
    net, _ = create_backbone("simple-cnn")
    spec = FeatureSpec("simple-cnn", "random-seed0", (64, 48), (0.5,) * 3, (0.25,) * 3)
    cl = AuditConfig(threshold=None)  # cleanlab's confident learning flags
    result = audit(ds.root, backbone=(net.eval(), spec), config=cl, progress=False)

    assert result.rows == len(ds) and result.embedded_now == len(ds)
    scores = scores_in_manifest_order(ds.root)
    assert auroc(scores, flipped) > 0.85
    flags = scores_in_manifest_order(ds.root, "is_issue").astype(bool)
    assert flags[flipped].mean() >= 0.8  # recall of the flipped rows
    table = read_issues(ds.root)
    tax = Dataset.open(ds.root).taxonomy
    for row in table.to_pylist():
        assert tax.contains(row["suggested"]) and len(row["suggested"]) == 3
        assert 0.0 <= row["score"] <= 1.0
        assert row["level"] is None or row["level"] in LEVELS
        assert row["kind"] in ("label", "duplicate_conflict", "outlier", "ok")
        assert row["is_issue"] == (row["kind"] != "ok")
    scores = table.column("score").to_pylist()
    issues = table.column("is_issue").to_pylist()
    assert issues == sorted(issues, reverse=True)  # issues first
    n = sum(issues)
    assert scores[:n] == sorted(scores[:n], reverse=True)


# -- the audit on injected features -----------------------------------------------------------
def test_audit_on_features_flags_flips_with_levels_and_suggestions(tmp_path: Path) -> None:
    feats, paths, true, flipped = clustered(400, noise=1.5, flip=0.08, seed=0)
    make_dataset(tmp_path, paths)
    cl = AuditConfig(threshold=None, head=HeadConfig(epochs=20))  # confident-learning flags
    result = audit(tmp_path, features=feats, config=cl, progress=False)
    rows = {r["image"]: r for r in read_issues(tmp_path).to_pylist()}
    ordered = [rows[i] for i in Dataset.open(tmp_path).table.column("image").to_pylist()]
    scores = np.array([r["score"] for r in ordered])
    flags = np.array([r["kind"] == "label" for r in ordered])
    assert auroc(scores, flipped) > 0.95
    assert flags[flipped].mean() >= 0.8 and flipped[flags].mean() >= 0.7
    # the suggestion is the true path for most flipped rows; `level` is where they first part
    suggested_true = [tuple(ordered[i]["suggested"]) == true[i] for i in np.flatnonzero(flipped)]
    assert np.mean(suggested_true) >= 0.9
    for i in np.flatnonzero(flipped):
        r = ordered[i]
        if tuple(r["suggested"]) != tuple(r["given"]):
            first = next(d for d in range(3) if r["suggested"][d] != r["given"][d])
            assert r["level"] == LEVELS[first]
    assert result.by_kind.get("label", 0) == int(flags.sum())
    assert result.decoder and "given features" in result.backbone
    assert sum(result.by_level.values()) == result.issues


def test_threshold_flags_by_score(tmp_path: Path) -> None:
    feats, paths, _, _ = clustered(200, noise=1.5, flip=0.1, seed=3)
    make_dataset(tmp_path, paths)
    audit(
        tmp_path,
        features=feats,
        config=AuditConfig(threshold=0.5, head=HeadConfig(epochs=10)),
        progress=False,
    )
    for r in read_issues(tmp_path).to_pylist():
        assert (r["kind"] == "label") == (r["score"] >= 0.5)


def test_duplicate_conflicts_and_outliers(tmp_path: Path) -> None:
    """A copy of a photo under another label is a conflict; a photo far from all is an outlier."""
    feats, paths, _, _ = clustered(200, noise=1.0, flip=0.0, seed=4)
    a, b = 10, 11
    feats[b] = feats[a]
    paths[b] = next(p for p in LEAVES if p[0] != paths[a][0])
    feats[20] = 60.0  # far from every cluster
    make_dataset(tmp_path, paths)
    audit(tmp_path, features=feats, config=FAST, progress=False)
    rows = {r["image"]: r for r in read_issues(tmp_path).to_pylist()}
    images = Dataset.open(tmp_path).table.column("image").to_pylist()
    pair = [rows[images[a]], rows[images[b]]]
    assert {pair[0]["duplicate_of"], pair[1]["duplicate_of"]} == {images[a], images[b]}
    assert {pair[0]["duplicate_item"], pair[1]["duplicate_item"]} == {f"item{a}", f"item{b}"}
    assert {"duplicate_conflict", "label"} >= {r["kind"] for r in pair}
    assert "duplicate_conflict" in {r["kind"] for r in pair} or all(
        r["kind"] == "label" for r in pair
    )
    far = rows[images[20]]
    assert far["outlier_score"] == max(r["outlier_score"] for r in rows.values())
    assert far["kind"] in ("outlier", "label")


def test_audit_needs_labels_items_and_sane_options(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="--folds"):
        AuditConfig(folds=1)
    with pytest.raises(AuditError, match="--threshold"):
        AuditConfig(threshold=1.5)
    with pytest.raises(AuditError, match="--hidden"):
        AuditConfig(head=HeadConfig(hidden=-1))
    with pytest.raises(AuditError, match="choose one"):
        AuditConfig(level="articleType", threshold=None)
    make_dataset(tmp_path, LEAVES[:3], items=["a", "a", "b"])
    with pytest.raises(AuditError, match="2 items cannot make 5 folds"):
        audit(tmp_path, features=np.zeros((3, 4)), progress=False)
    with pytest.raises(AuditError, match="features have 2 rows"):
        audit(tmp_path, features=np.zeros((2, 4)), progress=False)


def sibling_swaps(n: int, frac: float, seed: int):
    """Clustered rows (as `clustered`) where `frac` carry a sibling's label (same parents)."""
    feats, paths, _, _ = clustered(n, noise=1.2, flip=0.0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    swapped = np.zeros(n, dtype=bool)
    for i in rng.choice(n, round(frac * n), replace=False):
        sibs = [q for q in LEAVES if q[:2] == paths[i][:2] and q != paths[i]]
        if sibs:
            paths[i] = sibs[rng.integers(len(sibs))]
            swapped[i] = True
    return feats, paths, swapped


def test_level_mode_scores_and_flags_one_level(tmp_path: Path) -> None:
    """--level articleType: the score is that level's posterior, the flag its threshold, and
    sibling swaps come first; a level the taxonomy lacks fails before any work, naming them."""
    feats, paths, swapped = sibling_swaps(400, 0.08, seed=5)
    make_dataset(tmp_path, paths)
    cfg = AuditConfig(threshold=0.5, head=HeadConfig(epochs=20), level="articleType")
    audit(tmp_path, features=feats, config=cfg, progress=False)
    table = read_issues(tmp_path)
    assert issues_settings(table)["level"] == "articleType"
    assert "articleType is wrong" in issues_settings(table)["score"]
    rows = {r["image"]: r for r in table.to_pylist()}
    ordered = [rows[i] for i in Dataset.open(tmp_path).table.column("image").to_pylist()]
    scores = np.array([r["score"] for r in ordered])
    assert np.all((scores >= 0) & (scores <= 1))
    for r in ordered:
        assert (r["kind"] == "label") == (r["score"] >= 0.5)
        assert r["kind"] != "label" or r["level"] is not None
    assert auroc(scores, swapped) > 0.95
    flags = np.array([r["kind"] == "label" for r in ordered])
    assert swapped[flags].mean() >= 0.9 and flags[swapped].mean() >= 0.4  # 0.5: cautious
    # a photo of the only child of its parent (Sandals) cannot be a sibling swap: score 0
    lone = [r["score"] for r in ordered if r["given"][-1] == "Sandals"]
    assert lone and max(lone) == 0.0
    with pytest.raises(AuditError, match="its levels: masterCategory, subCategory, articleType"):
        audit(tmp_path, features=feats, config=AuditConfig(level="colour"), progress=False)


# -- the features cache -----------------------------------------------------------------------
def test_embed_caches_by_image_and_backbone(tmp_path: Path) -> None:
    import torch

    from fashion_tagger.model.backbones import create_backbone

    ds = make_dataset(tmp_path, LEAVES * 2)
    torch.manual_seed(0)
    net, _ = create_backbone("simple-cnn")
    spec = FeatureSpec("simple-cnn", "seed0", (16, 12), (0.5,) * 3, (0.25,) * 3)
    first, now = embed(ds, net.eval(), spec, progress=False)
    assert now == len(ds) and first.shape == (len(ds), net.num_features)
    again, now = embed(ds, net, spec, progress=False)
    assert now == 0 and np.array_equal(first, again)
    part = ds.with_table(ds.table.slice(3, 5))
    sub, now = embed(part, net, spec, progress=False)
    assert now == 0 and np.array_equal(sub, first[3:8])
    other = FeatureSpec("simple-cnn", "seed1", (16, 12), (0.5,) * 3, (0.25,) * 3)
    assert embed(ds, net, other, progress=False)[1] == len(ds)  # another key, another cache


# -- the issues file --------------------------------------------------------------------------
def issue_row(**kw) -> dict:
    row = {"item_id": "1", "image": "images/a.jpg", "given": ["A"], "suggested": ["B"],
           "score": 0.7, "kind": "label", "level": "masterCategory", "is_issue": True}  # fmt: skip
    return {**row, **kw}


def test_issues_file_round_trip_and_checks(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="run `fashion-tagger audit"):
        read_issues(tmp_path)
    table = pa.Table.from_pylist([issue_row(), issue_row(image="b", kind="low_confidence")])
    write_issues(tmp_path, table, {"folds": 5})
    back = read_issues(tmp_path)
    assert back.column("kind").to_pylist() == ["label", "low_confidence"]
    assert back.column("outlier_score").null_count == 2  # optional columns come back as nulls
    from fashion_tagger.curation.audit import issues_settings

    assert issues_settings(back) == {"folds": 5}
    for bad, message in (
        ({"score": 1.5}, r"\[0, 1\]"),
        ({"kind": "weird"}, "unknown kinds"),
    ):
        with pytest.raises(DatasetError, match=message):
            write_issues(tmp_path, pa.Table.from_pylist([issue_row(**bad)]))
    with pytest.raises(DatasetError, match="lacks columns"):
        write_issues(tmp_path, pa.Table.from_pylist([{"image": "x"}]))
    assert read_issues(tmp_path).num_rows == 2  # a refused write leaves the file as it was


# -- the pure scoring functions ---------------------------------------------------------------
@st.composite
def trees_and_probs(draw):
    """A random taxonomy (1-3 levels, ragged), per-level probabilities and given paths."""
    depth = draw(st.integers(1, 3))
    paths: set[tuple[str, ...]] = set()
    for _ in range(draw(st.integers(1, 8))):
        d = draw(st.integers(1, depth))
        paths.add(tuple(f"n{lvl}_{draw(st.integers(0, 2))}" for lvl in range(d)))
    tax = Taxonomy.from_paths(sorted(paths))
    n = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    probs = [rng.dirichlet(np.full(size, 0.5), n) for size in tax.sizes]
    leaves = tax.leaf_index_paths()
    given = np.full((n, tax.depth), -1)
    for i in range(n):
        p = leaves[rng.integers(len(leaves))]
        given[i, : len(p)] = p
    return tax, probs, given


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees_and_probs(), st.sampled_from([None, 0.3, 0.9]))
def test_score_paths_invariants(case, threshold) -> None:
    tax, probs, given = case
    s = score_paths(tax, given, probs, threshold)
    n = len(given)
    assert np.array_equal(s.suggested, LeafTable.from_taxonomy(tax).best_paths(probs))
    assert s.score.shape == (n,) and np.all((s.score >= 0) & (s.score <= 1))
    for i in range(n):
        path = tax.decode(s.suggested[i])  # raises unless a valid path
        assert tax.is_leaf(len(path) - 1, s.suggested[i][len(path) - 1])
        assert -1 <= s.level[i] < tax.depth
        differs = [d for d in range(tax.depth) if s.suggested[i][d] != given[i][d]]
        if differs:
            assert s.level[i] == differs[0]
        elif not s.is_issue[i]:
            assert s.level[i] == -1
        depth = int((given[i] >= 0).sum())
        assert np.all(np.isnan(s.level_scores[i, depth:]))
        assert np.all((s.level_scores[i, :depth] >= 0) & (s.level_scores[i, :depth] <= 1))
    assert np.allclose(s.score, bayes_by_hand(tax, given, probs, s), atol=1e-9)
    assert s.level_posteriors.shape == (n, tax.depth)
    by_hand = family_posteriors_by_hand(tax, given, probs, s)
    assert np.array_equal(np.isnan(s.level_posteriors), np.isnan(by_hand))
    assert np.allclose(np.nan_to_num(s.level_posteriors), np.nan_to_num(by_hand), atol=1e-9)
    assert s.noise_rates.shape == (tax.depth,) and np.all(
        (s.noise_rates >= 0) & (s.noise_rates < 1)
    )
    assert s.temperatures.shape == (tax.depth,) and np.all(s.temperatures > 0)
    if threshold is not None:
        assert np.array_equal(s.is_issue, s.score >= threshold)


def calibrated_by_hand(probs: list, temperatures: np.ndarray) -> list[np.ndarray]:
    """Each level's probabilities softened by its temperature: softmax(log p / T)."""
    out = []
    for p, t in zip(probs, temperatures, strict=True):
        z = np.log(np.clip(p, 1e-300, 1)) / t
        e = np.exp(z - z.max(axis=1, keepdims=True))
        out.append(e / e.sum(axis=1, keepdims=True))
    return out


def bayes_by_hand(tax: Taxonomy, given: np.ndarray, probs: list, s) -> np.ndarray:
    """The posterior that each given path is wrong, one leaf at a time (the docstring's formula)."""
    leaves = [tuple(p) for p in tax.leaf_index_paths()]
    cal = calibrated_by_hand(probs, s.temperatures)
    eps = np.clip(s.noise_rates, 0, 0.5)
    eps = eps * 0.9 / eps.sum() if eps.sum() > 0.9 else eps

    def split(a: tuple, b: tuple) -> int:  # first level of path a where path b differs
        return next((lvl for lvl in range(len(a)) if lvl >= len(b) or a[lvl] != b[lvl]), -1)

    out = []
    for i in range(len(given)):
        path = tuple(int(v) for v in given[i] if v >= 0)
        joint = np.array(
            [np.prod([cal[lvl][i, n] for lvl, n in enumerate(leaf)]) for leaf in leaves]
        )
        joint /= joint.sum()
        wrong = right = 0.0
        for j, leaf in enumerate(leaves):
            lvl = split(path, leaf)
            if lvl < 0:
                right += joint[j] * (1 - eps.sum())
            else:
                parting = sum(split(leaf, other) == lvl for other in leaves)
                wrong += joint[j] * eps[lvl] / max(parting, 1)
        out.append(wrong / (wrong + right) if wrong + right > 0 else 0.0)
    return np.array(out)


def family_posteriors_by_hand(tax: Taxonomy, given: np.ndarray, probs: list, s) -> np.ndarray:
    """Per row and level: P(the given node is wrong | its given parent right), one sibling at a
    time, from the calibrated joint over leaves and the level's noise rate spread evenly."""
    leaves = [tuple(p) for p in tax.leaf_index_paths()]
    cal = calibrated_by_hand(probs, s.temperatures)
    out = np.full(given.shape, np.nan)
    for i in range(len(given)):
        path = [int(v) for v in given[i] if v >= 0]
        joint = np.array(
            [np.prod([cal[lvl][i, n] for lvl, n in enumerate(leaf)]) for leaf in leaves]
        )
        for lvl, node in enumerate(path):
            siblings = [
                c for c in range(tax.sizes[lvl]) if lvl == 0 or tax.parents[lvl][c] == path[lvl - 1]
            ]
            if len(siblings) < 2:
                out[i, lvl] = 0.0
                continue
            mass = {  # joint mass under each sibling, below the given parents
                c: sum(
                    joint[j]
                    for j, leaf in enumerate(leaves)
                    if len(leaf) > lvl and list(leaf[:lvl]) == path[:lvl] and leaf[lvl] == c
                )
                for c in siblings
            }
            right = mass[node] / sum(mass.values())
            rate = min(s.noise_rates[lvl], 0.9)
            wrong = (1 - right) * rate / (len(siblings) - 1)
            out[i, lvl] = wrong / (wrong + right * (1 - rate))
    return out


def three_level_tree() -> tuple[Taxonomy, np.ndarray, list]:
    tax = Taxonomy.from_paths(sorted(LEAVES))
    leaves = [tuple(p) for p in tax.leaf_index_paths()]
    return tax, np.array([list(p) for p in leaves]), leaves


def test_sibling_swap_is_not_diluted_and_an_unsure_branch_is_not_an_error() -> None:
    """Upper levels sure and agreeing, articleType sure of a sibling: the score is near 1. The
    branch in doubt but the given path the likeliest: the score stays low."""
    from fashion_tagger.curation.scoring import noise_posterior

    tax, paths, leaves = three_level_tree()
    index = [tuple(p) for p in paths]
    tops = index.index(tuple(tax.encode(("Apparel", "Topwear", "Tops"))))
    tee = index.index(tuple(tax.encode(("Apparel", "Topwear", "Tshirts"))))
    rates = [0.01, 0.02, 0.1]
    joint = np.full((2, len(leaves)), 1e-6)
    joint[0, tops] = 1.0  # a Tops photo labelled Tshirts: only the leaf level disagrees
    joint[1, tee] = 0.5  # a Tshirts photo the model half puts in another branch
    joint[1, [j for j, p in enumerate(leaves) if p[0] != leaves[tee][0]]] = 0.5 / 6
    joint /= joint.sum(axis=1, keepdims=True)
    given = paths[[tee, tee]]
    wrong = noise_posterior(tax, given, joint, rates)
    assert wrong[0] > 0.99 and wrong[1] < 0.05
    assert np.all(noise_posterior(tax, given, joint, [0, 0, 0]) == 0)  # no noise, no errors


def test_calibrate_softens_overconfident_heads() -> None:
    from fashion_tagger.curation.scoring import calibrate

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 500)
    logits = rng.normal(size=(500, 4))
    logits[np.arange(500), truth] += 1.0
    labels = np.where(rng.random(500) < 0.8, truth, rng.integers(0, 4, 500))
    sharp = np.exp(6 * logits)
    sharp /= sharp.sum(axis=1, keepdims=True)  # six times too sure of itself
    cal, t = calibrate(sharp, labels)
    assert t > 2 and np.allclose(cal.sum(axis=1), 1)
    assert np.array_equal(cal.argmax(axis=1), sharp.argmax(axis=1))  # ranks within a row kept
    nll = lambda p: -np.log(p[np.arange(500), labels]).mean()  # noqa: E731
    assert nll(cal) < nll(sharp)
    same, t1 = calibrate(sharp[:1], labels[:1])  # one row: nothing to fit
    assert t1 == 1.0 and np.array_equal(same, sharp[:1])


@pytest.mark.parametrize("hidden", [0, 32])
def test_fit_oof_learns_clusters_out_of_fold(hidden: int) -> None:
    from fashion_tagger.curation.scoring import fit_oof

    feats, paths, _, _ = clustered(300, noise=1.0, flip=0.0, seed=5)
    leaf = np.array([LEAVES.index(p) for p in paths])
    folds = item_folds([str(i) for i in range(300)], [str(v) for v in leaf], 3)
    cfg = HeadConfig(hidden=hidden, epochs=15)
    (probs,) = fit_oof(feats, [leaf], [len(LEAVES)], folds, cfg)
    assert probs.shape == (300, len(LEAVES)) and np.allclose(probs.sum(axis=1), 1)
    assert (probs.argmax(axis=1) == leaf).mean() > 0.9


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 12), min_size=1, max_size=60),
    st.integers(2, 6),
    st.integers(0, 5),
)
def test_item_folds_keep_items_together(item_of_row, k, seed) -> None:
    items = [f"i{v}" for v in item_of_row]
    strata = [f"s{v % 3}" for v in item_of_row]
    folds = item_folds(items, strata, k, seed)
    assert folds.min() >= 0 and folds.max() < k
    for item in set(items):
        assert len({folds[j] for j, it in enumerate(items) if it == item}) == 1
    assert np.array_equal(folds, item_folds(items, strata, k, seed))  # same rows, same folds


# -- the command line -------------------------------------------------------------------------
def test_audit_command_reuses_a_run_backbone(tmp_path: Path) -> None:
    """The CLI end to end with `--run`: the run's backbone and preprocessing embed the photos."""
    import shutil

    from run_fixtures import shared_tiny_run
    from typer.testing import CliRunner

    from fashion_tagger.cli import app

    run_dir, dataset_dir = shared_tiny_run()
    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data)
    args = ["audit", str(data), "--run", str(run_dir), "--folds", "3", "--no-progress"]
    out = CliRunner().invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    n = len(Dataset.open(data))
    assert report["rows"] == n and report["embedded_now"] == n
    assert report["backbone"].startswith("simple-cnn (run ")
    assert sum(report["by_kind"].values()) == report["issues"]
    assert read_issues(data).num_rows == n
    again = CliRunner().invoke(app, args)  # features now come from the cache
    assert again.exit_code == 0 and "0 images embedded now" in again.output
    assert "issues by kind" in again.output
    # --level: a level of the taxonomy scores by it; another is a user error (`main` prints it
    # in one line) naming the levels, before any work, and the issues file stays as it was
    before = (data / "label_issues.parquet").read_bytes()
    bad = CliRunner().invoke(app, [*args, "--level", "articleType"])
    assert isinstance(bad.exception, AuditError)
    assert "its levels: shape, colour" in str(bad.exception)
    assert (data / "label_issues.parquet").read_bytes() == before
    level = Dataset.open(data).taxonomy.level_names[-1]
    by_level = CliRunner().invoke(app, [*args, "--level", level, "--json"])
    assert by_level.exit_code == 0, by_level.output
    assert issues_settings(read_issues(data))["level"] == level

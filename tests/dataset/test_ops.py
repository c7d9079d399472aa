"""dataset split / dedup / filter: item grouping, stratification, leakage removal, history."""

import hashlib
import io
import json
import sys
from collections import Counter, defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from fashion_tagger.cli import app, main
from fashion_tagger.dataset import manifest, store
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.dedup import PHASH_FILE, dedup, near_pairs
from fashion_tagger.dataset.ops import (
    _item_classes,
    filter_dataset,
    filter_steps,
    parse_where,
    relocate,
    split,
)
from fashion_tagger.errors import DatasetError

LEVELS = ["masterCategory", "subCategory", "articleType"]


def products_like(root, leaf_items=(1, 2, 3, 4, 6, 9, 40), photos=(1, 1, 2, 3)):
    """A kaggle-products-like manifest (3 levels, several photos per item); images not stored."""
    rows = []
    for k, n_items in enumerate(leaf_items):
        path = ["Apparel" if k % 2 else "Footwear", f"Sub{k % 3}", f"Article{k}"]
        for j in range(n_items):
            item = f"leaf{k}-item{j}"
            for p in range(photos[j % len(photos)]):
                sha = hashlib.sha256(f"{item}/{p}".encode()).hexdigest()
                rows.append(
                    {
                        "image": store.relpath(sha, "jpg"),
                        "sha256": sha,
                        "item_id": item,
                        "labels": path,
                        "attributes": ["season=Summer"],
                    }
                )
    # One item whose photos carry two leaves: 2 x Article6, 1 x Article5.
    for p, leaf in enumerate(["Article6", "Article6", "Article5"]):
        sha = hashlib.sha256(f"mixed/{p}".encode()).hexdigest()
        sub = "Sub0" if leaf == "Article6" else "Sub2"
        rows.append(
            {
                "image": store.relpath(sha, "jpg"),
                "sha256": sha,
                "item_id": "mixed",
                "labels": ["Footwear" if leaf == "Article6" else "Apparel", sub, leaf],
            }
        )
    return Dataset.create(
        root, manifest.rows_to_table(rows), {"name": "products", "levels": LEVELS}
    )


def _png(seed: int, shift: int = 0) -> bytes:
    """A distinct 64x64 picture per seed; `shift` brightens it slightly (a near duplicate)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 200, (8, 8, 3), dtype=np.uint8) + np.uint8(shift)
    img = Image.fromarray(small).resize((64, 64), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def with_images(root, specs):
    """A dataset of real images: specs are (picture bytes, item_id, leaf, split)."""
    rows = []
    for data, item, leaf, sp in specs:
        sha = hashlib.sha256(data).hexdigest()
        rows.append(
            {
                "image": store.put(root, sha, "png", data),
                "sha256": sha,
                "item_id": item,
                "labels": ["Apparel", leaf],
                "split": sp,
                "width": 64,
                "height": 64,
            }
        )
    return Dataset.create(root, manifest.rows_to_table(rows), {"name": "pics"})


def _col(ds, name):
    return ds.table.column(name).to_pylist()


# -- split ------------------------------------------------------------------------------------
def test_split_stratified_grouped_and_every_leaf_in_val(tmp_path):
    ds, result = split(products_like(tmp_path), val=0.15, test=0.15, seed=0)
    splits, items, labels = _col(ds, "split"), _col(ds, "item_id"), _col(ds, "labels")
    assert set(splits) == {"train", "val", "test"}
    per_item = defaultdict(set)
    for item, s in zip(items, splits, strict=True):
        per_item[item].add(s)
    assert all(len(s) == 1 for s in per_item.values()), "an item was separated"

    leaf_items = defaultdict(set)
    leaf_splits = defaultdict(set)
    for item, path, s in zip(items, labels, splits, strict=True):
        if item != "mixed":
            leaf_items[path[-1]].add(item)
            leaf_splits[path[-1]].add(s)
    for leaf, its in leaf_items.items():
        if len(its) >= 2:
            assert "val" in leaf_splits[leaf], leaf
        if len(its) >= 3:
            assert "test" in leaf_splits[leaf], leaf
        assert "train" in leaf_splits[leaf], leaf
    # The 40-item leaf gets about 15% of its items in val and test each.
    big = Counter(next(iter(per_item[i])) for i in leaf_items["Article6"])
    assert big["val"] == 6 and big["test"] == 6
    assert result.assigned_images == len(ds) and result.kept_images == 0
    assert sum(c["images"] for c in result.counts.values()) == len(ds)


def test_split_is_deterministic_for_a_seed(tmp_path):
    base = products_like(tmp_path)
    a, _ = split(base, 0.2, 0.1, seed=3)
    b, _ = split(base, 0.2, 0.1, seed=3)
    c, _ = split(base, 0.2, 0.1, seed=4)
    assert a.table.column("split").equals(b.table.column("split"))
    assert _col(a, "split") != _col(c, "split")
    a.save()
    first = pq.read_table(tmp_path / manifest.ITEMS_FILE).column("split")
    split(Dataset.open(tmp_path), 0.2, 0.1, seed=3, force=True)[0].save()
    assert pq.read_table(tmp_path / manifest.ITEMS_FILE).column("split").equals(first)


def test_split_keeps_existing_splits_unless_forced(tmp_path):
    ds = products_like(tmp_path)
    splits = _col(ds, "split")
    items = _col(ds, "item_id")
    # leaf6 item0 has its first photo in test already; its other photos must follow it.
    first = items.index("leaf6-item2")
    splits[first] = "test"
    splits[0] = "val"
    ds = ds.with_table(ds.table.set_column(5, "split", [splits]))
    out, result = split(ds, 0.1, 0.1, seed=0)
    new = _col(out, "split")
    assert new[0] == "val"
    assert {s for s, i in zip(new, items, strict=True) if i == "leaf6-item2"} == {"test"}
    assert result.kept_images == 2 and result.assigned_images == len(ds) - 2
    _, result = split(ds, 0.1, 0.1, seed=0, force=True)
    assert result.forced and result.kept_images == 0


def test_split_carves_val_from_train_when_test_exists_and_val_does_not(tmp_path):
    specs = [(_png(i), f"i{i}", "A" if i % 2 else "B", "test" if i < 6 else "train")
             for i in range(30)]  # fmt: skip
    specs += [(_png(100), "i7", "A", ""), (_png(101), "new", "A", "")]  # unsplit photos
    ds = with_images(tmp_path, specs)
    out, r = split(ds, val=0.25, test=0.1, seed=0)
    before, after = _col(ds, "split"), _col(out, "split")
    assert [a for b, a in zip(before, after, strict=True) if b == "test"] == ["test"] * 6
    assert r.val_from_train == sum(1 for b, a in zip(before, after, strict=True) if b != a and b)
    assert r.val_from_train == 6  # 12 train items per leaf x 0.25, per leaf
    items = _col(out, "item_id")
    by_item = defaultdict(set)
    for item, s in zip(items, after, strict=True):
        by_item[item].add(s)
    assert all(len(v) == 1 for v in by_item.values())  # i7's unsplit photo followed its item
    assert after[-1] in ("train", "val", "test")
    assert out.info.history[-1]["result"]["val_from_train"] == 6
    again, _ = split(ds, val=0.25, test=0.1, seed=0)
    assert _col(again, "split") == after  # deterministic
    # once val exists, nothing moves; --force re-splits everything as before
    assert split(out, val=0.25, test=0.1)[1].val_from_train == 0
    assert split(ds, val=0.25, test=0.1, force=True)[1].val_from_train == 0
    assert split(ds, val=0.0, test=0.1)[1].val_from_train == 0


@pytest.mark.parametrize(("val", "test"), [(0.6, 0.5), (-0.1, 0.1), (0.2, 1.0), (0.5, 0.5)])
def test_split_rejects_bad_fractions(tmp_path, val, test):
    with pytest.raises(DatasetError, match=r"--val|--test"):
        split(products_like(tmp_path), val, test)


def test_item_class_is_its_most_common_leaf():
    a, b = ("A", "x"), ("A", "y")
    assert _item_classes(["m", "m", "m", "n", "n"], [b, a, b, a, b]) == {"m": b, "n": a}


def test_split_cli_prints_counts_and_json(tmp_path):
    products_like(tmp_path)
    res = CliRunner().invoke(
        app, ["dataset", "split", str(tmp_path), "--val", "0.15", "--test", "0.15"]
    )
    assert res.exit_code == 0, res.output
    assert "assigned" in res.output and "train" in res.output
    res = CliRunner().invoke(app, ["dataset", "split", str(tmp_path), "--json"])
    out = json.loads(res.output)
    assert out["assigned_images"] == 0 and out["kept_images"] == len(Dataset.open(tmp_path))
    info = json.loads((tmp_path / manifest.INFO_FILE).read_text())
    assert [h["op"] for h in info["history"]] == ["split", "split"]
    res = CliRunner().invoke(
        app, ["dataset", "split", str(tmp_path), "--val", "0.7", "--test", "0.3"]
    )
    assert res.exit_code != 0 and isinstance(res.exception, DatasetError)


# -- dedup ------------------------------------------------------------------------------------
def test_dedup_exact_cross_split_and_same_item(tmp_path):
    specs = [(_png(i), f"i{i}", "Shirt", "train") for i in range(5)]
    specs += [
        (_png(0), "v0", "Shirt", "val"),  # train photo copied into val: leakage
        (_png(1), "i1", "Shirt", "train"),  # the same item's photo twice: keep one
        (_png(2), "other", "Shirt", "train"),  # two items share a photo: report only
        (_png(9), "v9", "Shirt", "val"),
    ]
    ds = with_images(tmp_path, specs)
    out, result = dedup(ds)
    assert result.exact_pairs == 3 and result.cross_split_pairs == 1
    assert result.removed == 2 and result.removed_by_split == {"train": 1, "val": 1}
    assert len(out) == len(ds) - 2
    assert sorted(_col(out, "item_id")).count("i1") == 1
    assert "v0" not in _col(out, "item_id") and "other" in _col(out, "item_id")
    assert out.info.history[-1]["op"] == "dedup"
    out.save()
    assert Dataset.open(tmp_path).missing_images() == []  # files stay in the store


def test_dedup_near_finds_brightened_copy_and_caches_hashes(tmp_path):
    specs = [(_png(i), f"t{i}", "Shirt", "train") for i in range(6)]
    specs += [(_png(3, shift=6), "x3", "Shirt", "test"), (_png(20), "t20", "Shirt", "test")]
    ds = with_images(tmp_path, specs)
    assert dedup(ds)[1].removed == 0  # different bytes: not an exact duplicate
    dry, result = dedup(ds, near=4, dry_run=True, workers=1, progress=False)
    assert dry is ds and result.near_pairs == 1 and result.removed == 1
    assert result.pairs[0]["b"]["item_id"] == "x3" and result.pairs[0]["distance"] <= 4
    assert result.hashed_now == 8 and (tmp_path / PHASH_FILE).is_file()
    out, again = dedup(ds, near=4, workers=1, progress=False)
    assert again.hashed_now == 0
    assert "x3" not in _col(out, "item_id") and len(out) == 7


def test_near_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 400, dtype=np.uint64) * np.uint64(2) + rng.integers(
        0, 2, 400
    ).astype(np.uint64)
    for k in range(0, 40, 2):  # plant near duplicates: flip up to 5 bits
        flips = rng.choice(64, size=k % 6, replace=False)
        h[k + 1] = h[k] ^ np.uint64(sum(1 << int(b) for b in flips))
    dist = np.bitwise_count(h[:, None] ^ h[None, :])
    for bits in (0, 3, 5, 10):
        ii, jj = np.nonzero(np.triu(dist <= bits, k=1))
        brute = [(int(i), int(j), int(dist[i, j])) for i, j in zip(ii, jj, strict=True)]
        assert len(brute) >= 7  # the planted pairs at least
        assert near_pairs(h, bits) == brute


def test_dedup_cli_json(tmp_path):
    with_images(tmp_path, [(_png(0), "a", "Shirt", "train"), (_png(0), "b", "Shirt", "val")])
    res = CliRunner().invoke(app, ["dataset", "dedup", str(tmp_path), "--dry-run", "--json"])
    out = json.loads(res.output)
    assert out["removed"] == 1 and out["dry_run"] and len(out["pairs"]) == 1
    assert len(Dataset.open(tmp_path)) == 2
    res = CliRunner().invoke(app, ["dataset", "dedup", str(tmp_path)])
    assert "removed 1 rows (val 1)" in res.output
    assert _col(Dataset.open(tmp_path), "item_id") == ["a"]


# -- filter -----------------------------------------------------------------------------------
def _images_per_leaf(ds):
    return Counter(tuple(p) for p in ds.labels)


def test_filter_min_and_cap(tmp_path):
    ds = products_like(tmp_path)
    out, result = filter_dataset(ds, min_per_class=5)
    assert min(_images_per_leaf(out).values()) >= 5
    assert result.dropped_classes == [
        "Apparel > Sub1 > Article1",
        "Footwear > Sub0 > Article0",
        "Footwear > Sub2 > Article2",
    ]
    assert result.images_after == len(ds) - 1 - 2 - 4
    assert result.classes_after < result.classes_before
    capped, r = filter_dataset(ds, max_per_class=10, seed=1)
    sizes = _images_per_leaf(capped)
    assert r.capped_classes >= 1 and max(sizes.values()) <= 10
    per_item = Counter(_col(capped, "item_id"))
    full = Counter(_col(ds, "item_id"))
    assert all(per_item[i] == full[i] for i in per_item), "capping split an item"
    ratio, r = filter_dataset(ds, cap_ratio=1.0)
    mean = len(ds) / len(_images_per_leaf(ds))
    assert r.cap == int(mean) and max(_images_per_leaf(ratio).values()) <= r.cap


def test_filter_sample_is_stratified_deterministic_and_by_item(tmp_path):
    ds = products_like(tmp_path, leaf_items=(4, 8, 16, 32, 60), photos=(1, 2))
    a, result = filter_dataset(ds, sample=40, seed=7)
    b, _ = filter_dataset(ds, sample=40, seed=7)
    assert a.table.equals(b.table)
    # Whole items only: a class whose quota is 1 image still takes one (maybe 3-photo) item.
    assert 37 <= len(a) <= 43 and result.sampled
    leaves = _images_per_leaf(a)
    assert len(leaves) == len(_images_per_leaf(ds))  # every leaf kept
    big, small = leaves[("Footwear", "Sub1", "Article4")], leaves[("Footwear", "Sub0", "Article0")]
    assert big > 3 * small
    full = Counter(_col(ds, "item_id"))
    assert all(full[i] == n for i, n in Counter(_col(a, "item_id")).items())


def test_filter_level_and_errors(tmp_path):
    ds = products_like(tmp_path)
    out, r = filter_dataset(ds, max_per_class=30, level="masterCategory")
    assert r.classes_before == 2 and max(Counter(p[0] for p in out.labels).values()) <= 30
    with pytest.raises(DatasetError, match="not a level"):
        filter_dataset(ds, sample=5, level="brand")
    with pytest.raises(DatasetError, match="not both"):
        filter_dataset(ds, max_per_class=3, cap_ratio=2)
    with pytest.raises(DatasetError, match="nothing to do"):
        filter_dataset(ds)
    with pytest.raises(DatasetError, match="leaves no image"):
        filter_dataset(ds, min_per_class=10_000)


def test_filter_out_writes_new_dir_with_only_its_images(tmp_path):
    src = with_images(
        tmp_path / "src", [(_png(i), f"i{i}", "A" if i < 4 else "B", "") for i in range(6)]
    )
    res = CliRunner().invoke(
        app,
        [
            "dataset",
            "filter",
            str(src.root),
            "--min-per-class",
            "3",
            "--out",
            str(tmp_path / "dst"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["images_after"] == 4
    dst = Dataset.open(tmp_path / "dst")
    assert len(dst) == 4 and dst.missing_images() == []
    assert len(list((tmp_path / "dst" / "images").rglob("*.png"))) == 4
    assert dst.info.history[-1]["op"] == "filter"
    assert dst.info.history[-1]["args"]["min_per_class"] == 3
    assert len(Dataset.open(tmp_path / "src")) == 6  # the source is untouched
    with pytest.raises(DatasetError, match="already holds"):
        relocate(src, tmp_path / "dst")


# -- filter --where -----------------------------------------------------------------------------
def footwear_like(root):
    """Rows with levels, gender and colour attributes and a meta key, images not stored."""
    rows = []
    spec = [
        ("Footwear", "Shoes", "Men", "Black", 5),
        ("Footwear", "Shoes", "Women", "Pink", 4),
        ("Footwear", "Sandal", "Women", "Black", 3),
        ("Footwear", "Sandal", "Unisex", "Brown", 2),
        ("Apparel", "Topwear", "Men", "Pink", 6),
    ]
    for k, (master, sub, gender, colour, n) in enumerate(spec):
        for j in range(n):
            sha = hashlib.sha256(f"{k}/{j}".encode()).hexdigest()
            rows.append(
                {
                    "image": store.relpath(sha, "jpg"),
                    "sha256": sha,
                    "item_id": f"{k}-{j}",
                    "labels": [master, sub],
                    "attributes": [f"gender={gender}", f"colour={colour}", "season=Summer"],
                    "meta": json.dumps({"year": 2010 + j % 2, "title": f"t{k}{j}"}),
                }
            )
    return Dataset.create(
        root, manifest.rows_to_table(rows), {"name": "fw", "levels": ["master", "sub"]}
    )


def test_filter_where_keeps_rows_matching_every_condition(tmp_path):
    ds = footwear_like(tmp_path)
    out, r = filter_dataset(ds, where=[("master", ["Footwear"]), ("gender", ["Men", "Women"])])
    assert len(out) == 12 and r.dropped_by_where == len(ds) - 12
    assert {p[0] for p in out.labels} == {"Footwear"}
    genders = {a for attrs in _col(out, "attributes") for a in attrs if a.startswith("gender")}
    assert genders == {"gender=Men", "gender=Women"}
    assert out.info.history[-1]["args"]["where"] == [
        ["master", ["Footwear"]],
        ["gender", ["Men", "Women"]],
    ]
    # a meta key and a level deeper than the root; combined with a later step
    by_year, _ = filter_dataset(ds, where=[("year", ["2011"])])
    assert len(by_year) == 2 + 2 + 1 + 1 + 3
    both, r = filter_dataset(ds, where=[("sub", ["Shoes", "Sandal"])], min_per_class=5)
    assert Counter(p[1] for p in both.labels) == {"Shoes": 9, "Sandal": 5}


def test_filter_where_errors_list_what_the_dataset_has(tmp_path):
    ds = footwear_like(tmp_path)
    with pytest.raises(DatasetError, match=r"'genre'.*known names: master, sub, colour, gender"):
        filter_dataset(ds, where=[("genre", ["Men"])])
    with pytest.raises(DatasetError, match=r"did you mean 'Men'.*Men \(11\)"):
        filter_dataset(ds, where=[("gender", ["men"])])
    with pytest.raises(DatasetError, match="not all together"):
        filter_dataset(ds, where=[("master", ["Apparel"]), ("gender", ["Women"])])
    for bad in ("gender", "gender=", "=Men", "gender= , "):
        with pytest.raises(DatasetError, match="NAME=VALUE"):
            parse_where([bad])
    assert parse_where(["gender=Men, Women,Men", "colour=Navy Blue"]) == (
        ("gender", ("Men", "Women")),
        ("colour", ("Navy Blue",)),
    )


def run_main(monkeypatch, capsys, *args):
    """The real entry point: (exit code, stderr); user errors must be one line, no traceback."""
    monkeypatch.setattr(sys, "argv", ["fashion-tagger", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return exc.value.code, err


def test_filter_cli_where_in_place_and_one_line_errors(tmp_path, monkeypatch, capsys):
    ds = footwear_like(tmp_path)
    args = ["dataset", "filter", str(ds.root)]
    code, err = run_main(monkeypatch, capsys, *args, "--where", "colour=Teal")
    assert code == 2 and "no row has colour 'Teal'" in err and "Pink (10)" in err
    assert len(Dataset.open(ds.root)) == 20
    code, err = run_main(monkeypatch, capsys, *args, "--where", "colour=Pink", "--min-score", "1")
    assert code == 2 and "--min-score goes with --drop-issues" in err
    code, err = run_main(monkeypatch, capsys, *args, "--drop-issues", "--out", str(tmp_path / "x"))
    assert code == 2 and "works in place" in err
    res = CliRunner().invoke(app, [*args, "--where", "colour=Pink", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["images_after"] == 10
    assert len(Dataset.open(ds.root)) == 10  # in place without --out


@pytest.mark.parametrize(
    ("out", "drop", "score", "rows", "expected"),
    [
        (None, False, None, True, True),
        (None, False, None, False, True),  # filter_dataset then says "nothing to do"
        (None, True, None, False, False),
        (None, True, 0.5, True, True),
        ("x", False, None, True, True),
    ],
)
def test_filter_steps(out, drop, score, rows, expected):
    assert filter_steps(out=out, drop_issues=drop, min_score=score, row_filters=rows) is expected

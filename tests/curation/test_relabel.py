"""`relabel` applies a review's decisions without losing labels; `drop_issues` drops the rest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashion_tagger.curation.relabel import (
    DecisionsError,
    drop_issues,
    relabel,
    write_issues,
)
from fashion_tagger.dataset import store
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.manifest import rows_to_table
from fashion_tagger.errors import DatasetError

LEVELS = ["masterCategory", "subCategory", "articleType"]
TRUE = [
    ["Apparel", "Topwear", "Tshirts"],
    ["Apparel", "Topwear", "Shirts"],
    ["Apparel", "Bottomwear", "Jeans"],
    ["Footwear", "Shoes", "Casual Shoes"],
    ["Footwear", "Shoes", "Heels"],
    ["Accessories", "Bags", "Handbags"],
]
NOISY = {1: TRUE[0], 3: TRUE[4], 5: TRUE[2]}  # row -> the wrong label it carries


def make(root: Path, labels: list[list[str]]) -> Dataset:
    rows = []
    for i, p in enumerate(labels):
        data = f"image {i}".encode()
        sha = hashlib.sha256(data).hexdigest()
        rel = store.put(root, sha, "jpg", data)
        rows.append(
            {"image": rel, "sha256": sha, "item_id": f"it{i}", "labels": p, "meta": '{"t": 1}'}
        )
    return Dataset.create(root, rows_to_table(rows), {"name": "noisy", "levels": LEVELS})


@pytest.fixture
def noisy(tmp_path: Path) -> Dataset:
    labels = [NOISY.get(i, p) for i, p in enumerate(TRUE)]
    return make(tmp_path / "ds", labels)


def accept_originals(ds: Dataset) -> list[dict]:
    images = ds.table.column("image").to_pylist()
    return [
        {"image": images[i], "item_id": f"it{i}", "decision": "accept", "labels": TRUE[i]}
        for i in NOISY
    ]


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (root / "items.parquet", root / "dataset.json")}


def test_relabel_restores_labels_keeps_history_and_reruns_as_noop(
    noisy: Dataset, tmp_path: Path
) -> None:
    decisions = accept_originals(noisy)
    decisions.append({"image": noisy.table.column("image")[0].as_py(), "decision": "reject"})
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps(decisions))

    result = relabel(noisy.root, path)
    assert (result.accepted, result.rejected, result.changed, result.unchanged) == (3, 1, 3, 0)
    # no row carried these paths before (the noise replaced them all): the review restores them
    assert result.new_paths == sorted(TRUE[i] for i in NOISY)
    ds = Dataset.open(noisy.root)
    assert ds.labels == TRUE
    for i, wrong in NOISY.items():
        meta = ds.meta(i)
        assert meta["t"] == 1  # the rest of meta is kept
        assert meta["label_history"] == [
            {"labels": wrong, "change_set": result.change_set, "at": meta["review"]["at"]}
        ]
        assert meta["review"]["decision"] == "accept"
    assert ds.meta(0)["review"]["decision"] == "reject" and "label_history" not in ds.meta(0)
    assert "review" not in ds.meta(2)
    sets = ds.info.extra["change_sets"]
    assert [c["id"] for c in sets] == [result.change_set] and len(result.change_set) == 64
    assert sets[0]["counts"]["changed"] == 3
    assert ds.info.history[-1]["op"] == "relabel"

    before = snapshot(noisy.root)
    again = relabel(noisy.root, path)
    assert again.already_applied and again.changed == 0
    assert snapshot(noisy.root) == before  # not even rewritten


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"a": 1}', "JSON list"),
        ('[{"decision": "accept"}]', "`image` string"),
        ('[{"image": "IMG", "decision": "maybe"}]', "accept or reject"),
        ('[{"image": "nope.jpg", "decision": "reject"}]', "no row has image"),
        ('[{"image": "IMG", "item_id": "other", "decision": "reject"}]', "item_id 'other'"),
        ('[{"image": "IMG", "decision": "accept"}]', "needs `labels`"),
        ('[{"image": "IMG", "decision": "accept", "labels": ["Apparel", ""]}]', "list of names"),
    ],
)
def test_malformed_decisions_raise_and_leave_dataset_untouched(
    noisy: Dataset, tmp_path: Path, content: str, message: str
) -> None:
    image = noisy.table.column("image")[1].as_py()
    good = {"image": image, "decision": "accept", "labels": TRUE[1]}
    path = tmp_path / "d.json"
    # a good decision first: nothing may be applied when a later one is bad
    body = content.replace("IMG", image)
    if body.startswith("[{"):
        body = "[" + json.dumps(good) + "," + body[1:]
    path.write_text(body)
    before = snapshot(noisy.root)
    with pytest.raises(DecisionsError, match=message):
        relabel(noisy.root, path)
    assert snapshot(noisy.root) == before
    with pytest.raises(DecisionsError, match="does not exist"):
        relabel(noisy.root, tmp_path / "missing.json")


def issues_for(ds: Dataset, flagged: dict[int, float]) -> pa.Table:
    images = ds.table.column("image").to_pylist()
    return pa.Table.from_pylist(
        [
            {
                "item_id": f"it{i}",
                "image": images[i],
                "given": ds.labels[i],
                "suggested": TRUE[i],
                "score": flagged.get(i, 0.05),
                "kind": "label" if i in flagged else "ok",
                "level": "articleType" if i in flagged else None,
                "is_issue": i in flagged,
            }
            for i in range(len(ds))
        ]
    )


def test_drop_issues_skips_decided_rows_and_records_it(noisy: Dataset) -> None:
    write_issues(noisy.root, issues_for(noisy, {1: 0.9, 3: 0.6, 5: 0.95}))
    relabel(noisy.root, accept_originals(noisy)[:1])  # row 1 reviewed: it stays
    result = drop_issues(noisy.root, min_score=0.8)
    assert (result.dropped, result.kept_decided, result.images_after) == (1, 1, 5)
    ds = Dataset.open(noisy.root)
    assert "it5" not in ds.table.column("item_id").to_pylist()
    assert ds.info.history[-1]["op"] == "drop_issues"
    assert drop_issues(noisy.root).dropped == 1  # row 3 (0.6) once the floor is gone
    assert drop_issues(noisy.root).dropped == 0
    with pytest.raises(DatasetError, match="--min-score"):
        drop_issues(noisy.root, min_score=2.0)


def test_drop_issues_needs_an_audit(noisy: Dataset) -> None:
    with pytest.raises(DatasetError, match="fashion-tagger audit"):
        drop_issues(noisy.root)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.booleans()), max_size=8))
def test_relabel_property_every_accept_lands_and_history_grows(tmp_path_factory, picks) -> None:
    """Any set of decisions: accepted rows end with the new path (the last decision on a row
    wins), each change adds one history entry holding the previous path, nothing else moves."""
    ds = make(tmp_path_factory.mktemp("p"), TRUE)
    images = ds.table.column("image").to_pylist()
    decisions = [
        {"image": images[r], "decision": "accept" if ok else "reject", "labels": TRUE[t]}
        for r, t, ok in picks
    ]
    relabel(ds.root, decisions)
    out = Dataset.open(ds.root)
    expected = [list(p) for p in TRUE]
    changes = [0] * len(TRUE)
    for r, t, ok in picks:
        if ok and expected[r] != TRUE[t]:
            expected[r] = TRUE[t]
            changes[r] += 1
    assert out.labels == expected
    for i in range(len(TRUE)):
        assert len(out.meta(i).get("label_history", [])) == changes[i]


def test_relabel_and_drop_issues_commands(noisy: Dataset, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fashion_tagger.cli import app

    path = tmp_path / "decisions.json"
    path.write_text(json.dumps(accept_originals(noisy)))
    run = CliRunner().invoke(app, ["dataset", "relabel", str(noisy.root), "--decisions", str(path)])
    assert run.exit_code == 0 and "3 rows relabelled" in run.output
    again = CliRunner().invoke(
        app, ["dataset", "relabel", str(noisy.root), "--decisions", str(path), "--json"]
    )
    assert json.loads(again.stdout)["already_applied"] is True
    write_issues(noisy.root, issues_for(Dataset.open(noisy.root), {0: 0.9, 1: 0.9}))
    drop = CliRunner().invoke(
        app, ["dataset", "filter", str(noisy.root), "--drop-issues", "--json"]
    )
    assert json.loads(drop.stdout)["dropped"] == 1  # row 1 was reviewed, row 0 was not


def test_relabel_without_a_file_applies_the_decisions_the_review_stored(noisy: Dataset) -> None:
    from fashion_tagger.curation.journal import Decision, Journal

    with pytest.raises(DecisionsError, match="fashion-tagger review"):
        relabel(noisy.root)  # nothing stored yet: says how to store some
    images = noisy.table.column("image").to_pylist()
    j = Journal(noisy.root)
    for i in NOISY:
        j.append(Decision(images[i], "accept", item_id=f"it{i}", labels=tuple(TRUE[i])))
    j.append(Decision(images[0], "reject", labels=tuple(TRUE[0])))
    j.append(Decision(images[1], "reject", labels=tuple(NOISY[1])))  # changed its mind
    result = relabel(noisy.root)
    assert (result.accepted, result.rejected, result.changed) == (2, 2, 2)
    ds = Dataset.open(noisy.root)
    assert ds.labels == [NOISY.get(i, p) if i == 1 else p for i, p in enumerate(TRUE)]
    assert ds.meta(1)["review"]["decision"] == "reject" and "label_history" not in ds.meta(1)
    assert relabel(noisy.root).already_applied  # the same stored decisions, the same change set

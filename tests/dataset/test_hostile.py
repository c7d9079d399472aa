"""A dataset dir is untrusted input: hostile paths in items.parquet and damaged fields in either
file end in one `DatasetError` naming the file, never in a read outside the dataset dir or a
traceback from deep inside a stage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashion_tagger.dataset import manifest
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError

from .test_core import _make

HOSTILE_PATHS = [
    "../../../x.txt",
    "/etc/passwd",
    "images/../../outside.png",
    "images/ab/../../../../etc/passwd",
    "images/00/" + "0" * 64 + ".png",  # a well-formed store path, but another row's file
    "images//" + "a" * 64 + ".png",
    "IMAGES/aa/" + "a" * 64 + ".png",
    "",
    "images/aa/" + "a" * 64 + ".png/../../../x",
]

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tpl") / "ds"
    root.mkdir()
    _make(root)
    return root


def _copy(template: Path, tmp: Path) -> Path:
    out = tmp / "ds"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(template, out)
    return out


def _set_cell(root: Path, column: str, row: int, value: object) -> None:
    """Write `value` into one cell of items.parquet, as a hand edit of the file would."""
    table = pq.read_table(root / manifest.ITEMS_FILE)
    values = table.column(column).to_pylist()
    values[row] = value
    try:
        new = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: as text, as a careless tool would
        new = pa.array([None if v is None else str(v) for v in values])
    table = table.set_column(table.schema.get_field_index(column), column, new)
    pq.write_table(table, root / manifest.ITEMS_FILE)


def _set_image(root: Path, row: int, value: str) -> None:
    _set_cell(root, "image", row, value)


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_a_path_outside_the_store_is_refused_naming_the_row(template, tmp_path, path):
    root = _copy(template, tmp_path)
    _set_image(root, 2, path)
    with pytest.raises(DatasetError, match=r"items\.parquet row 2: image"):
        Dataset.open(root)


@SETTINGS
@given(
    prefix=st.sampled_from(["", "images/", "images/aa/", "/", "../", "./"]),
    middle=st.text(alphabet="abcdef0123456789./\\_-~%", max_size=80),
    ext=st.sampled_from(["png", "jpg", "", "txt/../..", "PNG"]),
)
def test_any_image_path_opens_only_as_the_rows_own_store_file(
    template, tmp_path, prefix, middle, ext
):
    root = _copy(template, tmp_path)
    sha = pq.read_table(root / manifest.ITEMS_FILE).column("sha256")[1].as_py()
    path = prefix + middle + (f".{ext}" if ext else "")
    _set_image(root, 1, path)
    try:
        ds = Dataset.open(root)
    except DatasetError as exc:
        assert "row 1: image" in str(exc)
        return
    # it opened: then row 1 names exactly its own file in the store, inside the dataset dir
    resolved = ds.image_path(1).resolve()
    assert resolved.is_relative_to((root / "images").resolve())
    assert resolved.name.startswith(sha + ".")
    assert resolved.parent.name == sha[:2]


def test_export_never_copies_a_file_from_outside(template, tmp_path):
    root = _copy(template, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    _set_image(root, 0, str(secret))
    out = tmp_path / "e"
    cmd = ["dataset", "export", str(root), "--format", "folders", "--out", str(out)]
    res = subprocess.run(
        [sys.executable, "-m", "fashion_tagger", *cmd], capture_output=True, text=True, timeout=300
    )
    assert res.returncode != 0
    assert "row 0: image" in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    copied = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not any(p.read_bytes() == b"not yours" for p in copied)


INFO_MUTATIONS = {
    "levels": [5, "x", [1, 2], {"a": 1}],
    "attribute_groups": [3, [None]],
    "counts": ["x", 1, [1]],
    "sources": [[1], "x", [{"kind": 1}]],
    "history": ["x", [1]],
    "name": [1, ["x"]],
}


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, vs in INFO_MUTATIONS.items() for v in vs])
def test_a_damaged_dataset_json_names_the_field(template, tmp_path, key, value):
    root = _copy(template, tmp_path)
    info = json.loads((root / manifest.INFO_FILE).read_text())
    info[key] = value
    (root / manifest.INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=rf"dataset\.json: '{key}' must be"):
        Dataset.open(root)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@SETTINGS
@given(key=st.sampled_from(sorted(manifest.INFO_KEYS - {"format_version"})), value=JSON_VALUES)
def test_any_mutation_of_dataset_json_opens_or_is_one_dataset_error(template, tmp_path, key, value):
    root = _copy(template, tmp_path)
    info = json.loads((root / manifest.INFO_FILE).read_text())
    info[key] = value
    (root / manifest.INFO_FILE).write_text(json.dumps(info))
    try:
        ds = Dataset.open(root)
    except DatasetError as exc:
        assert "dataset.json" in str(exc)
        return
    # opened: the views every stage reads work
    assert len(ds) == 4
    assert ds.taxonomy is not None
    ds.split_counts()


ITEM_COLUMNS = ["split", "meta", "item_id", "sha256", "labels", "width"]


@SETTINGS
@given(
    column=st.sampled_from(ITEM_COLUMNS),
    row=st.integers(0, 3),
    value=st.none() | st.text(max_size=12) | st.integers(-5, 5) | st.just("[1, 2]") | st.just("{}"),
)
def test_any_mutation_of_items_parquet_opens_or_is_one_dataset_error(
    template, tmp_path, column, row, value
):
    root = _copy(template, tmp_path)
    _set_cell(root, column, row, value)
    try:
        ds = Dataset.open(root)
    except DatasetError as exc:
        assert "items.parquet" in str(exc)
        return
    assert len(ds) == 4
    assert set(ds.split_counts()) <= {"none", "train", "val", "test"}
    for i in range(len(ds)):
        assert isinstance(ds.meta(i), dict)


def test_a_null_split_names_the_row(template, tmp_path):
    root = _copy(template, tmp_path)
    _set_cell(root, "split", 3, None)
    with pytest.raises(DatasetError, match=r"row 3: split is null"):
        Dataset.open(root)


def test_meta_that_is_not_an_object_names_the_row(template, tmp_path):
    root = _copy(template, tmp_path)
    _set_cell(root, "meta", 1, "[1, 2]")
    with pytest.raises(DatasetError, match=r"row 1: meta is not a JSON object"):
        Dataset.open(root)


# -- two writers on one dataset dir ----------------------------------------------------------
def test_a_writer_that_read_an_older_revision_is_refused(template, tmp_path):
    root = _copy(template, tmp_path)
    first, second = Dataset.open(root), Dataset.open(root)
    first.with_history("a", {}, {}).save()
    with pytest.raises(DatasetError, match=r"changed by another command \('a'.*re-run"):
        second.with_history("b", {}, {}).save()
    assert [h["op"] for h in Dataset.open(root).info.history][-1] == "a"
    # a view that saved keeps writing: its own save is the revision it knows
    again = Dataset.open(root).with_history("c", {}, {}).save()
    again.with_history("d", {}, {}).save()
    assert [h["op"] for h in Dataset.open(root).info.history][-2:] == ["c", "d"]


def _writer(root: str, name: str, barrier, results) -> None:
    ds = Dataset.open(root)
    barrier.wait()
    try:
        ds.with_history(name, {}, {}).save()
        results.put((name, "ok"))
    except DatasetError as exc:
        results.put((name, str(exc)))


@pytest.mark.parametrize("round_", range(4))
def test_writers_racing_never_both_succeed_with_a_change_lost(template, tmp_path, round_):
    import multiprocessing as mp

    root = _copy(template, tmp_path)
    ctx = mp.get_context("fork")
    n = 3
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(str(root), f"w{i}", barrier, results)) for i in range(n)
    ]
    for p in procs:
        p.start()
    outcomes = dict(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=300)
    saved = {name for name, what in outcomes.items() if what == "ok"}
    refused = {name for name, what in outcomes.items() if "changed by another command" in what}
    assert saved | refused == set(outcomes)
    ops = {h["op"] for h in Dataset.open(root).info.history}
    # every writer that said it saved has its change on disk: none was silently overwritten
    assert saved <= ops
    assert len(saved) == 1  # they all read one revision: only the first save can stand on it

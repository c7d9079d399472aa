"""Streaming ingest: bad images are skipped with a reason, re-runs change nothing, and an
interrupted import resumes without decoding what it already stored."""

from __future__ import annotations

import json

import pytest
from broken_images import BROKEN
from conftest import image_bytes
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.dataset import images, ingest
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError


def _records(n: int, fail_after: int | None = None):
    for i in range(n):
        if fail_after is not None and i == fail_after:
            raise KeyboardInterrupt("simulated interruption")
        data = image_bytes("PNG", color=(i, 0, 0))
        yield ingest.Record(
            key=f"k{i}", labels=["A", f"B{i % 2}"], item_id=str(i), load=lambda d=data: d
        )


def _ingest(records, out, **kw):
    return ingest.ingest(records, out, kind="test", fp="fp1", name="t", levels=["l1", "l2"],
                         source="mem", workers=1, progress=False, **kw)  # fmt: skip


def test_broken_images_are_skipped_with_reasons_and_rerun_changes_nothing(tmp_path, make_image):
    src = tmp_path / "src"
    for i in range(3):
        make_image(src / "shirts" / f"good{i}.jpg", color=(10 * i, 50, 50))
    for reason, data in BROKEN.items():
        (src / "shirts" / f"{reason}.jpg").write_bytes(data)
    out = tmp_path / "ds"
    runner = CliRunner()
    args = ["import", "folders", str(src), "--out", str(out), "--no-progress", "--workers", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "imported 3" in result.output and "4 records skipped" in result.output
    report = json.loads((out / "import_report.json").read_text())
    by_file = {r["key"]: r["reason"] for r in report["skipped_records"]}
    assert by_file == {f"shirts/{reason}.jpg": reason for reason in BROKEN}
    assert len(Dataset.open(out)) == 3
    before = (out / "items.parquet").read_bytes()
    files_before = sorted(p.relative_to(out) for p in out.rglob("*"))
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert (out / "items.parquet").read_bytes() == before
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files_before


def test_interrupted_import_resumes_without_decoding_stored_images(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "BATCH", 2)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        _ingest(_records(10, fail_after=7), out)
    assert (out / ingest.STATE_DIR).is_dir() and not (out / "items.parquet").exists()
    stored = len(list((out / "images").rglob("*.png")))
    assert stored == 6  # three batches of two were stored before the interruption

    probed, loaded = [], []
    real_probe = images.probe
    monkeypatch.setattr(
        images, "probe", lambda data, sha=None: probed.append(1) or real_probe(data, sha)
    )

    def counting(n):
        for rec in _records(n):
            inner = rec.load
            rec.load = lambda f=inner, k=rec.key: loaded.append(k) or f()
            yield rec

    result = _ingest(counting(10), out)
    assert result.resumed and len(result.dataset) == 10
    assert len(probed) == 10 - stored  # only the images not yet stored are decoded
    assert "k0" not in loaded and "k1" not in loaded  # rows already written are not even read
    assert not (out / ingest.STATE_DIR).exists()
    assert sorted(result.dataset.table.column("item_id").to_pylist(), key=int) == [
        str(i) for i in range(10)
    ]


def test_resume_with_other_arguments_is_refused(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        _ingest(_records(4, fail_after=1), out)
    with pytest.raises(DatasetError, match="other arguments"):
        ingest.ingest(_records(4), out, kind="test", fp="fp2", name="t", levels=[], source="mem",
                      workers=1, progress=False)  # fmt: skip


def test_existing_dataset_from_other_arguments_is_refused(tmp_path):
    out = tmp_path / "ds"
    _ingest(_records(2), out)
    with pytest.raises(DatasetError, match="already holds a dataset"):
        ingest.ingest(_records(2), out, kind="test", fp="other", name="t", levels=[], source="mem",
                      workers=1, progress=False)  # fmt: skip


def test_nothing_usable_is_an_error(tmp_path):
    recs = [ingest.Record(key="a", labels=["x"], item_id="a", load=lambda: b"not an image")]
    with pytest.raises(DatasetError, match="no usable image"):
        _ingest(recs, tmp_path / "ds")


def test_duplicate_images_are_stored_once(tmp_path):
    data = image_bytes("PNG")
    recs = [
        ingest.Record(key=str(i), labels=["x"], item_id=str(i), load=lambda: data) for i in range(3)
    ]
    ds = _ingest(recs, tmp_path / "ds").dataset
    assert len(ds) == 3 and len(set(ds.table.column("image").to_pylist())) == 1
    assert len(list((tmp_path / "ds" / "images").rglob("*.png"))) == 1


@pytest.mark.parametrize(
    ("rel", "ok"),
    [("images/1.jpg", True), ("a/b/c.png", True), ("../x.jpg", False), ("a/../../x", False),
     ("/etc/passwd", False), ("C:/x.jpg", False), ("a\\..\\x", False), ("", False)],
)  # fmt: skip
def test_is_safe_relpath(rel, ok):
    assert ingest.is_safe_relpath(rel) is ok


def test_a_second_concurrent_import_into_the_same_dir_is_refused(tmp_path):
    out = tmp_path / "ds"
    running = ingest._State(out, "fp1")  # as an import in progress holds it
    try:
        with pytest.raises(DatasetError, match="another import is writing"):
            _ingest(_records(2), out)
    finally:
        running.release()
    assert len(_ingest(_records(2), out).dataset) == 2


def test_stored_images_are_readable_by_others(tmp_path):
    _ingest(_records(1), tmp_path / "ds")
    (path,) = (tmp_path / "ds" / "images").rglob("*.png")
    assert path.stat().st_mode & 0o044 == 0o044


KILLED_IMPORT = """
import os, signal, sys
sys.path[:0] = [{tests!r}, {here!r}]
from fashion_tagger.dataset import ingest
from test_ingest import _records
ingest.BATCH, ingest.FLUSH_ROWS = 2, 2

def killed_after(n):
    for i, rec in enumerate(_records(10)):
        if i == n:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: like kill -9
        yield rec

ingest.ingest(killed_after(7), {out!r}, kind="test", fp="fp1", name="t", levels=["l1", "l2"],
              source="mem", workers=1, progress=False)
"""


def test_killed_import_resumes(tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "ds"
    here = Path(__file__).parent
    code = KILLED_IMPORT.format(tests=str(here.parent), here=str(here), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert len(list((out / ingest.STATE_DIR).glob("part-*.parquet"))) >= 1
    probed = []
    real_probe = images.probe
    monkeypatch.setattr(images, "probe", lambda d, sha=None: probed.append(1) or real_probe(d, sha))
    result = _ingest(_records(10), out)
    assert result.resumed and len(result.dataset) == 10
    assert len(probed) == 10 - 6  # the six images stored before the kill are not decoded again


def test_a_stored_file_cut_short_is_written_again(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "BATCH", 1)
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt):
        _ingest(_records(3, fail_after=2), out)
    (stored, *_) = sorted((out / "images").rglob("*.png"))
    full = stored.read_bytes()
    stored.write_bytes(full[:20])  # as a power loss could leave it
    _ingest(_records(3), out)
    assert stored.read_bytes() == full

import os
import stat

import pytest

from fashion_tagger._io import atomic_path, write_bytes_atomic, write_json_atomic


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "f.json"
    write_json_atomic(target, {"x": 1})
    write_json_atomic(target, {"x": 2})
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"x":2}'
    assert [p.name for p in target.parent.iterdir()] == ["f.json"]


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_mode_follows_umask_like_open(tmp_path):
    old = os.umask(0o022)
    try:
        write_bytes_atomic(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644

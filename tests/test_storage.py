"""storage: which locations are URLs, and a remote folder's reads, writes, listing and fetches."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from s3_server import s3_bucket_fixture, s3_endpoint_fixture  # noqa: F401 - fixtures

from fashion_tagger import storage

segment = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,11}", fullmatch=True)  # "." and ".." are not keys


@given(
    scheme=st.sampled_from(["s3", "gs", "az", "abfs", "memory"]),
    parts=st.lists(segment, min_size=1, max_size=4),
)
def test_a_url_survives_pathlib(scheme, parts):
    url = f"{scheme}://" + "/".join(parts)
    assert storage.is_url(url)
    assert storage.normalize(Path(url)) == url  # Path("s3://b/k") is "s3:/b/k"


@pytest.mark.parametrize(
    "local", ["data/products", "/abs/path", "C:/Users/x", "./s3:/not-a-url", "file:///tmp/x"]
)
def test_local_paths_are_not_urls(local):
    assert not storage.is_url(local)
    assert storage.normalize(local) == local


def test_mirror_dir_is_per_url_under_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FASHION_TAGGER_CACHE", str(tmp_path))
    a = storage.mirror_dir("s3://b/one")
    assert a.parent == tmp_path / "datasets"
    assert a == storage.mirror_dir("s3://b/one/")
    assert a != storage.mirror_dir("s3://b/two")


def test_remote_round_trip_listing_and_checked_fetch(s3, tmp_path):
    remote = storage.Remote.open(f"{s3}/ds")
    good = b"image bytes"
    sha = hashlib.sha256(good).hexdigest()
    rel_good = f"images/{sha[:2]}/{sha}.jpg"
    rel_bad = f"images/00/{'0' * 64}.jpg"  # its bytes do not match its name
    remote.write_bytes(rel_good, good)
    remote.write_bytes(rel_bad, b"something else")
    remote.write_bytes("dataset.json", b"{}")
    assert remote.read_bytes("dataset.json") == b"{}"
    assert remote.read_bytes("missing.json") is None
    assert remote.listing("images") == {rel_good, rel_bad}
    done = []
    missing = remote.fetch([rel_good, rel_bad, "images/ff/nope.jpg"], tmp_path, 4, done.append)
    assert sorted(missing) == sorted([rel_bad, "images/ff/nope.jpg"])
    assert len(done) == 3
    assert (tmp_path / rel_good).read_bytes() == good
    assert not (tmp_path / rel_bad).exists()
    assert remote.upload([rel_good, "images/aa/absent.jpg"], tmp_path) == ["images/aa/absent.jpg"]


def test_an_unknown_scheme_says_how_to_fix_it():
    with pytest.raises(storage.StorageError, match="fsspec driver"):
        storage.Remote.open("nosuchscheme://bucket/x")

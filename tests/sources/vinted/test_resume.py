"""SIGKILL the crawler twice mid-run, resume it, and check nothing was lost, duplicated or re-fetched.

This is how the issue is checked: the crawl runs in a subprocess (the real CLI), is killed with
`kill -9` during the search pages and again during the photos, and is then run to the end.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

from vinted_fixtures import done_pages, done_photos, expected

from fashion_tagger.dataset.core import Dataset
from fashion_tagger.testing.fake_marketplace import FakeVinted

PER_CATEGORY = 24
CONCURRENCY = 2


def _start(fake: FakeVinted, out) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-c",
        "from fashion_tagger.cli import main; main()",
        "crawl", "vinted", "--base-url", fake.url, "--out", str(out),
        "--per-category", str(PER_CATEGORY), "--delay", "0",
        "--concurrency", str(CONCURRENCY), "--photo-concurrency", str(CONCURRENCY),
        "--photo-delay", "0", "--save-every", "5", "--allow-private-hosts", "--no-progress",
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the crawl finished before it could be killed"
        assert time.monotonic() < deadline, "the crawl made no progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _page_hits(fake: FakeVinted, hits: Counter, cid: int, page: int) -> int:
    key = f"/api/v2/catalog/items?catalog_ids={cid}&page={page}&"
    return sum(v for k, v in hits.items() if k.startswith(key))


def test_sigkill_twice_then_resume_loses_and_repeats_nothing(tmp_path):
    out = tmp_path / "ds"
    with FakeVinted(categories=4, items_per_category=30, page_cap=6, latency=0.004) as fake:
        snapshots = []

        def pages() -> int:
            return sum(fake.count("/api/v2/catalog/items").values())

        def photos() -> int:
            return sum(fake.count("/t/").values())

        _kill_when(_start(fake, out), lambda: pages() >= 6)  # during the search pages
        snapshots.append((done_pages(out), done_photos(out), Counter(fake.hits)))
        _kill_when(_start(fake, out), lambda: photos() >= 30)  # during the photos
        snapshots.append((done_pages(out), done_photos(out), Counter(fake.hits)))
        # the manifest written every 5 photos survived the kill, whole
        assert 5 <= len(Dataset.open(out)) <= len(snapshots[1][1])
        last = _start(fake, out)
        _, err = last.communicate(timeout=60)
        assert last.returncode == 0, err.decode()
        final = Counter(fake.hits)

    # nothing lost, nothing duplicated
    want = expected(fake, PER_CATEGORY)
    df = Dataset.open(out).to_pandas()
    assert sorted(df.item_id) == sorted(want)
    assert {r.item_id: tuple(r.labels) for r in df.itertuples()} == want
    assert len(set(df.image)) == len(df) == len(list((out / "images").rglob("*.jpg")))
    # what was stored before a kill was never fetched again
    for pages_done, photos_done, hits in snapshots:
        assert pages_done and photos_done is not None
        for cid, page in pages_done:
            assert _page_hits(fake, final, cid, page) == _page_hits(fake, hits, cid, page)
        for url in photos_done:
            assert final[url.removeprefix(fake.url)] == hits[url.removeprefix(fake.url)]
    assert snapshots[1][1], "the second kill should come after some photos were stored"
    # not even the requests in flight at each kill were repeated: the network helper finished
    # them and journaled their answers for the resumed crawl
    fetched = {k: v for k, v in final.items() if k.startswith(("/t/", "/api/"))}
    assert len([k for k in fetched if k.startswith("/t/")]) == len(want)
    assert {k: v for k, v in fetched.items() if v > 1} == {}
    assert not (out / ".crawl-journal").exists()  # a finished crawl leaves no journal

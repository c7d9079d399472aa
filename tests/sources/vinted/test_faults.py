"""Each fault of the fake marketplace, and how the crawler lives with it."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner
from vinted_fixtures import done_photos, expected, fast

from fashion_tagger.cli import app
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.sources.vinted import Blocked, crawl_status, crawl_vinted
from fashion_tagger.testing.fake_marketplace import FakeVinted, Faults


def _crawl(tmp_path, faults: Faults, per_category: int = 4, **kw):
    """Crawl a 2-category market (7 listings: one is under Women and Men) with `faults` on."""
    opts = {"page_cap": 2, **kw.pop("fake", {})}  # 2 pages per category
    fake = FakeVinted(categories=2, items_per_category=4, faults=faults, **opts)
    with fake:
        result = crawl_vinted(tmp_path, fast(fake, per_category=per_category, **kw), progress=False)
    return fake, result


def _complete(fake, result, per_category: int = 4) -> None:
    """The dataset holds every listing once, as if nothing had gone wrong."""
    df = result.dataset.to_pandas()
    assert sorted(df.item_id) == sorted(expected(fake, per_category))


@pytest.mark.parametrize(
    "faults",
    [
        Faults(rate_limit_bare_every=3),
        Faults(server_error_every=4),
        Faults(expire_cookie_every=3),
        Faults(auth_403_every=3),
        Faults(malformed_json_every=2),
    ],
    ids=["429-bare", "5xx", "cookie-expiry-401", "403-code-100", "malformed-json"],
)
def test_transient_faults_are_retried_and_nothing_is_lost(tmp_path, faults):
    fake, result = _crawl(tmp_path, faults)
    assert result.stopped == "done"
    _complete(fake, result)
    assert result.retried > 0 or faults.expire_cookie_every or faults.auth_403_every
    if faults.expire_cookie_every or faults.auth_403_every:
        assert fake.hits["/"] > 1  # a fresh cookie was fetched...
        assert fake.hits["/"] < 10  # ...only when needed


def test_cookie_that_expires_with_time_is_fetched_again(tmp_path):
    fake, result = _crawl(
        tmp_path,
        Faults(),
        fake={"cookie_ttl": 0.2, "latency": 0.04, "page_cap": 1},
        politeness={"concurrency": 1},
    )
    assert result.stopped == "done"
    _complete(fake, result)
    assert 1 < fake.hits["/"] < 9  # 8 search pages of 40+ ms: the 0.2 s cookie expires


def test_retry_after_is_honoured(tmp_path):
    started = time.monotonic()
    fake, result = _crawl(tmp_path, Faults(rate_limit_every=6, retry_after=0.4))
    # 13 requests: two 429s, each answered by waiting the 0.4 s asked for
    assert time.monotonic() - started >= 0.8
    _complete(fake, result)


def test_retry_after_is_capped(tmp_path):
    started = time.monotonic()
    fake, result = _crawl(
        tmp_path, Faults(rate_limit_every=6, retry_after=3600), politeness={"max_retry_after": 0.05}
    )
    assert time.monotonic() - started < 60  # an hour was asked for, twice
    _complete(fake, result)


def test_slow_answers_time_out_and_are_retried(tmp_path):
    fake, result = _crawl(
        tmp_path, Faults(slow_every=5, slow_seconds=0.6), politeness={"timeout": 0.2}
    )
    assert result.retried >= 1
    _complete(fake, result)


def test_retries_are_bounded_then_recorded(tmp_path):
    fake, result = _crawl(tmp_path, Faults(server_error_every=1), politeness={"retries": 2})
    assert result.stopped == "done" and len(result.dataset) == 0
    # the home page (not faulted) then 3 tries for each of the 2 categories' first page
    assert sum(fake.count("/api/").values()) == 6
    st = crawl_status(tmp_path)
    assert st["categories"] == {"failed": 2}
    assert st["failures"]["categories"] == {"page 1: http_503": 2}


def test_corrupt_photos_and_listings_without_photos_are_recorded(tmp_path):
    fake, result = _crawl(tmp_path, Faults(corrupt_photo_every=2), fake={"no_photo_every": 3})
    df = result.dataset.to_pandas()
    with_photo = expected(fake, 4)
    st = crawl_status(tmp_path)
    assert st["listings"]["without_photo"] == 7 - len(with_photo) > 0
    assert st["photos"]["failed"] == result.failed_photos > 0
    assert set(st["failures"]["photos"]) == {"corrupt_image"}
    assert len(df) == len(with_photo) - result.failed_photos
    ds = Dataset.open(tmp_path)
    assert all(ds.load_image(i).size == (168, 224) for i in range(len(ds)))
    assert st["unparsed_responses"] == result.failed_photos


def test_detail_denied_falls_back_to_main_photo(tmp_path):
    fake, result = _crawl(tmp_path, Faults(detail_denied_every=2), all_photos=True)
    df = result.dataset.to_pandas()
    assert sorted(set(df.item_id)) == sorted(expected(fake, 4))  # every listing has a photo
    per_item = df.groupby("item_id").size()
    assert set(per_item) == {1, 3} and (per_item == 1).sum() == sum(
        1 for v in crawl_status(tmp_path)["failures"]["details"].values() for _ in range(v)
    )


def test_bot_wall_pauses_then_recovers(tmp_path):
    started = time.monotonic()
    fake, result = _crawl(
        tmp_path,
        Faults(bot_wall_after=4, bot_wall_requests=1),
        politeness={"block_pause": 0.3, "concurrency": 1},
    )
    assert time.monotonic() - started >= 0.3
    assert result.stopped == "done"
    _complete(fake, result)


def test_bot_wall_stops_with_exit_3_then_resumes(tmp_path):
    faults = Faults(bot_wall_after=6, bot_wall_requests=10**6)
    with FakeVinted(categories=2, items_per_category=4, faults=faults) as fake:
        args = [
            "crawl",
            "vinted",
            "--base-url",
            fake.url,
            "--out",
            str(tmp_path),
            "--delay",
            "0",
            "--per-category",
            "4",
            "--block-pause",
            "0.05",
            "--photo-delay",
            "0",
            "--allow-private-hosts",
            "--no-progress",
        ]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 3
        assert "bot protection" in res.output
        st = crawl_status(tmp_path)
        stored = done_photos(tmp_path)
        assert st["last_run"]["stopped"] == "blocked" and stored
        assert st["pages"] == {"done": 2}
        with pytest.raises(Blocked):
            crawl_vinted(tmp_path, fast(fake, per_category=4), progress=False)
        fake.faults.bot_wall_requests = 0  # the wall clears
        result = crawl_vinted(tmp_path, fast(fake, per_category=4), progress=False)
        assert result.stopped == "done"
        _complete(fake, result)
        hits = fake.count("/t/")
        assert all(hits[url.removeprefix(fake.url)] == 1 for url in stored)


def test_max_requests_stops_cleanly_and_resumes(tmp_path):
    with FakeVinted(categories=2, items_per_category=4) as fake:
        first = crawl_vinted(
            tmp_path, fast(fake, per_category=4, politeness={"max_requests": 6}), progress=False
        )
        assert first.stopped == "max_requests" and first.requests == 6
        assert sum(fake.hits.values()) == 6
        assert len(Dataset.open(tmp_path)) == first.photos
        rest = crawl_vinted(tmp_path, fast(fake, per_category=4), progress=False)
        assert rest.stopped == "done"
        _complete(fake, rest)
        assert max(fake.count("/t/").values()) == 1
        assert max(fake.count("/api/").values()) == 1

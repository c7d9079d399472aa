"""The crawl's network helper: answers journaled until settled, replayed without a request,
drained after a SIGKILL of the crawl, and its failures turned into clear errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fashion_tagger.sources.vinted.wire import WireBroken, WireTransport, journal_path
from fashion_tagger.testing.fake_marketplace import FakeVinted, photo_bytes


def _get(transport: WireTransport, *urls: str) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=transport) as client:
            return [await client.get(u) for u in urls]

    return asyncio.run(go())


def _photo(fake: FakeVinted) -> tuple[str, str, bytes]:
    item = fake.fashion_leaves()[0].items[0]
    url = fake.photo_url(item, 0)
    return url, url.removeprefix(fake.url), photo_bytes(item, 0)


def test_answers_are_journaled_until_settled_and_replayed_without_a_request(tmp_path: Path):
    journal = tmp_path / "journal"
    with FakeVinted(categories=1, items_per_category=2) as fake:
        url, path, jpeg = _photo(fake)
        photo, home, missing = _get(
            WireTransport(journal, 5.0, 2), url, fake.url + "/", fake.url + "/t/x/f800/0.jpeg"
        )
        assert photo.status_code == 200 and photo.content == jpeg
        assert home.status_code == 200 and "catalogTree" in home.text
        assert missing.status_code == 404
        # only the photo is kept: the home page is always loaded afresh, errors are retried
        assert journal_path(journal, "GET", url).read_bytes() == jpeg
        assert [p.name for p in journal.iterdir()] == [journal_path(journal, "GET", url).name]

        # a resumed crawl gets the answer it had not settled without asking the site again
        resumed = WireTransport(journal, 5.0, 2)
        (again,) = _get(resumed, url)
        assert again.content == jpeg and fake.hits[path] == 1 and resumed.replayed == 1
        resumed.settle("GET", url)
        assert not any(journal.iterdir())
        (fresh,) = _get(WireTransport(journal, 5.0, 2), url)
        assert fresh.content == jpeg and fake.hits[path] == 2


CRAWL = """
import asyncio, sys
from pathlib import Path
import httpx
from fashion_tagger.sources.vinted.wire import WireTransport

async def main():
    async with httpx.AsyncClient(transport=WireTransport(Path(sys.argv[1]), 10.0, 2)) as c:
        await c.get(sys.argv[2])

asyncio.run(main())
"""


def test_a_request_in_flight_when_the_crawl_is_killed_is_drained_into_the_journal(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"
    with FakeVinted(categories=1, items_per_category=2, latency=1.0) as fake:
        url, path, jpeg = _photo(fake)
        crawl = subprocess.Popen([sys.executable, "-c", CRAWL, str(journal), url])
        deadline = time.monotonic() + 30
        while fake.hits[path] == 0:  # the site has the request; its answer is a second away
            assert crawl.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        crawl.kill()
        crawl.wait()
        kept = journal_path(journal, "GET", url)
        while not kept.is_file():
            assert time.monotonic() < deadline, "the helper did not keep the answer"
            time.sleep(0.05)
        assert kept.read_bytes() == jpeg
        (again,) = _get(WireTransport(journal, 5.0, 2), url)
        assert again.content == jpeg and fake.hits[path] == 1


def test_timeouts_and_a_dead_helper_are_errors_not_hangs(tmp_path: Path) -> None:
    with FakeVinted(categories=1, items_per_category=2, latency=1.0) as fake:
        url, _, _ = _photo(fake)
        with pytest.raises(httpx.TimeoutException):
            _get(WireTransport(tmp_path / "j", 0.2, 2), url)

        async def helper_dies() -> None:
            transport = WireTransport(tmp_path / "j", 5.0, 2)
            async with httpx.AsyncClient(transport=transport) as client:
                await client.get(fake.url + "/")
                assert transport._proc is not None
                transport._proc.kill()
                await transport._proc.wait()
                with pytest.raises(WireBroken, match="network helper stopped"):
                    await client.get(url)

        asyncio.run(helper_dies())

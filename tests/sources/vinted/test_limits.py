"""The API and the photos have separate politeness budgets; every request passes the address guard.

Counts, not clocks: the limiters record how many starts had to wait, and a mock transport
records whether a refused request ever reached the network.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fashion_tagger._net import UrlError
from fashion_tagger.sources import _download
from fashion_tagger.sources._polite import Limiter
from fashion_tagger.sources.vinted import Politeness
from fashion_tagger.sources.vinted.session import FetchError, Session
from fashion_tagger.testing.fake_marketplace import FakeVinted

HOSTILE = ["http://10.0.0.1/x.jpg", "http://169.254.169.254/latest/meta-data", "http://[::1]:8080/"]


def test_limiters_are_independent_with_a_fake_clock():
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    async def main() -> tuple[Limiter, Limiter]:
        api = Limiter(10.0, 2, clock=lambda: 0.0, sleep=sleep)
        photos = Limiter(0.0, 8, clock=lambda: 0.0, sleep=sleep)

        async def use(lim: Limiter) -> None:
            async with lim.slot():
                await asyncio.sleep(0)

        await asyncio.gather(*(use(api) for _ in range(3)), *(use(photos) for _ in range(20)))
        return api, photos

    api, photos = asyncio.run(main())
    assert (api.started, api.waited) == (3, 2)  # the 2nd and 3rd API starts waited 10 s, 20 s
    assert (photos.started, photos.waited) == (20, 0)  # no photo start waited for the API
    assert sorted(slept) == [10.0, 20.0]


def test_limiter_caps_concurrency():
    peak = 0
    live = 0

    async def main() -> None:
        lim = Limiter(0.0, 3)

        async def use() -> None:
            nonlocal live, peak
            async with lim.slot():
                live += 1
                peak = max(peak, live)
                await asyncio.sleep(0.001)
                live -= 1

        await asyncio.gather(*(use() for _ in range(12)))

    asyncio.run(main())
    assert peak == 3


def test_photos_are_not_held_back_by_the_api_delay():
    """A session against the fake: API starts wait their delay, photo starts never do."""
    pol = Politeness(delay=0.15, concurrency=1, photo_delay=0.0, photo_concurrency=4)
    with FakeVinted(categories=1, items_per_category=12) as fake:
        urls = [fake.photo_url(item, 0) for item in fake.fashion_leaves()[0].items]

        async def main() -> Session:
            async with Session(fake.url, pol, allow_private=True) as s:
                await s.home()
                api = [s.get_json("/api/v2/catalog/items", {"catalog_ids": "1", "page": 1})]
                await asyncio.gather(*api, s.get_json("/api/v2/catalog/initializers"),
                                     *(s.get_bytes(u) for u in urls))  # fmt: skip
            return s

        s = asyncio.run(main())
    assert (s.api.started, s.api.waited) == (3, 2)  # home + 2 API calls, one after the other
    (photos,) = s.photos.by_key.values()
    assert (photos.started, photos.waited) == (12, 0)
    assert s.requests == 15


def test_default_api_budget_is_unchanged_and_photos_get_their_own():
    p = Politeness()
    assert (p.delay, p.concurrency) == (1.0, 2)
    assert p.photo_delay < p.delay and p.photo_concurrency >= p.concurrency
    with pytest.raises(Exception, match="--photo-concurrency"):
        Politeness(photo_concurrency=0)
    with pytest.raises(Exception, match="--photo-delay"):
        Politeness(photo_delay=-1)


def _counting_transport() -> tuple[httpx.MockTransport, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=b"x")

    return httpx.MockTransport(handler), seen


@pytest.mark.parametrize("url", HOSTILE)
def test_session_refuses_private_addresses_before_connecting(url):
    transport, seen = _counting_transport()

    async def main() -> None:
        async with Session("https://www.vinted.fr", Politeness(), transport=transport) as s:
            with pytest.raises(FetchError, match="refused_address"):
                await s.get_bytes(url)  # a photo: recorded as failed for good, the crawl goes on
            s.base_url = url
            with pytest.raises(UrlError, match="--allow-private-hosts"):
                await s.home()  # the site itself: the crawl stops with one line

    asyncio.run(main())
    assert seen == []


def test_session_reaches_private_hosts_when_allowed():
    transport, seen = _counting_transport()

    async def main() -> bytes:
        async with Session(
            "http://10.0.0.1", Politeness(delay=0), transport=transport, allow_private=True
        ) as s:
            return await s.get_bytes("http://10.0.0.1/a.jpg")

    assert asyncio.run(main()) == b"x" and seen == ["http://10.0.0.1/a.jpg"]


@pytest.mark.parametrize("url", HOSTILE)
def test_download_refuses_private_addresses_before_connecting(tmp_path, url):
    transport = httpx.MockTransport(lambda r: pytest.fail(f"connected to {r.url}"))
    target = tmp_path / "f.gz"
    with pytest.raises(_download.DownloadError, match="refused before connecting"):
        _download.fetch(url, target, None, progress=False, allow_private=False, transport=transport)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_download_checks_redirects_even_from_a_trusted_host(tmp_path):
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://169.254.169.254/x"})

    with pytest.raises(_download.DownloadError, match=r"169\.254\.169\.254"):
        _download.fetch(
            "http://10.0.0.1/data.gz",  # the host the user named: trusted (allow_private=None)
            tmp_path / "data.gz",
            None,
            progress=False,
            transport=httpx.MockTransport(handler),
        )
    assert seen == ["http://10.0.0.1/data.gz"]  # the redirect target was never asked

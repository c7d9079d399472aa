"""What every crawler shares: a politeness budget per host, and the address guard on every request.

A crawl talks to several hosts (a site's API and its image CDN, a shop and the CDN its photos
live on); each gets its own `Limiter`, so a fast CDN budget never speeds up the API and a slow
API delay never holds back the photos. Every request of a crawler's httpx client goes through
`async_guard` first, the project's one address guard (`fashion_tagger._net`), so a page, a
sitemap or a listing that names a private address makes nothing connect there.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fashion_tagger._net import UrlError, check_url, checked_addresses

HOW_TO_ALLOW = "--allow-private-hosts"


class Limiter:
    """One politeness budget: at most `concurrency` requests in flight, and `delay` seconds
    between the starts of two of them, whoever makes them.

    `clock` and `sleep` are injectable so that tests count the waits instead of timing them.
    Attributes `started` (slots given) and `waited` (slots that had to wait) are for them too.
    """

    def __init__(
        self,
        delay: float,
        concurrency: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.delay, self.concurrency = delay, concurrency
        self._clock, self._sleep = clock, sleep
        self._sem = asyncio.Semaphore(concurrency)
        self._lock = asyncio.Lock()
        self._next_start = 0.0
        self.paused_until = 0.0
        self.started = 0
        self.waited = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the `concurrency` places, starting no sooner than `delay` after the last."""
        async with self._sem:
            async with self._lock:
                now = self._clock()
                start = max(now, self._next_start, self.paused_until)
                self._next_start = start + self.delay
                self.started += 1
            if start > now:
                self.waited += 1
                await self._sleep(start - now)
            yield

    def pause(self, seconds: float) -> None:
        """No new start on this budget for `seconds` (a bot wall, a server that asked)."""
        self.paused_until = max(self.paused_until, self._clock() + seconds)


class Limiters:
    """A `Limiter` per key (a host, or a kind of request and its host), made on first use."""

    def __init__(self, delay: float, concurrency: int, **kw: Any) -> None:
        self.delay, self.concurrency, self._kw = delay, concurrency, kw
        self.by_key: dict[str, Limiter] = {}

    def __call__(self, key: str) -> Limiter:
        if key not in self.by_key:
            self.by_key[key] = Limiter(self.delay, self.concurrency, **self._kw)
        return self.by_key[key]


def async_guard(allow_private: bool) -> Callable[[Any], Awaitable[None]]:
    """An httpx request hook for an `AsyncClient`: refuse a request (each redirect's included)
    to anything but http(s) on public addresses, before it connects, unless `allow_private`.

    A host checked once is remembered for the client's life: a crawl asks one host thousands
    of times. Raises `UrlError` (`refused` True for a refused address, False when the name does
    not resolve).
    """
    checked: set[tuple[str, int]] = set()

    async def hook(request: Any) -> None:
        host, port = check_url(str(request.url))
        if (host, port) in checked:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise UrlError(f"cannot resolve {host!r}: {exc}", refused=False) from exc
        checked_addresses(host, infos, allow_private, HOW_TO_ALLOW)
        checked.add((host, port))

    return hook

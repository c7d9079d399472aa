"""A polite HTTP session with the marketplace: one client, one cookie, two politeness budgets.

Everything a well-behaved client of the site does lives here, so the crawler only asks for a
page or a photo: a browser-like User-Agent; the home page's cookie, fetched again only on 401
(or 403 `{"code": 100}`), a bounded number of times; one delay between the starts of API
requests across all workers, and a separate budget per photo host (the image CDN is not the
API: its own delay and concurrency, so photos are neither held back by the API's delay nor
allowed to speed the API up); every request checked by the address guard before it connects
(`_polite.async_guard`); 429 answered by waiting Retry-After (capped) or an exponential backoff with
jitter; 5xx, timeouts and malformed JSON retried a bounded number of times; and the bot wall
(403 with an HTML page) answered by one pause for every worker, then one retry, then `Blocked`.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from fashion_tagger._net import UrlError
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.sources._polite import Limiter, Limiters, async_guard
from fashion_tagger.sources.vinted import api


@dataclass(frozen=True)
class Politeness:
    """How hard the crawler may push the site.

    Attributes:
        delay: seconds between the starts of two API requests (home page included), across all
            workers.
        concurrency: API requests in flight at once.
        photo_delay: seconds between the starts of two photo downloads from one host (the
            image CDN), independent of `delay`.
        photo_concurrency: photo downloads in flight at once, per host.
        timeout: seconds before a request is given up (and retried).
        retries: tries after the first for 429, 5xx, timeouts and malformed JSON.
        backoff: base seconds of the exponential backoff (doubled per try, with jitter).
        max_retry_after: cap on a server's Retry-After, in seconds.
        block_pause: seconds to pause when the bot wall answers, before the one retry.
        cookie_refreshes: home page reloads allowed per request on 401.
        max_requests: stop the run (resumably) after this many requests; None for no bound.
    """

    delay: float = 1.0
    concurrency: int = 2
    photo_delay: float = 0.1
    photo_concurrency: int = 4
    timeout: float = 20.0
    retries: int = 4
    backoff: float = 1.0
    max_retry_after: float = 60.0
    block_pause: float = 60.0
    cookie_refreshes: int = 2
    max_requests: int | None = None

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise FashionTaggerError("--delay must be 0 or more seconds")
        if self.concurrency < 1:
            raise FashionTaggerError("--concurrency must be at least 1")
        if self.photo_delay < 0:
            raise FashionTaggerError("--photo-delay must be 0 or more seconds")
        if self.photo_concurrency < 1:
            raise FashionTaggerError("--photo-concurrency must be at least 1")
        if self.max_requests is not None and self.max_requests < 1:
            raise FashionTaggerError("--max-requests must be at least 1 (or left out)")
        if self.timeout <= 0 or self.retries < 0 or self.block_pause < 0:
            raise FashionTaggerError("timeout must be > 0, retries and block pause >= 0")


class Blocked(FashionTaggerError):
    """The site's bot protection still answers after a pause: stop, keep the state."""


class BudgetSpent(Exception):
    """--max-requests requests were made: the run stops cleanly."""


class FetchError(Exception):
    """A request that failed for good in this run; `reason` is a short tag for the state."""

    def __init__(self, reason: str, body: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.body = body


class Session:
    """The one HTTP client of a crawl. Use as `async with Session(base_url, politeness) as s`.

    `allow_private` lets requests reach private and loopback addresses (`--allow-private-hosts`,
    for a fake marketplace on 127.0.0.1); without it they are refused before connecting.
    """

    def __init__(
        self,
        base_url: str,
        politeness: Politeness,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_private: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.host = urlsplit(self.base_url).netloc
        self.p = politeness
        self.requests = 0
        self.retried = 0
        self.cookies: dict[str, str] = {}
        self._cookie_gen = 0
        self._cookie_lock = asyncio.Lock()
        self._budget_lock = asyncio.Lock()
        self.api = Limiter(politeness.delay, politeness.concurrency)
        self.photos = Limiters(politeness.photo_delay, politeness.photo_concurrency)
        """One photo budget per host: `self.photos(host)`."""
        self._transport = transport
        limits = httpx.Limits(max_connections=connections(politeness))
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(politeness.timeout),
            limits=limits,
            follow_redirects=True,
            transport=transport,
            event_hooks={"request": [async_guard(allow_private)]},
            trust_env=False,
        )

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    # -- public ------------------------------------------------------------------------------
    async def home(self) -> str:
        """Load the home page: its cookies authenticate the API; its HTML holds the tree."""
        resp = await self._request(self.base_url, kind="home")
        self._cookie_gen += 1
        return resp.text

    async def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """An API answer as JSON; malformed bodies are retried, then FetchError with the body."""
        url = self._absolute(path)
        for attempt in range(self.p.retries + 1):
            resp = await self._request(url, kind="api", params=params)
            try:
                return json.loads(resp.content)
            except (ValueError, UnicodeDecodeError):
                self.settle(url, params)  # a journaled copy must not answer the retry
                if attempt == self.p.retries:
                    raise FetchError("malformed_json", resp.content) from None
                self.retried += 1
                await asyncio.sleep(self._backoff(attempt + 1))
        raise AssertionError("unreachable")

    async def get_bytes(self, url: str) -> bytes:
        """A photo's bytes; its URL is used exactly as given (signature included)."""
        if not url.startswith(("http://", "https://", "/")):
            raise FetchError("bad_url")
        return (await self._request(self._absolute(url), kind="photo")).content

    def settle(self, url: str, params: dict[str, Any] | None = None) -> None:
        """What the crawl made of the answer to `url` is committed: a journaling transport
        (`wire.WireTransport`) may forget it."""
        settle = getattr(self._transport, "settle", None)
        if settle is not None:
            request = self.client.build_request("GET", self._absolute(url), params=params)
            settle("GET", str(request.url))

    # -- machinery ---------------------------------------------------------------------------
    def _absolute(self, url: str) -> str:
        if url.startswith(("http://", "https://")):
            return url
        return urljoin(self.base_url, url.lstrip("/"))

    def _backoff(self, attempt: int) -> float:
        return min(60.0, self.p.backoff * 2 ** (attempt - 1)) * (0.5 + random.random())

    async def _count(self) -> None:
        """Count this request against --max-requests (API and photos alike)."""
        async with self._budget_lock:
            if self.p.max_requests is not None and self.requests >= self.p.max_requests:
                raise BudgetSpent
            self.requests += 1

    def limiter(self, kind: str, url: str) -> Limiter:
        """The budget a request draws on: the API's, or its photo host's."""
        return self.photos(urlsplit(url).netloc) if kind == "photo" else self.api

    def _headers(self, kind: str, url: str) -> dict[str, str]:
        headers = dict(api.HOME_HEADERS if kind == "home" else api.HEADERS)
        if kind == "api" and self.cookies and urlsplit(url).netloc == self.host:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return headers

    def _keep_cookies(self, resp: httpx.Response) -> None:
        # `name=value; attributes`: parsed by hand, as SimpleCookie silently drops values with
        # characters it dislikes, and a session cookie can hold anything.
        for header in resp.headers.get_list("set-cookie"):
            name, sep, value = header.split(";", 1)[0].partition("=")
            if sep and name.strip():
                self.cookies[name.strip()] = value.strip()

    async def _refresh_cookie(self, seen_gen: int) -> None:
        async with self._cookie_lock:
            if self._cookie_gen == seen_gen:  # nobody refreshed it meanwhile
                await self.home()

    async def _request(
        self, url: str, kind: str, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        tries = refreshes = 0
        walled = False
        limiter = self.limiter(kind, url)
        while True:
            await self._count()
            gen = self._cookie_gen
            try:
                async with limiter.slot():
                    resp = await self.client.get(
                        url, params=params, headers=self._headers(kind, url)
                    )
            except httpx.TimeoutException:
                reason = "timeout"
            except (httpx.TransportError, httpx.DecodingError) as exc:
                reason = f"network: {type(exc).__name__}"
            except UrlError as exc:  # the address guard, before any connection
                if kind == "photo" and exc.refused:
                    raise FetchError("refused_address") from exc
                if exc.refused:
                    raise
                reason = "network: cannot resolve host"
            else:
                if urlsplit(str(resp.url)).netloc == self.host:
                    self._keep_cookies(resp)
                status = resp.status_code
                if status < 300:
                    return resp
                code = api.auth_error_code(resp.content) if status == 403 else None
                if kind == "api" and (status == 401 or code == 100):
                    if refreshes >= self.p.cookie_refreshes:
                        raise FetchError("unauthorized")
                    refreshes += 1
                    await self._refresh_cookie(gen)
                    continue
                if status == 403 and code is None and _is_html(resp):
                    if walled:
                        raise Blocked(
                            f"the site's bot protection blocks this address (403 on {url} after "
                            f"a {self.p.block_pause:g}s pause). The state is kept: wait (minutes "
                            "to hours), then re-run the same command with a larger --delay."
                        )
                    walled = True
                    limiter.pause(self.p.block_pause)
                    continue
                if status == 429:
                    reason, wait = "rate_limited", _retry_after(resp, self.p.max_retry_after)
                elif status >= 500:
                    reason, wait = f"http_{status}", None
                elif status == 404:
                    raise FetchError("not_found", resp.content)
                elif status == 403:
                    raise FetchError("forbidden", resp.content)
                else:
                    raise FetchError(f"http_{status}", resp.content)
                tries += 1
                if tries > self.p.retries:
                    raise FetchError(reason)
                self.retried += 1
                await asyncio.sleep(wait if wait is not None else self._backoff(tries))
                continue
            tries += 1
            if tries > self.p.retries:
                raise FetchError(reason)
            self.retried += 1
            await asyncio.sleep(self._backoff(tries))


def connections(p: Politeness) -> int:
    """Connections a crawl's client may hold: both budgets' requests at once, and a spare."""
    return p.concurrency + p.photo_concurrency + 2


def _is_html(resp: httpx.Response) -> bool:
    ctype = resp.headers.get("content-type", "")
    return "html" in ctype or resp.content.lstrip()[:1] == b"<"


def _retry_after(resp: httpx.Response, cap: float) -> float | None:
    """Seconds the server asked us to wait (capped), or None to use our own backoff."""
    value = resp.headers.get("retry-after", "").strip()
    try:
        return max(0.0, min(cap, float(value)))
    except ValueError:
        return None

"""`crawl_shop(out, ShopConfig(sitemap=URL))`: a shop's product pages into a dataset dir, resumably.

The crawl reads the sitemap (and the sitemaps of a sitemap index), honours the robots.txt of
every host it asks for a page (its Disallow rules and Crawl-delay), reads each product page's
schema.org JSON-LD (`jsonld.py`), then downloads the product images into the content-addressed
store. It runs on the Vinted crawl's machinery: a politeness budget per host (`_polite.Limiter`:
delay and concurrency), the address guard on every request, the state in `<out>/crawl.db`
(`state.py`, one transaction per step), and the network helper (`vinted/wire.py`) that finishes
the requests in flight when the crawl is killed, so a re-run asks for nothing it had. The
manifest is rebuilt from the state every `save_every` images and at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib import robotparser
from urllib.parse import urlsplit

import httpx

from fashion_tagger import _progress, storage
from fashion_tagger._net import UrlError
from fashion_tagger._version import __version__
from fashion_tagger.dataset import images, manifest, store
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.manifest import DatasetInfo, ManifestRow, SourceRef
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.sources._download import MAX_IMAGE_BYTES
from fashion_tagger.sources._polite import Limiters, async_guard
from fashion_tagger.sources.shop import jsonld, sitemap
from fashion_tagger.sources.shop.state import ShopState
from fashion_tagger.sources.vinted.crawler import CrawlError, crawl_lock, shrink
from fashion_tagger.sources.vinted.session import BudgetSpent, FetchError, Politeness
from fashion_tagger.sources.vinted.wire import WireTransport, pending_answers

USER_AGENT = f"fashion-tagger/{__version__} (dataset crawler; honours robots.txt)"
ROBOTS_AGENT = "fashion-tagger"
JOURNAL_DIR = ".crawl-journal"
MAX_PAGE_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 4
"""Sitemap indexes nested deeper than this are not followed."""


@dataclass(frozen=True)
class ShopConfig:
    """What to crawl and how.

    Attributes:
        sitemap: URL of the shop's sitemap or sitemap index.
        image_size: longest side of stored images (re-encoded as JPEG); None keeps the files.
        quality: JPEG quality when `image_size` is set.
        max_images: images kept per product (its first ones).
        save_every: rewrite the manifest after this many new images.
        politeness: delay and concurrency per host, retries, timeouts, --max-requests.
        allow_private_hosts: let the crawl reach private and loopback addresses (a test shop on
            127.0.0.1); without it they are refused before connecting.
    """

    sitemap: str
    image_size: int | None = None
    quality: int = 90
    max_images: int = 10
    save_every: int = 200
    politeness: Politeness = field(default_factory=Politeness)
    allow_private_hosts: bool = False

    def __post_init__(self) -> None:
        if not self.sitemap.startswith(("http://", "https://")):
            raise FashionTaggerError("--sitemap must be an http:// or https:// URL")
        if self.image_size is not None and not 16 <= self.image_size <= 4096:
            raise FashionTaggerError("--image-size must be between 16 and 4096 pixels")
        if not 1 <= self.quality <= 95:
            raise FashionTaggerError("--quality must be between 1 and 95")
        if self.max_images < 1 or self.save_every < 1:
            raise FashionTaggerError("--max-images and --save-every must be at least 1")


@dataclass
class ShopResult:
    """What a run did; `stopped` is `done`, `max_requests` or `interrupted`."""

    dataset: Dataset
    stopped: str
    requests: int = 0
    retried: int = 0
    sitemaps: int = 0
    pages: int = 0
    products: int = 0
    no_product: int = 0
    failed_pages: int = 0
    images: int = 0
    failed_images: int = 0
    replayed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dataset"] = str(self.dataset.root)
        d["rows"] = len(self.dataset)
        return d


class ShopSession:
    """The crawl's HTTP client: a budget per host, the guard, bounded retries with backoff."""

    def __init__(self, pol: Politeness, transport: Any = None, allow_private: bool = False):
        self.p = pol
        self.limiters = Limiters(pol.delay, pol.concurrency)
        self.requests = self.retried = 0
        self._transport = transport
        self._budget = asyncio.Lock()
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(pol.timeout),
            limits=httpx.Limits(max_connections=2 * pol.concurrency + 2),
            follow_redirects=True,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
            event_hooks={"request": [async_guard(allow_private)]},
            trust_env=False,
        )

    async def get(self, url: str, max_bytes: int) -> httpx.Response:
        """A 2xx answer for `url`, or FetchError with a short reason once retries are spent."""
        limiter = self.limiters(urlsplit(url).netloc)
        tries = 0
        while True:
            async with self._budget:
                if self.p.max_requests is not None and self.requests >= self.p.max_requests:
                    raise BudgetSpent
                self.requests += 1
            wait = None
            try:
                async with limiter.slot():
                    resp = await self.client.get(url)
            except httpx.TimeoutException:
                reason = "timeout"
            except (httpx.TransportError, httpx.DecodingError) as exc:
                reason = f"network: {type(exc).__name__}"
            except UrlError as exc:
                if exc.refused:
                    raise FetchError("refused_address", str(exc).encode()) from exc
                reason = "network: cannot resolve host"
            else:
                status = resp.status_code
                if status < 300:
                    if len(resp.content) > max_bytes:
                        raise FetchError("too_large")
                    return resp
                if status == 429:
                    reason, wait = "rate_limited", _retry_after(resp, self.p.max_retry_after)
                elif status >= 500:
                    reason = f"http_{status}"
                else:
                    named = {404: "not_found", 410: "gone", 401: "forbidden", 403: "forbidden"}
                    raise FetchError(named.get(status, f"http_{status}"))
            tries += 1
            if tries > self.p.retries:
                raise FetchError(reason)
            self.retried += 1
            backoff = min(60.0, self.p.backoff * 2 ** (tries - 1))
            await asyncio.sleep(wait if wait is not None else backoff)

    def settle(self, url: str) -> None:
        """The answer to `url` is committed: the journaling transport may forget it."""
        settle = getattr(self._transport, "settle", None)
        if settle is not None:
            settle("GET", str(httpx.URL(url)))


def _retry_after(resp: httpx.Response, cap: float) -> float | None:
    try:
        return max(0.0, min(cap, float(resp.headers.get("retry-after", "").strip())))
    except ValueError:
        return None


class Robots:
    """robots.txt per host, read once per run before any other request to that host."""

    def __init__(self, session: ShopSession) -> None:
        self.session = session
        self.rules: dict[str, robotparser.RobotFileParser] = {}

    async def load(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.netloc in self.rules:
            return
        robots_url = f"{parts.scheme}://{parts.netloc}/robots.txt"
        rules = robotparser.RobotFileParser(robots_url)
        try:
            resp = await self.session.get(robots_url, MAX_PAGE_BYTES)
            self.session.settle(robots_url)
            rules.parse(resp.text.splitlines())
        except FetchError as exc:
            if exc.reason not in ("not_found", "gone", "forbidden", "too_large"):
                raise  # unreachable: RFC 9309 says assume everything is disallowed
            rules.parse([])  # no robots.txt: everything is allowed
        delay = rules.crawl_delay(ROBOTS_AGENT)
        if delay:
            limiter = self.session.limiters(parts.netloc)
            limiter.delay = max(limiter.delay, float(delay))
        self.rules[parts.netloc] = rules

    def allowed(self, url: str) -> bool:
        rules = self.rules.get(urlsplit(url).netloc)
        return rules is None or rules.can_fetch(ROBOTS_AGENT, url)


async def _pool(items: list[str], work: Any, n: int, stop: list[str]) -> None:
    it = iter(items)

    async def worker() -> None:
        for item in it:
            if stop:
                return
            try:
                await work(item)
            except BudgetSpent:
                stop.append("max_requests")

    await asyncio.gather(*(worker() for _ in range(max(1, n))))


class _Run:
    """One run: the session, robots, the state and this run's counters."""

    def __init__(self, out: Path, config: ShopConfig, state: ShopState, progress: bool) -> None:
        self.out, self.config, self.state, self.progress = out, config, state, progress
        self.stop: list[str] = []
        self.result = ShopResult(dataset=None, stopped="done")  # type: ignore[arg-type]
        self.unsaved = 0

    async def run(self, session: ShopSession) -> None:
        robots = Robots(session)
        try:
            await robots.load(self.config.sitemap)
        except FetchError as exc:
            host = urlsplit(self.config.sitemap).netloc
            raise _unreachable(f"http://{host}/robots.txt", exc, self.out) from exc
        self.state.add_sitemap(self.config.sitemap, 0)
        await self._sitemaps(session, robots)
        if self.stop:
            return
        pages = self.state.pages_to_fetch(robots.allowed)
        n = self.config.politeness.concurrency
        with _progress.bar("product pages", len(pages), self.progress) as bar:
            await _pool(pages, lambda u: self._page(session, robots, u, bar), n, self.stop)
        if self.stop:
            return
        todo = self.state.images_to_fetch()
        with _progress.bar("images", len(todo), self.progress) as bar:
            await _pool(todo, lambda u: self._image(session, robots, u, bar), 2 * n, self.stop)

    async def _sitemaps(self, session: ShopSession, robots: Robots) -> None:
        tried: set[str] = set()
        while todo := [s for s in self.state.sitemaps_to_read() if s[0] not in tried]:
            for url, depth in todo:
                tried.add(url)
                try:
                    resp = await session.get(url, sitemap.MAX_BYTES)
                    parsed = sitemap.parse(resp.content, url)
                except BudgetSpent:
                    self.stop.append("max_requests")
                    return
                except FetchError as exc:
                    self.state.sitemap_failed(url, exc.reason)
                    if depth == 0:  # the crawl cannot go on without its sitemap
                        raise _unreachable(url, exc, self.out) from exc
                    continue
                except sitemap.SitemapError as exc:
                    self.state.sitemap_failed(url, f"bad_sitemap: {exc}")
                    session.settle(url)
                    if depth == 0:
                        raise
                    continue
                locs = parsed.locs if depth < MAX_DEPTH or parsed.kind == "urlset" else []
                if parsed.kind == "urlset":
                    for host in dict.fromkeys(urlsplit(u).netloc for u in locs):
                        await robots.load(f"{urlsplit(url).scheme}://{host}/")
                self.state.record_sitemap(url, parsed.kind, locs, depth, robots.allowed)
                session.settle(url)
                self.result.sitemaps += 1

    async def _page(
        self, session: ShopSession, robots: Robots, url: str, bar: _progress.Bar
    ) -> None:
        try:
            await robots.load(url)
            resp = await session.get(url, MAX_PAGE_BYTES)
        except FetchError as exc:
            self.state.page_failed(url, exc.reason)
            self.result.failed_pages += 1
            bar.advance()
            return
        found = jsonld.product(resp.text, str(resp.url))
        if found is not None:
            found.images = found.images[: self.config.max_images]
            self.result.products += 1
        else:
            self.result.no_product += 1
        self.state.record_page(url, found)
        session.settle(url)
        self.result.pages += 1
        bar.advance()

    async def _image(
        self, session: ShopSession, robots: Robots, url: str, bar: _progress.Bar
    ) -> None:
        bar.advance()
        try:
            await robots.load(url)
            if not robots.allowed(url):
                raise FetchError("forbidden")
            data = (await session.get(url, MAX_IMAGE_BYTES)).content
            rel, sha, w, h = await asyncio.to_thread(self._store, data)
        except FetchError as exc:
            self.state.image_failed(url, exc.reason)
            self.result.failed_images += 1
            return
        except images.ImageError:
            self.state.image_failed(url, "corrupt_image")
            session.settle(url)
            self.result.failed_images += 1
            return
        self.state.image_done(url, rel, sha, w, h)
        session.settle(url)
        self.result.images += 1
        self.unsaved += 1
        if self.unsaved >= self.config.save_every:
            self.unsaved = 0
            write_dataset(self.out, self.state, self.config)

    def _store(self, data: bytes) -> tuple[str, str, int, int]:
        """Validate (a full decode, bombs refused), optionally shrink, store once."""
        if self.config.image_size:
            data, w, h = shrink(data, self.config.image_size, self.config.quality)
            sha = hashlib.sha256(data).hexdigest()
            return store.put(self.out, sha, "jpg", data), sha, w, h
        info = images.probe(data)
        return (
            store.put(self.out, info.sha256, info.ext, data),
            info.sha256,
            info.width,
            info.height,
        )


def rows_from_state(state: ShopState) -> list[ManifestRow]:
    """One manifest row per stored image of a product page."""
    rows = []
    for page, product, image_url, image, sha, w, h in state.done_images():
        rows.append(
            ManifestRow(
                image=image,
                sha256=sha,
                item_id=product.item_id,
                labels=list(product.labels),
                attributes=[f"brand={product.brand}"] if product.brand else [],
                source="shop",
                source_url=page,
                width=w,
                height=h,
                meta={**product.meta(page), "image_url": image_url},
            )
        )
    return rows


def write_dataset(out: Path, state: ShopState, config: ShopConfig) -> Dataset:
    """Rebuild items.parquet and dataset.json from the state, atomically."""
    created = state.get_meta("created") or manifest.now()
    info = DatasetInfo(
        name=out.resolve().name,
        created=created,
        sources=(SourceRef("shop", config.sitemap, created),),
        crawl={"sitemap": config.sitemap, "image_size": config.image_size, "state": "crawl.db"},
    )
    return Dataset.create(out, manifest.rows_to_table(rows_from_state(state)), info)


def _unreachable(url: str, exc: FetchError, out: Path) -> CrawlError:
    """One line naming the host, for a request the crawl cannot go on without."""
    if exc.reason == "refused_address":  # the guard's own message names the opt-in flag
        return CrawlError(
            f"{urlsplit(url).netloc}: {exc.body.decode()}; the crawl state in "
            f"{out / 'crawl.db'} is kept: re-run the same command (with that flag if the host "
            "is yours)"
        )
    return CrawlError(
        f"{urlsplit(url).netloc}: {exc.reason} (after retries) on {url}; the crawl state in "
        f"{out / 'crawl.db'} is kept: re-run the same command"
    )


def crawl_shop(out: str | Path, config: ShopConfig, *, progress: bool = True) -> ShopResult:
    """Crawl the shop behind `config.sitemap` into the dataset dir `out`; re-run to resume.

    Raises:
        CrawlError: the sitemap or its host's robots.txt cannot be read (one line naming the
            host; the state is kept), another crawl holds `out`, or `out` is another dataset.
    """
    if storage.is_url(out):
        raise CrawlError(
            "a crawl keeps its state (crawl.db) in a local dir: give --out a local dir"
        )
    out = Path(out)
    if (out / manifest.INFO_FILE).is_file() and not (out / "crawl.db").is_file():
        raise CrawlError(f"{out} holds a dataset that was not crawled; give --out a new dir")
    pol = config.politeness
    with crawl_lock(out, wait=2 * pol.timeout + 5) as lock_fd:
        state = ShopState(out)
        try:
            if state.get_meta("created") is None:
                state.set_meta("created", manifest.now())
            site = state.get_meta("sitemap")
            if site is None:
                state.set_meta("sitemap", config.sitemap)
            elif site != config.sitemap:
                raise CrawlError(f"{out} is a crawl of {site}; use another --out per sitemap")
            result = _crawl(out, config, state, progress, lock_fd)
        finally:
            state.close()
    if result.images == 0 and not len(result.dataset) and result.stopped == "done":
        raise CrawlError(
            f"no product image was stored from {config.sitemap} ({result.pages} pages read, "
            f"{result.products} with a Product, {result.failed_pages} failed, "
            f"{result.failed_images} images failed); see `fashion-tagger crawl status {out}`"
        )
    return result


def _crawl(
    out: Path, config: ShopConfig, state: ShopState, progress: bool, lock_fd: int
) -> ShopResult:
    pol = config.politeness
    run = _Run(out, config, state, progress)
    started = time.monotonic()
    wire = WireTransport(out / JOURNAL_DIR, pol.timeout, 2 * pol.concurrency + 2, (lock_fd,))
    session = ShopSession(pol, transport=wire, allow_private=config.allow_private_hosts)

    async def main() -> None:
        async with session.client:
            try:
                await run.run(session)
            except BudgetSpent:
                run.stop.append("max_requests")

    stopped = "interrupted"
    try:
        asyncio.run(main())
        stopped = run.stop[0] if run.stop else "done"
        if stopped == "done":  # what is left answered requests no run will make again
            shutil.rmtree(out / JOURNAL_DIR, ignore_errors=True)
    finally:
        result = run.result
        result.stopped = stopped
        result.requests, result.retried = session.requests, session.retried
        result.replayed = wire.replayed
        result.seconds = round(time.monotonic() - started, 3)
        result.dataset = write_dataset(out, state, config)
        state.set_meta("last_run", {**result.to_dict(), "finished": manifest.now()})
    return result


def shop_status(out: str | Path) -> dict[str, Any]:
    """Progress and failures of the shop crawl in `out`, from its state file."""
    out = Path(out)
    state = ShopState(out)
    try:
        summary = state.summary()
    finally:
        state.close()
    summary["dir"] = str(out)
    summary["journaled_answers"] = pending_answers(out / JOURNAL_DIR)
    if (out / manifest.ITEMS_FILE).is_file():
        summary["dataset_images"] = manifest.read_items(out).num_rows
    return summary

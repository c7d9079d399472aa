"""`crawl_vinted(out, config)`: build a dataset dir from the marketplace, resumably.

The crawl runs in three passes over the state in `<out>/crawl.db`: search pages per category
(until `per_category` listings or the category runs out), item details (only with
`all_photos`), then photos (downloaded, resized, stored once in the content-addressed store).
Each step commits its result before the next starts, so re-running the same command after a
crash, a Ctrl-C, `--max-requests` or the bot wall carries on where it stopped; the HTTP itself
runs in a helper process (`wire.py`) that finishes the requests in flight when the crawl is
killed and journals their answers, so the next run does not ask for them again. The manifest
(items.parquet + dataset.json) is rebuilt from the state every `save_every` photos and at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import io
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from PIL import Image

from fashion_tagger import _progress, storage
from fashion_tagger._net import UrlError
from fashion_tagger.dataset import images, manifest, store
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.manifest import DatasetInfo, ManifestRow, SourceRef
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.sources.vinted import api, categories
from fashion_tagger.sources.vinted.categories import DEFAULT_EXCLUDE
from fashion_tagger.sources.vinted.session import (
    Blocked,
    BudgetSpent,
    FetchError,
    Politeness,
    Session,
    connections,
)
from fashion_tagger.sources.vinted.state import DonePhoto, State, crawl_kind
from fashion_tagger.sources.vinted.wire import WireTransport, pending_answers

UNISEX_RULES = ("relabel", "keep-first", "keep-both")
LEVELS = ["department", "group", "category", "subcategory", "type"]
LOCK_FILE = ".crawl.lock"
JOURNAL_DIR = ".crawl-journal"

T = TypeVar("T")


@dataclass(frozen=True)
class CrawlConfig:
    """What to crawl and how to store it.

    Attributes:
        domain: the site's top-level domain (`fr`, `com`, `de`, `co.uk`...).
        base_url: overrides `domain` (tests point it at a fake server on 127.0.0.1).
        per_category: listings to keep per leaf category.
        categories: ids, titles or `A > B` paths to crawl; empty for every fashion leaf.
        exclude: titles of subtrees to skip; empty keeps every branch, non-fashion included.
        image_size: longest side of the stored photos, in pixels.
        quality: JPEG quality of the stored photos.
        all_photos: every photo of a listing (one item-detail request each), not just the main.
        unisex: a listing found under both a Women and a Men leaf is kept once labelled
            `Unisex > ...` (`relabel`), kept under its first category (`keep-first`), or kept
            once per category (`keep-both`).
        save_every: rewrite the manifest after this many new photos.
        politeness: delays, concurrency, retries and bounds of the HTTP session.
        allow_private_hosts: let the crawl reach private and loopback addresses (a fake
            marketplace on 127.0.0.1); without it they are refused before connecting.
    """

    domain: str = "fr"
    base_url: str = ""
    per_category: int = 300
    categories: tuple[str, ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    image_size: int = 224
    quality: int = 50
    all_photos: bool = False
    unisex: str = "relabel"
    save_every: int = 200
    politeness: Politeness = field(default_factory=Politeness)
    allow_private_hosts: bool = False

    def __post_init__(self) -> None:
        if self.per_category < 1:
            raise FashionTaggerError("--per-category must be at least 1")
        if not 16 <= self.image_size <= 4096:
            raise FashionTaggerError("--image-size must be between 16 and 4096 pixels")
        if not 1 <= self.quality <= 95:
            raise FashionTaggerError("--quality must be between 1 and 95")
        if self.save_every < 1:
            raise FashionTaggerError("--save-every must be at least 1")
        if self.unisex not in UNISEX_RULES:
            raise FashionTaggerError(f"--unisex must be one of {', '.join(UNISEX_RULES)}")
        if not self.base_url and self.domain.strip(".").lower() not in api.DOMAINS:
            raise FashionTaggerError(
                f"--domain {self.domain!r} is not known; use one of {', '.join(api.DOMAINS)} "
                "or give --base-url"
            )
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise FashionTaggerError("--base-url must start with http:// or https://")

    @property
    def url(self) -> str:
        return self.base_url or api.base_url_for(self.domain)


@dataclass
class CrawlResult:
    """What a run did. `stopped` is `done`, `max_requests`, `blocked` or `interrupted`;
    `replayed` counts answers a killed run had received, taken from the journal, not asked
    again (`wire.py`)."""

    dataset: Dataset
    stopped: str
    requests: int = 0
    retried: int = 0
    pages: int = 0
    listings: int = 0
    photos: int = 0
    failed_photos: int = 0
    replayed: int = 0
    seconds: float = 0.0
    listing_seconds: float = 0.0
    photo_seconds: float = 0.0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dataset"] = str(self.dataset.root)
        d["images"] = len(self.dataset)
        return d


class CrawlError(FashionTaggerError):
    """The crawl cannot start (no category tree, another crawl running...)."""


# -- photos ------------------------------------------------------------------------------------
def shrink(data: bytes, size: int, quality: int) -> tuple[bytes, int, int]:
    """Decode safely, scale so the longest side is `size`, re-encode as JPEG `quality`."""
    img = images.decode(data, size=size)
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    if new != img.size:
        img = img.resize(new, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), new[0], new[1]


def _store_photo(root: Path, data: bytes, size: int, quality: int) -> tuple[str, str, int, int]:
    jpeg, w, h = shrink(data, size, quality)
    sha = hashlib.sha256(jpeg).hexdigest()
    return store.put(root, sha, "jpg", jpeg), sha, w, h


# -- the manifest ------------------------------------------------------------------------------
def labels_for(photo: DonePhoto, unisex: str) -> list[list[str]]:
    """The label path(s) of a photo under the unisex rule (see `CrawlConfig.unisex`)."""
    cats = photo.categories
    if not cats:
        return []
    first = list(cats[0][0])
    genders = {g for _, g in cats}
    if unisex == "relabel" and {"women", "men"} <= genders:
        return [["Unisex", *first[1:]]]
    if unisex == "keep-both":
        out: list[list[str]] = []
        for path, _ in cats:
            if list(path) not in out:
                out.append(list(path))
        return out
    return [first]


def _attributes(listing: dict[str, Any]) -> list[str]:
    pairs = (("brand", "brand"), ("size", "size"), ("condition", "condition"))
    return [f"{name}={listing[key]}" for name, key in pairs if listing.get(key)]


def rows_from_state(state: State, unisex: str, base_url: str) -> list[ManifestRow]:
    """One manifest row per stored photo (and label path), from the crawl state."""
    rows = []
    for photo in state.done_photos():
        listing = photo.listing
        url = listing.get("url") or f"{base_url.rstrip('/')}/items/{photo.listing_id}"
        meta = {
            **listing,
            "photo_url": photo.url,
            "photo_position": photo.position,
            "found_in": [" > ".join(p) for p, _ in photo.categories],
        }
        for labels in labels_for(photo, unisex):
            rows.append(
                ManifestRow(
                    image=photo.image,
                    sha256=photo.sha256,
                    item_id=photo.listing_id,
                    labels=labels,
                    attributes=_attributes(listing),
                    source="vinted",
                    source_url=url,
                    width=photo.width,
                    height=photo.height,
                    meta=meta,
                )
            )
    return rows


def write_dataset(out: Path, state: State, config: CrawlConfig) -> Dataset:
    """Rebuild items.parquet and dataset.json from the state, atomically."""
    rows = rows_from_state(state, config.unisex, config.url)
    created = state.get_meta("created") or manifest.now()
    info = DatasetInfo(
        name=out.resolve().name,
        levels=tuple(LEVELS),
        created=created,
        sources=(SourceRef("vinted", config.url, created),),
        crawl={
            "per_category": config.per_category,
            "image_size": config.image_size,
            "quality": config.quality,
            "all_photos": config.all_photos,
            "unisex": config.unisex,
            "state": "crawl.db",
        },
    )
    return Dataset.create(out, manifest.rows_to_table(rows), info)


# -- the crawl ---------------------------------------------------------------------------------
@contextlib.contextmanager
def crawl_lock(out: Path, wait: float) -> Iterator[int]:
    """Hold `out`'s crawl lock (its file descriptor, shared with the network helper, which
    keeps it while it drains); waits up to `wait` seconds for a killed crawl's helper."""
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    with open(out / LOCK_FILE, "w") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CrawlError(
                        f"another crawl is writing {out}; wait for it or stop it first"
                    ) from None
                time.sleep(0.05)
        yield f.fileno()


async def _fetch_tree(session: Session, state: State) -> list[api.Node]:
    page = await session.home()
    roots = api.tree_from_html(page)
    if roots:
        return roots
    state.record_unparsed(session.base_url, "no catalogTree in the home page", page.encode())
    try:
        roots = api.tree_from_initializers(await session.get_json(api.INITIALIZERS_PATH))
        session.settle(api.INITIALIZERS_PATH)  # read afresh by every run, like the home page
    except FetchError as exc:
        raise CrawlError(
            f"no category tree in {session.base_url} (home page and "
            f"{api.INITIALIZERS_PATH}: {exc.reason}); the site may have changed: see the "
            "`unparsed` table of crawl.db and fashion_tagger/sources/vinted/api.py"
        ) from exc
    if not roots:
        raise CrawlError(f"no category tree in {session.base_url}; see crawl.db `unparsed`")
    return roots


async def _pool(
    items: Iterable[T], work: Callable[[T], Awaitable[None]], n: int, stop: list[str]
) -> None:
    """Run `work` over `items` with `n` workers until done or `stop` holds a reason."""
    it = iter(items)

    async def worker() -> None:
        for item in it:
            if stop:
                return
            try:
                await work(item)
            except BudgetSpent:
                stop.append("max_requests")
            except Blocked as exc:
                stop.append(f"blocked:{exc}")

    await asyncio.gather(*(worker() for _ in range(n)))


class _Run:
    """One run of the crawl: the session, the state and the counters of this run."""

    def __init__(self, out: Path, config: CrawlConfig, state: State, progress: bool) -> None:
        self.out, self.config, self.state, self.progress = out, config, state, progress
        self.stop: list[str] = []
        self.result = CrawlResult(dataset=None, stopped="done")  # type: ignore[arg-type]
        self.unsaved = 0

    async def run(self, session: Session) -> None:
        cfg, state = self.config, self.state
        roots = await _fetch_tree(session, state)
        fashion = categories.leaves(roots, cfg.exclude)
        chosen = categories.select(fashion, roots, cfg.categories)
        if not chosen:
            raise CrawlError("no category left to crawl; check --categories and --exclude")
        state.add_categories(chosen)
        state.reopen_full(cfg.per_category)
        wanted = {leaf.id for leaf in chosen}
        todo = [c for c in state.categories_to_crawl() if c in wanted]
        n = cfg.politeness.concurrency
        started = time.monotonic()
        with _progress.bar("listings", len(todo) * cfg.per_category, self.progress) as bar:
            await _pool(todo, lambda c: self._category(session, c, bar), n, self.stop)
        self.result.listing_seconds = round(time.monotonic() - started, 3)
        if cfg.all_photos and not self.stop:
            await _pool(
                state.listings_needing_detail(), lambda i: self._detail(session, i), n, self.stop
            )
        if self.stop:
            return
        photos = state.photos_to_fetch()
        # as many workers as the photo budgets let through: the limiters do the pacing
        n = cfg.politeness.photo_concurrency
        started = time.monotonic()
        with _progress.bar("photos", len(photos), self.progress) as bar:
            await _pool(photos, lambda p: self._photo(session, p, bar), n, self.stop)
        self.result.photo_seconds = round(time.monotonic() - started, 3)

    async def _category(self, session: Session, cid: int, bar: _progress.Bar) -> None:
        cfg, state = self.config, self.state
        cat = state.category(cid)
        page, have = cat.next_page, cat.listings
        bar.advance(min(have, cfg.per_category))
        while not self.stop:
            url = api.ITEMS_PATH
            params = api.items_params(cid, page)
            try:
                payload = await session.get_json(url, params)
                parsed = api.parse_page(payload)
            except FetchError as exc:
                if exc.body:
                    state.record_unparsed(
                        f"{url}?catalog_ids={cid}&page={page}", exc.reason, exc.body
                    )
                state.record_page_error(cid, page, exc.reason)
                return
            except api.ParseError as exc:
                state.record_unparsed(f"{url}?catalog_ids={cid}&page={page}", str(exc), b"")
                state.record_page_error(cid, page, "bad_shape")
                session.settle(url, params)
                return
            now, finished = state.record_page(
                cid, page, parsed.listings, parsed.total_pages, cfg.per_category
            )
            session.settle(url, params)
            bar.advance(now - have)
            self.result.pages += 1
            self.result.listings += now - have
            have = now
            if finished:
                bar.advance(cfg.per_category - have)
                return
            page += 1

    async def _detail(self, session: Session, listing_id: str) -> None:
        path = api.DETAIL_PATHS[0].format(id=listing_id)
        try:
            detail = api.parse_detail(await session.get_json(path))
        except FetchError as exc:
            self.state.record_detail(listing_id, None, exc.reason)
            return
        if detail is None:
            self.state.record_detail(listing_id, None, "bad_shape")
        else:
            self.state.record_detail(listing_id, detail.photos)
        session.settle(path)

    async def _photo(self, session: Session, job: tuple[str, str], bar: _progress.Bar) -> None:
        url, _ = job
        try:
            data = await session.get_bytes(url)
        except FetchError as exc:
            self.state.photo_failed(url, exc.reason)
            self.result.failed_photos += 1
            bar.advance()
            return
        try:
            rel, sha, w, h = await asyncio.to_thread(
                _store_photo, self.out, data, self.config.image_size, self.config.quality
            )
        except images.ImageError as exc:
            self.state.photo_failed(url, "corrupt_image")
            self.state.record_unparsed(url, f"corrupt_image: {exc}", b"")
            self.result.failed_photos += 1
            session.settle(url)
            bar.advance()
            return
        self.state.photo_done(url, rel, sha, w, h)
        session.settle(url)
        self.result.photos += 1
        bar.advance()
        self.unsaved += 1
        if self.unsaved >= self.config.save_every:
            self.unsaved = 0
            write_dataset(self.out, self.state, self.config)


def crawl_vinted(
    out: str | Path, config: CrawlConfig | None = None, *, progress: bool = True
) -> CrawlResult:
    """Crawl the marketplace into the dataset dir `out`; re-run the same call to resume.

    Raises:
        Blocked: the bot wall stayed up after a pause; the state and manifest are saved.
        CrawlError: no category tree, nothing to crawl, or another crawl holds `out`.
    """
    if storage.is_url(out):
        raise CrawlError(
            f"a crawl keeps its state (crawl.db) in a local dir, not at {storage.normalize(out)}: "
            "give --out a local dir"
        )
    out = Path(out)
    config = config or CrawlConfig()
    if (out / manifest.INFO_FILE).is_file() and not (out / "crawl.db").is_file():
        raise CrawlError(
            f"{out} holds a dataset that was not crawled; give --out a new or crawled dir"
        )
    pol = config.politeness
    with crawl_lock(out, wait=2 * pol.timeout + 5) as lock_fd:
        state = State(out)
        try:
            if state.get_meta("created") is None:
                state.set_meta("created", manifest.now())
            site = state.get_meta("site")
            if site is None:
                state.set_meta("site", config.url)
            elif site != config.url:
                raise CrawlError(
                    f"{out} is a crawl of {site}, not {config.url}; use another --out per site"
                )
            run = _Run(out, config, state, progress)
            started = time.monotonic()
            wire = WireTransport(
                out / JOURNAL_DIR, pol.timeout, connections(pol), pass_fds=(lock_fd,)
            )
            session = Session(
                config.url, pol, transport=wire, allow_private=config.allow_private_hosts
            )

            async def main() -> None:
                async with session:
                    try:
                        await run.run(session)
                    except BudgetSpent:
                        run.stop.append("max_requests")
                    except Blocked as exc:
                        run.stop.append(f"blocked:{exc}")
                    except FetchError as exc:  # a request the whole run depends on failed
                        raise _unreachable(config.url, exc, out) from exc
                    except UrlError as exc:  # the site itself refused by the address guard
                        raise _refused(config.url, exc, out) from exc

            stopped = "interrupted"
            try:
                asyncio.run(main())
                reason = run.stop[0] if run.stop else "done"
                stopped, _, message = reason.partition(":")
                run.result.message = message
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
        finally:
            state.close()
    if result.stopped == "blocked":
        raise Blocked(result.message)
    return result


def crawl_status(out: str | Path) -> dict[str, Any]:
    """Progress and failures of the crawl in `out`, from its state file."""
    out = Path(out)
    if not (out / "crawl.db").is_file():
        raise CrawlError(f"{out} has no crawl.db: it was not made by `fashion-tagger crawl`")
    if crawl_kind(out) == "shop":
        from fashion_tagger.sources.shop import shop_status

        return shop_status(out)
    state = State(out)
    try:
        summary = state.summary()
    finally:
        state.close()
    summary["dir"] = str(out)
    # answers a killed run received and the next run will use instead of asking again
    summary["journaled_answers"] = pending_answers(out / JOURNAL_DIR)
    if (out / manifest.ITEMS_FILE).is_file():
        summary["dataset_images"] = manifest.read_items(out).num_rows
    return summary


def _unreachable(url: str, exc: FetchError, out: Path | None = None) -> CrawlError:
    """One line for a request the crawl cannot go on without (the home page, the tree)."""
    kept = (
        f"; the crawl state in {out / 'crawl.db'} is kept: re-run the same command" if out else ""
    )
    return CrawlError(f"{urlsplit(url).netloc or url}: {exc.reason} (after retries){kept}")


def _refused(url: str, exc: UrlError, out: Path) -> CrawlError:
    """One line for a site the address guard refuses (it names the opt-in flag)."""
    return CrawlError(
        f"{urlsplit(url).netloc or url}: {exc}; the crawl state in {out / 'crawl.db'} is kept: "
        "re-run the same command (with that flag if the host is yours)"
    )


async def _list(config: CrawlConfig) -> list[str]:
    async with Session(
        config.url, config.politeness, allow_private=config.allow_private_hosts
    ) as session:
        try:
            page = await session.home()
        except FetchError as exc:
            raise _unreachable(config.url, exc) from exc
        roots = api.tree_from_html(page)
        if not roots:
            try:
                roots = api.tree_from_initializers(await session.get_json(api.INITIALIZERS_PATH))
            except FetchError:
                roots = []
    if not roots:
        raise CrawlError(f"no category tree found at {config.url}")
    kept = [leaf.id for leaf in categories.leaves(roots, config.exclude)]
    return categories.render_tree(roots, kept)


def list_categories(config: CrawlConfig | None = None) -> list[str]:
    """The site's category tree as indented lines with item counts (one home page request)."""
    return asyncio.run(_list(config or CrawlConfig()))

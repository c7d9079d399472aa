"""`fashion-tagger crawl vinted|shop|status`: build a dataset dir from a marketplace or a shop."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fashion_tagger.cli._app import PROGRESS, console, crawl_app, fail, print_json
from fashion_tagger.sources.vinted import (
    Blocked,
    CrawlConfig,
    Politeness,
    crawl_vinted,
    list_categories,
)
from fashion_tagger.sources.vinted.categories import DEFAULT_EXCLUDE


def _split(values: list[str] | None) -> tuple[str, ...]:
    """Repeated options, each possibly comma-separated: `--categories 1904,Men --categories 5`."""
    return tuple(v.strip() for value in values or [] for v in value.split(",") if v.strip())


_C = CrawlConfig()
_P = _C.politeness
"""Defaults come from the crawl's config dataclasses (one source of truth)."""
_opt = typer.Option
OUT = _opt(None, "--out", "-o", help="Dataset dir to write (a local dir; resumable).")
DOMAIN = _opt(_C.domain, "--domain", help="Site: fr, com, de, co.uk, es, it...")
BASE_URL = _opt(_C.base_url, "--base-url", help="Site URL; overrides --domain.")
PER_CATEGORY = _opt(_C.per_category, "--per-category", help="Listings per leaf category.")
CATEGORIES = _opt(
    None, "--categories", help="Only these categories: id, title or 'A > B' (repeat)."
)
EXCLUDE = _opt(None, "--exclude", help="Also skip subtrees with this title (repeat).")
KEEP_ALL = _opt(False, "--keep-all", help="Keep non-fashion branches (Home, Beauty, Toys...) too.")
LIST_ONLY = _opt(
    False, "--list-categories", help="Print the category tree with item counts and exit."
)
CONCURRENCY = _opt(_P.concurrency, "--concurrency", help="API requests in flight at once.")
DELAY = _opt(_P.delay, "--delay", help="Seconds between API request starts.")
PHOTO_CONCURRENCY = _opt(
    _P.photo_concurrency,
    "--photo-concurrency",
    help="Photo downloads in flight at once, per image host (its own budget, not the API's).",
)
PHOTO_DELAY = _opt(
    _P.photo_delay, "--photo-delay", help="Seconds between photo download starts, per image host."
)
ALLOW_PRIVATE = _opt(
    False,
    "--allow-private-hosts",
    help="Let the crawl reach private and loopback addresses (a test server on 127.0.0.1).",
)
MAX_REQUESTS = _opt(None, "--max-requests", help="Stop (resumably) after this many requests.")
IMAGE_SIZE = _opt(_C.image_size, "--image-size", help="Longest side of stored photos.")
QUALITY = _opt(_C.quality, "--quality", help="JPEG quality of stored photos.")
ALL_PHOTOS = _opt(
    _C.all_photos, "--all-photos", help="Every photo of a listing (one detail request each)."
)
UNISEX = _opt(
    _C.unisex, "--unisex", help="Listing under Women and Men: relabel|keep-first|keep-both."
)
TIMEOUT = _opt(
    _P.timeout, "--timeout", envvar="FASHION_TAGGER_CRAWL_TIMEOUT", help="Seconds before a retry."
)
BLOCK_PAUSE = _opt(
    _P.block_pause,
    "--block-pause",
    envvar="FASHION_TAGGER_CRAWL_BLOCK_PAUSE",
    help="Seconds to pause when the bot wall answers.",
)
SAVE_EVERY = _opt(
    _C.save_every, "--save-every", help="Rewrite the dataset manifest after this many new photos."
)


@crawl_app.command("vinted")
def crawl_vinted_cmd(
    out: Path = OUT,
    domain: str = DOMAIN,
    base_url: str = BASE_URL,
    per_category: int = PER_CATEGORY,
    categories: list[str] = CATEGORIES,
    exclude: list[str] = EXCLUDE,
    keep_all: bool = KEEP_ALL,
    list_only: bool = LIST_ONLY,
    concurrency: int = CONCURRENCY,
    delay: float = DELAY,
    photo_concurrency: int = PHOTO_CONCURRENCY,
    photo_delay: float = PHOTO_DELAY,
    allow_private_hosts: bool = ALLOW_PRIVATE,
    max_requests: int = MAX_REQUESTS,
    image_size: int = IMAGE_SIZE,
    quality: int = QUALITY,
    all_photos: bool = ALL_PHOTOS,
    unisex: str = UNISEX,
    timeout: float = TIMEOUT,
    block_pause: float = BLOCK_PAUSE,
    save_every: int = SAVE_EVERY,
    progress: bool = PROGRESS,
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON."),
) -> None:
    """Crawl Vinted listings and photos into a dataset dir; re-run the same command to resume.

    API calls and photo downloads have separate politeness budgets (--delay/--concurrency for
    the API, --photo-delay/--photo-concurrency per image host). Exit code 3 means the site's bot
    protection blocked the crawl: the state is kept.

    Example: fashion-tagger crawl vinted --out data/vinted --domain fr --per-category 300
    """
    config = CrawlConfig(
        domain=domain,
        base_url=base_url,
        per_category=per_category,
        categories=_split(categories),
        exclude=() if keep_all else DEFAULT_EXCLUDE + _split(exclude),
        image_size=image_size,
        quality=quality,
        all_photos=all_photos,
        unisex=unisex,
        save_every=save_every,
        allow_private_hosts=allow_private_hosts,
        politeness=Politeness(
            delay=delay,
            concurrency=concurrency,
            photo_delay=photo_delay,
            photo_concurrency=photo_concurrency,
            timeout=timeout,
            block_pause=block_pause,
            max_requests=max_requests,
        ),
    )
    if list_only:
        for line in list_categories(config):
            console.print(line, highlight=False, markup=False)
        return
    if out is None:
        fail("--out DATASET_DIR is required (or use --list-categories)")
    try:
        result = crawl_vinted(out, config, progress=progress)
    except Blocked as exc:
        fail(str(exc), code=3)
        return
    if as_json:
        print_json(result.to_dict())
        return
    console.print(
        f"{result.stopped}: {result.listings} new listings, {result.photos} photos stored "
        f"({result.failed_photos} failed) in {result.requests} requests, {result.seconds:.1f}s; "
        f"{len(result.dataset)} images in [green]{result.dataset.root}[/]"
    )
    if result.stopped != "done":
        console.print("[yellow]stopped early[/]: re-run the same command to continue")


@crawl_app.command("status")
def crawl_status_cmd(
    out: Path = typer.Argument(..., help="Dataset dir of a crawl."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Summarise a crawl's progress and failures from its crawl.db.

    Example: fashion-tagger crawl status data/vinted --json
    """
    from fashion_tagger.sources.vinted import crawl_status

    summary = crawl_status(out)
    if as_json:
        print_json(summary)
        return
    table = Table("stage", "status", "count", title=f"crawl of {out}")
    shop = "sitemaps" in summary
    for stage in ("sitemaps", "pages", "images") if shop else ("categories", "pages", "photos"):
        for status, n in summary[stage].items():
            table.add_row(stage, status, str(n))
    if not shop:
        table.add_row("listings", "total", str(summary["listings"]["total"]))
        table.add_row("listings", "without photo", str(summary["listings"]["without_photo"]))
    console.print(table)
    for stage, errors in summary["failures"].items():
        for error, n in errors.items():
            console.print(f"[red]{stage}[/] failed {n}x: {error}", highlight=False)
    if summary.get("dataset_images") is not None:
        console.print(f"{summary['dataset_images']} images in the dataset manifest")
    if summary["journaled_answers"]:
        console.print(
            f"{summary['journaled_answers']} answers a killed run received wait in the journal; "
            "the next run uses them instead of asking again"
        )


@crawl_app.command("shop")
def crawl_shop_cmd(
    sitemap: str = typer.Option(..., "--sitemap", help="URL of the shop's sitemap (or index)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset dir to write (local; resumable)."),
    delay: float = _opt(_P.delay, "--delay", help="Seconds between request starts, per host."),
    concurrency: int = _opt(_P.concurrency, "--concurrency", help="Requests in flight, per host."),
    max_requests: int = MAX_REQUESTS,
    image_size: int = _opt(None, "--image-size", help="Re-encode images to this longest side."),
    max_images: int = _opt(10, "--max-images", help="Images kept per product (its first)."),
    timeout: float = TIMEOUT,
    save_every: int = SAVE_EVERY,
    allow_private_hosts: bool = ALLOW_PRIVATE,
    progress: bool = PROGRESS,
    as_json: bool = typer.Option(False, "--json", help="Print the run's summary as JSON."),
) -> None:
    """Crawl a shop's product pages from its sitemap into a dataset dir; re-run to resume.

    Honours robots.txt; reads each page's schema.org Product and BreadcrumbList JSON-LD (label
    path = the breadcrumb without "Home" and the product, else Product.category); stores the
    product images with title, brand and price in `meta`.

    Example: fashion-tagger crawl shop --sitemap https://shop.example/sitemap.xml --out data/shop
    """
    from fashion_tagger.sources.shop import ShopConfig, crawl_shop

    config = ShopConfig(
        sitemap=sitemap,
        image_size=image_size,
        max_images=max_images,
        save_every=save_every,
        allow_private_hosts=allow_private_hosts,
        politeness=Politeness(
            delay=delay, concurrency=concurrency, timeout=timeout, max_requests=max_requests
        ),
    )
    result = crawl_shop(out, config, progress=progress)
    if as_json:
        print_json(result.to_dict())
        return
    console.print(
        f"{result.stopped}: {result.products} products on {result.pages} pages "
        f"({result.no_product} without a Product, {result.failed_pages} failed), "
        f"{result.images} images stored ({result.failed_images} failed) in {result.requests} "
        f"requests, {result.seconds:.1f}s; {len(result.dataset)} rows in "
        f"[green]{result.dataset.root}[/]"
    )
    if result.stopped != "done" or result.failed_pages:
        console.print("[yellow]not all done[/]: re-run the same command to continue")

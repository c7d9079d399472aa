"""The Vinted marketplace as a dataset source: a polite, resumable crawler.

`crawl_vinted(out, CrawlConfig(...))` is the one entry point; see `crawler.py`. The API's
endpoints and field names live in `api.py` only.
"""

from __future__ import annotations

from fashion_tagger.sources.vinted.crawler import (
    CrawlConfig,
    CrawlError,
    CrawlResult,
    crawl_status,
    crawl_vinted,
    list_categories,
)
from fashion_tagger.sources.vinted.session import Blocked, Politeness

__all__ = [
    "Blocked",
    "CrawlConfig",
    "CrawlError",
    "CrawlResult",
    "Politeness",
    "crawl_status",
    "crawl_vinted",
    "list_categories",
]

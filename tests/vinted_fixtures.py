"""Helpers for the Vinted crawler tests: a fast crawl config and what a crawl should produce."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fashion_tagger.sources.vinted import CrawlConfig, Politeness
from fashion_tagger.testing.fake_marketplace import FakeVinted


def fast(fake: FakeVinted, per_category: int = 10, **kw) -> CrawlConfig:
    """A config that crawls the fake as fast as it can: no delay, tiny backoffs and pauses."""
    pol = {
        "delay": 0.0,
        "concurrency": 2,
        "photo_delay": 0.0,
        "photo_concurrency": 2,
        "timeout": 2.0,
        "backoff": 0.01,
        "block_pause": 0.05,
        **kw.pop("politeness", {}),
    }
    kw.setdefault("allow_private_hosts", True)  # the fake listens on 127.0.0.1
    return CrawlConfig(
        base_url=fake.url, per_category=per_category, politeness=Politeness(**pol), **kw
    )


def expected(fake: FakeVinted, per_category: int) -> dict[str, tuple[str, ...]]:
    """Listing id -> label path the dataset must hold (first N per fashion leaf, unisex rule)."""
    found: dict[int, list[tuple[str, ...]]] = {}
    for leaf in fake.fashion_leaves():
        for item in leaf.items[:per_category]:
            found.setdefault(item, []).append(leaf.path)
    out = {}
    for item, paths in found.items():
        if not fake.has_photo(item):
            continue
        roots = {p[0] for p in paths}
        out[str(item)] = ("Unisex", *paths[0][1:]) if {"Women", "Men"} <= roots else paths[0]
    return out


def done_photos(out: Path) -> set[str]:
    """Photo URLs the crawl state records as stored (read while no crawler runs)."""
    db = sqlite3.connect(out / "crawl.db")
    try:
        return {r[0] for r in db.execute("SELECT url FROM photos WHERE status='done'")}
    finally:
        db.close()


def done_pages(out: Path) -> set[tuple[int, int]]:
    db = sqlite3.connect(out / "crawl.db")
    try:
        return {
            tuple(r) for r in db.execute("SELECT category_id, page FROM pages WHERE status='done'")
        }
    finally:
        db.close()

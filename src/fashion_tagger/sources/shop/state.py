"""The shop crawl's memory: `<out>/crawl.db`, SQLite in WAL mode, one transaction per step.

As for the Vinted crawl (`sources/vinted/state.py`), every step (a sitemap read, a page and
the product on it, a stored image, a failure) is one committed transaction, so a crawl killed
at any moment finds on restart exactly what it had finished and asks for none of it again. The
dataset manifest is rebuilt from this file, never the other way round.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.sources.shop.jsonld import Product
from fashion_tagger.sources.vinted.state import crawl_kind

DB_FILE = "crawl.db"
MAX_TRIES = 3
"""Runs that may retry a sitemap, page or image that failed for a transient reason."""
FINAL_ERRORS = ("corrupt_image", "not_found", "forbidden", "gone", "refused_address", "bad_url")
"""Failures that another try will not fix."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sitemaps (
    url TEXT PRIMARY KEY, depth INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    kind TEXT, tries INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE TABLE IF NOT EXISTS pages (
    url TEXT PRIMARY KEY, status TEXT NOT NULL DEFAULT 'pending', product TEXT,
    tries INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE TABLE IF NOT EXISTS images (
    url TEXT PRIMARY KEY, status TEXT NOT NULL DEFAULT 'pending', image TEXT, sha256 TEXT,
    width INTEGER, height INTEGER, tries INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE TABLE IF NOT EXISTS product_images (
    page_url TEXT NOT NULL, image_url TEXT NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (page_url, image_url));
"""


class ShopState:
    """The crawl state of one dataset dir; one writer at a time (the crawl's lock)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / DB_FILE
        if crawl_kind(root) == "vinted":
            raise FashionTaggerError(f"{self.path} is a Vinted crawl's state; use another --out")
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise FashionTaggerError(
                f"{self.path} is not a shop crawl's state file ({exc}); use another --out"
            ) from exc

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it is committed, or (killed or failed) none of it."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str))
            )

    # -- sitemaps ----------------------------------------------------------------------------
    def add_sitemap(self, url: str, depth: int) -> None:
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO sitemaps (url, depth) VALUES (?, ?)", (url, depth))

    def sitemaps_to_read(self) -> list[tuple[str, int]]:
        rows = self.db.execute(
            "SELECT url, depth FROM sitemaps WHERE status='pending' OR (status='failed' AND "
            "tries < ?) ORDER BY rowid",
            (MAX_TRIES,),
        )
        return [(r[0], r[1]) for r in rows]

    def record_sitemap(
        self, url: str, kind: str, locs: Sequence[str], depth: int, allowed: Any
    ) -> None:
        """A sitemap read: its child sitemaps or its pages (robots-disallowed ones marked so)."""
        with self.tx() as db:
            for loc in locs:
                if kind == "sitemapindex":
                    db.execute(
                        "INSERT OR IGNORE INTO sitemaps (url, depth) VALUES (?, ?)",
                        (loc, depth + 1),
                    )
                else:
                    status = "pending" if allowed(loc) else "disallowed"
                    db.execute(
                        "INSERT OR IGNORE INTO pages (url, status) VALUES (?, ?)", (loc, status)
                    )
            db.execute(
                "UPDATE sitemaps SET status='done', kind=?, last_error=NULL WHERE url=?",
                (kind, url),
            )

    def sitemap_failed(self, url: str, error: str) -> None:
        with self.tx() as db:
            final = error in FINAL_ERRORS or error.startswith("bad_sitemap")
            db.execute(
                "UPDATE sitemaps SET status=?, tries=tries+1, last_error=? WHERE url=?",
                ("gave_up" if final else "failed", error, url),
            )

    # -- pages -------------------------------------------------------------------------------
    def pages_to_fetch(self, allowed: Any) -> list[str]:
        """Pending pages (and retryable failures) that robots.txt allows now; the others are
        marked disallowed, so a robots.txt that changed between runs is honoured."""
        rows = self.db.execute(
            "SELECT url FROM pages WHERE status='pending' OR (status='failed' AND tries < ?) "
            "ORDER BY rowid",
            (MAX_TRIES,),
        ).fetchall()
        todo, refused = [], []
        for (url,) in rows:
            (todo if allowed(url) else refused).append(url)
        if refused:
            with self.tx() as db:
                db.executemany(
                    "UPDATE pages SET status='disallowed' WHERE url=?", [(u,) for u in refused]
                )
        return todo

    def record_page(self, url: str, product: Product | None) -> None:
        """A page read: its product and images (one transaction), or `no_product`."""
        with self.tx() as db:
            if product is None:
                db.execute(
                    "UPDATE pages SET status='no_product', last_error=NULL WHERE url=?", (url,)
                )
                return
            for k, image in enumerate(product.images):
                db.execute("INSERT OR IGNORE INTO images (url) VALUES (?)", (image,))
                db.execute("INSERT OR IGNORE INTO product_images VALUES (?, ?, ?)", (url, image, k))
            db.execute(
                "UPDATE pages SET status='done', product=?, last_error=NULL WHERE url=?",
                (json.dumps(asdict(product), ensure_ascii=False), url),
            )

    def page_failed(self, url: str, error: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE pages SET status=?, tries=tries+1, last_error=? WHERE url=?",
                ("gave_up" if error in FINAL_ERRORS else "failed", error, url),
            )

    # -- images ------------------------------------------------------------------------------
    def images_to_fetch(self) -> list[str]:
        rows = self.db.execute(
            "SELECT url FROM images WHERE status='pending' OR (status='failed' AND tries < ?) "
            "ORDER BY rowid",
            (MAX_TRIES,),
        )
        return [r[0] for r in rows]

    def image_done(self, url: str, image: str, sha256: str, width: int, height: int) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE images SET status='done', image=?, sha256=?, width=?, height=?, "
                "last_error=NULL WHERE url=?",
                (image, sha256, width, height, url),
            )

    def image_failed(self, url: str, error: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE images SET status=?, tries=tries+1, last_error=? WHERE url=?",
                ("gave_up" if error in FINAL_ERRORS else "failed", error, url),
            )

    def done_images(self) -> Iterator[tuple[str, Product, str, str, str, int, int]]:
        """(page URL, product, image URL, stored path, sha256, width, height) per stored image,
        page by page in sitemap order."""
        rows = self.db.execute(
            "SELECT p.url, p.product, i.url, i.image, i.sha256, i.width, i.height "
            "FROM pages p JOIN product_images pi ON pi.page_url = p.url "
            "JOIN images i ON i.url = pi.image_url WHERE p.status='done' AND i.status='done' "
            "ORDER BY p.rowid, pi.position"
        ).fetchall()
        for page, product, url, image, sha, w, h in rows:
            yield page, Product(**json.loads(product)), url, image, sha, w, h

    def summary(self) -> dict[str, Any]:
        """Counts per table and status, and the most common failures."""

        def by_status(table: str) -> dict[str, int]:
            q = f"SELECT status, COUNT(*) FROM {table} GROUP BY status"
            return dict(self.db.execute(q).fetchall())

        def errors(table: str) -> dict[str, int]:
            q = (
                f"SELECT last_error, COUNT(*) FROM {table} WHERE last_error IS NOT NULL "
                "GROUP BY last_error ORDER BY COUNT(*) DESC LIMIT 10"
            )
            return dict(self.db.execute(q).fetchall())

        return {
            "sitemaps": by_status("sitemaps"),
            "pages": by_status("pages"),
            "images": by_status("images"),
            "failures": {t: errors(t) for t in ("sitemaps", "pages", "images")},
            "last_run": self.get_meta("last_run"),
        }

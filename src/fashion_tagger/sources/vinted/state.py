"""The crawl's memory: `<out>/crawl.db`, an SQLite file in WAL mode.

Every change of state (a search page and the listings on it, a stored photo, a failure) is one
committed transaction, so a crawl killed at any moment, SIGKILL included, finds on restart exactly
what it had finished: a page recorded is not requested again, and a photo recorded is in the
image store. The dataset manifest is rebuilt from this file, never the other way round.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashion_tagger.dataset.manifest import now
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.sources.vinted.api import Listing
from fashion_tagger.sources.vinted.categories import Leaf

DB_FILE = "crawl.db"
MAX_TRIES = 3
"""Runs that may retry a page or photo that failed for a transient reason."""

FINAL_ERRORS = ("corrupt_image", "not_found", "forbidden", "bad_url", "refused_address")
"""Photo failures that another try will not fix."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS categories (
    id INTEGER PRIMARY KEY, ord INTEGER NOT NULL, path TEXT NOT NULL, gender TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', listings INTEGER NOT NULL DEFAULT 0,
    total_pages INTEGER, tries INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE TABLE IF NOT EXISTS pages (
    category_id INTEGER NOT NULL, page INTEGER NOT NULL, status TEXT NOT NULL,
    items INTEGER NOT NULL DEFAULT 0, tries INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    PRIMARY KEY (category_id, page));
CREATE TABLE IF NOT EXISTS listings (
    id TEXT PRIMARY KEY, data TEXT NOT NULL, detail TEXT NOT NULL DEFAULT 'pending',
    tries INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE TABLE IF NOT EXISTS listing_categories (
    listing_id TEXT NOT NULL, category_id INTEGER NOT NULL,
    PRIMARY KEY (listing_id, category_id));
CREATE TABLE IF NOT EXISTS photos (
    url TEXT PRIMARY KEY, listing_id TEXT NOT NULL, position INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', image TEXT, sha256 TEXT, width INTEGER,
    height INTEGER, tries INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE INDEX IF NOT EXISTS photos_listing ON photos (listing_id);
CREATE TABLE IF NOT EXISTS unparsed (
    id INTEGER PRIMARY KEY AUTOINCREMENT, url TEXT NOT NULL, error TEXT NOT NULL,
    body TEXT NOT NULL, at TEXT NOT NULL);
"""


@dataclass(frozen=True)
class CategoryState:
    id: int
    path: tuple[str, ...]
    gender: str
    status: str
    listings: int
    next_page: int
    total_pages: int | None


@dataclass(frozen=True)
class DonePhoto:
    """A stored photo with its listing and every category the listing was found in."""

    listing: dict[str, Any]
    listing_id: str
    position: int
    url: str
    image: str
    sha256: str
    width: int
    height: int
    categories: list[tuple[tuple[str, ...], str]]
    """(path, gender) per category, in crawl order."""


def crawl_kind(root: Path) -> str | None:
    """`vinted` or `shop` for the crawl whose state is in `root`, None when there is none."""
    path = root / DB_FILE
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise FashionTaggerError(f"{path} is not a crawl state file ({exc})") from exc
    return "shop" if "sitemaps" in names else "vinted" if "listings" in names else None


class State:
    """The crawl state of one dataset dir; one writer at a time."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / DB_FILE
        if crawl_kind(root) == "shop":
            raise FashionTaggerError(f"{self.path} is a shop crawl's state; use another --out")
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise FashionTaggerError(
                f"{self.path} is not a crawl state file ({exc}); move it away to start afresh"
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

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str))
            )

    def record_unparsed(self, url: str, error: str, body: bytes) -> None:
        """Keep a response we could not read, so a change of the site can be diagnosed."""
        text = body[:65536].decode("utf-8", "replace")
        with self.tx() as db:
            db.execute(
                "INSERT INTO unparsed (url, error, body, at) VALUES (?,?,?,?)",
                (url, error, text, now()),
            )

    # -- categories and pages ----------------------------------------------------------------
    def add_categories(self, leaves: Sequence[Leaf]) -> None:
        with self.tx() as db:
            for i, leaf in enumerate(leaves):
                db.execute(
                    "INSERT INTO categories (id, ord, path, gender) VALUES (?,?,?,?) "
                    "ON CONFLICT(id) DO UPDATE SET ord=excluded.ord, path=excluded.path, "
                    "gender=excluded.gender",
                    (leaf.id, i, json.dumps(leaf.path), leaf.gender),
                )

    def category(self, cid: int) -> CategoryState:
        row = self.db.execute(
            "SELECT id, path, gender, status, listings, total_pages FROM categories WHERE id=?",
            (cid,),
        ).fetchone()
        last = self.db.execute(
            "SELECT COALESCE(MAX(page), 0) FROM pages WHERE category_id=? AND status='done'",
            (cid,),
        ).fetchone()[0]
        return CategoryState(
            row[0], tuple(json.loads(row[1])), row[2], row[3], row[4], last + 1, row[5]
        )

    def record_page(
        self,
        cid: int,
        page: int,
        listings: Sequence[Listing],
        total_pages: int | None,
        cap: int,
    ) -> tuple[int, bool]:
        """Store one search page's listings (up to the category's cap) in one transaction.

        Returns (listings the category has now, whether the category is finished).
        """
        with self.tx() as db:
            have = db.execute("SELECT listings FROM categories WHERE id=?", (cid,)).fetchone()[0]
            taken = 0
            for listing in listings:
                if have + taken >= cap:
                    break
                new = db.execute(
                    "INSERT OR IGNORE INTO listing_categories VALUES (?, ?)", (listing.id, cid)
                ).rowcount
                if not new:
                    continue  # the same listing twice in one category (pages shifted)
                taken += 1
                db.execute(
                    "INSERT OR IGNORE INTO listings (id, data) VALUES (?, ?)",
                    (listing.id, json.dumps(listing.meta(), ensure_ascii=False)),
                )
                if listing.photos:
                    db.execute(
                        "INSERT OR IGNORE INTO photos (url, listing_id, position) VALUES (?,?,0)",
                        (listing.photos[0], listing.id),
                    )
            have += taken
            finished = (
                have >= cap or not listings or (total_pages is not None and page >= total_pages)
            )
            db.execute(
                "INSERT OR REPLACE INTO pages (category_id, page, status, items) "
                "VALUES (?, ?, 'done', ?)",
                (cid, page, len(listings)),
            )
            db.execute(
                "UPDATE categories SET listings=?, total_pages=COALESCE(?, total_pages), "
                "status=?, last_error=NULL WHERE id=?",
                (
                    have,
                    total_pages,
                    "full" if have >= cap else "done" if finished else "running",
                    cid,
                ),
            )
        return have, finished

    def record_page_error(self, cid: int, page: int, error: str) -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO pages (category_id, page, status, tries, last_error) "
                "VALUES (?, ?, 'failed', 1, ?) ON CONFLICT(category_id, page) DO UPDATE SET "
                "status='failed', tries=tries+1, last_error=excluded.last_error",
                (cid, page, error),
            )
            db.execute(
                "UPDATE categories SET status='failed', tries=tries+1, last_error=? WHERE id=?",
                (f"page {page}: {error}", cid),
            )

    def reopen_full(self, cap: int) -> None:
        """A re-run with a larger --per-category continues the categories that hit the old cap.

        Their last page was cut at the cap, so it is fetched again (its known listings are
        skipped); a category that ran out of listings stays done.
        """
        with self.tx() as db:
            rows = db.execute(
                "SELECT id FROM categories WHERE status='full' AND listings < ?", (cap,)
            ).fetchall()
            for (cid,) in rows:
                db.execute(
                    "DELETE FROM pages WHERE category_id=? AND page=(SELECT MAX(page) FROM pages "
                    "WHERE category_id=?)",
                    (cid, cid),
                )
                db.execute("UPDATE categories SET status='running' WHERE id=?", (cid,))

    def categories_to_crawl(self) -> list[int]:
        rows = self.db.execute(
            "SELECT id FROM categories WHERE status NOT IN ('done', 'full') AND tries < ? "
            "ORDER BY ord",
            (MAX_TRIES,),
        )
        return [r[0] for r in rows]

    # -- listings and photos -----------------------------------------------------------------
    def listings_needing_detail(self) -> list[str]:
        rows = self.db.execute(
            "SELECT id FROM listings WHERE detail='pending' AND tries < ? ORDER BY rowid",
            (MAX_TRIES,),
        )
        return [r[0] for r in rows]

    def record_detail(self, listing_id: str, urls: Sequence[str] | None, error: str = "") -> None:
        """The photos an item detail listed (all of them), or why the detail failed."""
        with self.tx() as db:
            if urls is None:
                db.execute(
                    "UPDATE listings SET tries=tries+1, last_error=?, "
                    "detail=CASE WHEN ? THEN 'failed' ELSE detail END WHERE id=?",
                    (error, error in FINAL_ERRORS, listing_id),
                )
                return
            known = {
                r[0] for r in db.execute("SELECT url FROM photos WHERE listing_id=?", (listing_id,))
            }
            position = len(known)
            for url in urls:
                if url not in known:
                    db.execute(
                        "INSERT OR IGNORE INTO photos (url, listing_id, position) VALUES (?,?,?)",
                        (url, listing_id, position),
                    )
                    position += 1
            db.execute("UPDATE listings SET detail='done' WHERE id=?", (listing_id,))

    def photos_to_fetch(self) -> list[tuple[str, str]]:
        """(url, listing id) of photos not stored yet, except those that failed for good."""
        marks = ",".join("?" * len(FINAL_ERRORS))
        rows = self.db.execute(
            "SELECT url, listing_id FROM photos WHERE status='pending' OR (status='failed' "
            f"AND tries < ? AND last_error NOT IN ({marks})) ORDER BY rowid",
            (MAX_TRIES, *FINAL_ERRORS),
        )
        return [(r[0], r[1]) for r in rows]

    def photo_done(self, url: str, image: str, sha256: str, width: int, height: int) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE photos SET status='done', image=?, sha256=?, width=?, height=?, "
                "last_error=NULL WHERE url=?",
                (image, sha256, width, height, url),
            )

    def photo_failed(self, url: str, error: str) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE photos SET status='failed', tries=tries+1, last_error=? WHERE url=?",
                (error, url),
            )

    def done_photos(self) -> Iterator[DonePhoto]:
        """Every stored photo, listing by listing in the order they were found."""
        cats = {
            r[0]: (tuple(json.loads(r[1])), r[2], r[3])
            for r in self.db.execute("SELECT id, path, gender, ord FROM categories")
        }
        found: dict[str, list[int]] = {}
        for lid, cid in self.db.execute("SELECT listing_id, category_id FROM listing_categories"):
            if cid in cats:
                found.setdefault(lid, []).append(cid)
        rows = self.db.execute(
            "SELECT l.id, l.data, p.position, p.url, p.image, p.sha256, p.width, p.height "
            "FROM photos p JOIN listings l ON l.id = p.listing_id WHERE p.status='done' "
            "ORDER BY l.rowid, p.position"
        ).fetchall()
        for lid, data, position, url, image, sha, w, h in rows:
            cids = sorted(found.get(lid, []), key=lambda c: cats[c][2])
            yield DonePhoto(
                json.loads(data),
                lid,
                position,
                url,
                image,
                sha,
                w,
                h,
                [(cats[c][0], cats[c][1]) for c in cids],
            )

    # -- summary -----------------------------------------------------------------------------
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

        listings = self.db.execute("SELECT COUNT(*) FROM listings").fetchone()[0]
        no_photo = self.db.execute(
            "SELECT COUNT(*) FROM listings l WHERE NOT EXISTS "
            "(SELECT 1 FROM photos p WHERE p.listing_id = l.id)"
        ).fetchone()[0]
        return {
            "categories": by_status("categories"),
            "pages": by_status("pages"),
            "listings": {"total": listings, "without_photo": no_photo},
            "photos": by_status("photos"),
            "unparsed_responses": self.db.execute("SELECT COUNT(*) FROM unparsed").fetchone()[0],
            "failures": {
                "categories": errors("categories"),
                "pages": errors("pages"),
                "photos": errors("photos"),
                "details": errors("listings"),
            },
            "last_run": self.get_meta("last_run"),
        }

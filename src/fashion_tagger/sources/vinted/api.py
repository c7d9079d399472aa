"""The marketplace's web API in one place: endpoints, field names and tolerant parsing.

Vinted's web API is undocumented and changes often (see docs/vinted-api.md), so every field is
optional here: a parser returns what it can find and `None` (or an empty list) for the rest, and
only a missing listing id makes a listing unusable. When the site changes, this is the only
module to edit.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any

ITEMS_PATH = "/api/v2/catalog/items"
DETAIL_PATHS = ("/api/v2/items/{id}", "/api/v2/items/{id}/details")
INITIALIZERS_PATH = "/api/v2/catalog/initializers"
MAX_PER_PAGE = 96
ORDER = "newest_first"

USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept": "application/json, text/plain, */*",
    "Accept-Language": "en-GB,en;q=0.9",
}
HOME_HEADERS = {
    **HEADERS,
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
}

DOMAINS = ("fr", "com", "de", "co.uk", "es", "it", "nl", "pl", "be", "at", "lt", "cz", "pt")


def base_url_for(domain: str) -> str:
    """`fr` -> `https://www.vinted.fr`."""
    return f"https://www.vinted.{domain.strip('.').lower()}"


def items_params(catalog_id: int, page: int, per_page: int = MAX_PER_PAGE) -> dict[str, Any]:
    """Query of one search page: newest first, so later pages are stable while a crawl runs."""
    return {"catalog_ids": str(catalog_id), "page": page, "per_page": per_page, "order": ORDER}


# -- the category tree ---------------------------------------------------------------------------
@dataclass
class Node:
    """One catalog node as the site describes it."""

    id: int
    title: str
    code: str = ""
    item_count: int | None = None
    children: list[Node] = field(default_factory=list)


def parse_node(d: Any) -> Node | None:
    """A node and its subtree; nodes without an integer id or a title are dropped."""
    if not isinstance(d, dict):
        return None
    try:
        node_id = int(d.get("id"))
    except (TypeError, ValueError):
        return None
    title = str(d.get("title") or d.get("name") or "").strip()
    if not title:
        return None
    kids = d.get("catalogs") or d.get("children") or []
    count = d.get("item_count")
    return Node(
        id=node_id,
        title=title,
        code=str(d.get("code") or ""),
        item_count=count if isinstance(count, int) else None,
        children=[n for n in (parse_node(k) for k in kids if isinstance(k, dict)) if n],
    )


def parse_nodes(value: Any) -> list[Node]:
    """The roots from a `catalogTree` value (a list of roots, or one node holding them)."""
    if isinstance(value, dict):
        value = value.get("catalogs") or value.get("catalogTree") or [value]
    if not isinstance(value, list):
        return []
    return [n for n in (parse_node(v) for v in value) if n]


_TREE_KEY = re.compile(r'"catalogTree"\s*:\s*')
_NEXT_F = re.compile(r'self\.__next_f\.push\(\[\s*1\s*,\s*("(?:[^"\\]|\\.)*")\s*\]\)', re.S)


def _find_tree(text: str) -> list[Node]:
    decoder = json.JSONDecoder()
    for m in _TREE_KEY.finditer(text):
        try:
            value, _ = decoder.raw_decode(text, m.end())
        except json.JSONDecodeError:
            continue
        roots = parse_nodes(value)
        if roots:
            return roots
    return []


def tree_from_html(page: str) -> list[Node]:
    """The category tree embedded in the home page, in any of the three shapes seen.

    Plain JSON in a script tag, JSON in an HTML-escaped `data-js-react-on-rails-store` block,
    or JSON-escaped strings pushed with `self.__next_f.push([1, "..."])` (joined, then unescaped).
    Returns [] when none is found.
    """
    roots = _find_tree(page)
    if roots:
        return roots
    if "&quot;" in page or "&#34;" in page:
        roots = _find_tree(html.unescape(page))
        if roots:
            return roots
    chunks = []
    for m in _NEXT_F.finditer(page):
        try:
            chunks.append(json.loads(m.group(1)))
        except json.JSONDecodeError:
            continue
    return _find_tree("".join(chunks)) if chunks else []


def tree_from_initializers(payload: Any) -> list[Node]:
    """The tree from the older `/api/v2/catalog/initializers` answer."""
    if not isinstance(payload, dict):
        return []
    dtos = payload.get("dtos") if isinstance(payload.get("dtos"), dict) else payload
    return parse_nodes(dtos.get("catalogs") or dtos.get("catalogTree"))


# -- listings ------------------------------------------------------------------------------------
@dataclass
class Listing:
    """What the crawler keeps of a search result; `photos` are URLs, main photo first."""

    id: str
    title: str = ""
    price: str | None = None
    currency: str | None = None
    brand: str | None = None
    size: str | None = None
    condition: str | None = None
    url: str | None = None
    photos: list[str] = field(default_factory=list)
    created_ts: int | None = None

    def meta(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "price": self.price,
            "currency": self.currency,
            "brand": self.brand,
            "size": self.size,
            "condition": self.condition,
            "url": self.url,
            "photo_urls": self.photos,
            "created_ts": self.created_ts,
        }


def _text(v: Any) -> str | None:
    """A display string from a string, number, or an object with a title/name/amount."""
    if isinstance(v, dict):
        for key in ("title", "name", "label", "amount"):
            if v.get(key) not in (None, ""):
                return _text(v[key])
        return None
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return str(v)
    s = str(v).strip()
    return s or None


def photo_url(photo: Any) -> str | None:
    """The largest URL of a photo object, kept exactly as given (its `?s=` signature included)."""
    if isinstance(photo, str):
        return photo or None
    if not isinstance(photo, dict):
        return None
    for key in ("full_size_url", "url"):
        if isinstance(photo.get(key), str) and photo[key]:
            return photo[key]
    thumbs = [t for t in photo.get("thumbnails") or [] if isinstance(t, dict) and t.get("url")]
    if thumbs:
        return max(thumbs, key=lambda t: (t.get("width") or 0) * (t.get("height") or 0))["url"]
    return None


def photo_urls(d: dict[str, Any]) -> list[str]:
    """The photo URLs of a listing or item detail, main photo first, without repeats."""
    photos = d.get("photos") if isinstance(d.get("photos"), list) else []
    photos = sorted(photos, key=lambda p: not (isinstance(p, dict) and p.get("is_main")))
    out: list[str] = []
    for p in [d.get("photo"), *photos]:
        url = photo_url(p)
        if url and url not in out:
            out.append(url)
    return out


def parse_listing(d: Any) -> Listing | None:
    """A search result or item detail as a `Listing`; None if it has no id."""
    if not isinstance(d, dict) or d.get("id") in (None, ""):
        return None
    price, currency = d.get("price"), d.get("currency")
    if isinstance(price, dict):
        currency = price.get("currency_code") or price.get("currency") or currency
        price = price.get("amount")
    created = None
    hi = (d.get("photo") or {}).get("high_resolution") if isinstance(d.get("photo"), dict) else None
    for v in (d.get("created_at_ts"), (hi or {}).get("timestamp")):
        if isinstance(v, int):
            created = v
            break
    return Listing(
        id=str(d["id"]),
        title=_text(d.get("title")) or "",
        price=_text(price),
        currency=_text(currency),
        brand=_text(d.get("brand_title")) or _text(d.get("brand_dto")) or _text(d.get("brand")),
        size=_text(d.get("size_title")) or _text(d.get("size")),
        condition=_text(d.get("status")),
        url=d.get("url") if isinstance(d.get("url"), str) else None,
        photos=photo_urls(d),
        created_ts=created,
    )


@dataclass
class Page:
    """One search page: the listings it holds and how many pages the search has (if said)."""

    listings: list[Listing]
    total_pages: int | None
    dropped: int = 0


class ParseError(ValueError):
    """A response that is not the shape expected; the crawler records it and moves on."""


def parse_page(payload: Any) -> Page:
    if not isinstance(payload, dict) or not isinstance(payload.get("items", []), list):
        raise ParseError("search answer has no 'items' list")
    raw = payload.get("items") or []
    listings = [x for x in (parse_listing(r) for r in raw) if x]
    pagination = payload.get("pagination") if isinstance(payload.get("pagination"), dict) else {}
    total = pagination.get("total_pages")
    try:
        total = int(total) if total is not None else None
    except (TypeError, ValueError):
        total = None
    return Page(listings, total, dropped=len(raw) - len(listings))


def parse_detail(payload: Any) -> Listing | None:
    """An item detail answer (`{"item": {...}}`, or the item itself)."""
    if isinstance(payload, dict) and isinstance(payload.get("item"), dict):
        payload = payload["item"]
    return parse_listing(payload)


def auth_error_code(body: bytes) -> int | None:
    """The `code` of a JSON error body (100: invalid token, 106: access denied), else None."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    code = payload.get("code") if isinstance(payload, dict) else None
    return code if isinstance(code, int) else None

"""A product page's schema.org JSON-LD: the `Product` and the `BreadcrumbList`, read tolerantly.

Shops write JSON-LD in every shape the vocabulary allows: one object, a list, an `@graph`, a
`@type` that is a list or a full IRI, an image that is a string, a list or an `ImageObject`, a
brand that is a string or a `Brand`, offers as one `Offer`, a list or an `AggregateOffer`. Each
reader here takes any of them and returns None (or []) for what is not there; a block that is
not valid JSON is skipped, not fatal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

MAX_BLOCK = 2 * 1024 * 1024
"""Larger JSON-LD blocks are skipped (no product description is that long)."""
HOME_NAMES = frozenset({"home", "homepage", "home page", "start", "accueil", "startseite"})


@dataclass
class Product:
    """What a product page says about its product.

    Attributes:
        item_id: sku, else productID, else the page path's last part.
        labels: the category path (breadcrumb, else `category`), root first.
        images: absolute image URLs, in the page's order, without repeats.
    """

    item_id: str
    name: str
    labels: list[str]
    images: list[str]
    brand: str | None = None
    price: str | None = None
    currency: str | None = None
    category: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def meta(self, page_url: str) -> dict[str, Any]:
        return {
            "title": self.name,
            "brand": self.brand,
            "price": self.price,
            "currency": self.currency,
            "category": self.category,
            "url": page_url,
            **self.extra,
        }


class _Scripts(HTMLParser):
    """Collects the text of every `<script type="application/ld+json">`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self._buf: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        kind = (dict(attrs).get("type") or "").split(";")[0].strip().lower()
        if tag == "script" and kind == "application/ld+json":
            self._buf = []

    def handle_data(self, data: str) -> None:
        if self._buf is not None:
            self._buf.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._buf is not None:
            self.blocks.append("".join(self._buf))
            self._buf = None


def blocks(page: str) -> list[Any]:
    """Every JSON-LD block of an HTML page, parsed; invalid or oversized blocks are skipped."""
    parser = _Scripts()
    parser.feed(page)
    parser.close()
    out = []
    for text in parser.blocks:
        text = text.strip()
        if text.startswith("<!--"):  # an old habit: the block wrapped in an HTML comment
            text = text.removeprefix("<!--").removesuffix("-->").strip()
        if not text or len(text) > MAX_BLOCK:
            continue
        try:
            out.append(json.loads(text))
        except ValueError:
            continue
    return out


def _nodes(value: Any) -> list[dict[str, Any]]:
    """Every object of a block: the block itself, list members and `@graph` members."""
    out: list[dict[str, Any]] = []
    stack = [value]
    while stack and len(out) < 1000:
        v = stack.pop(0)
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            out.append(v)
            if isinstance(v.get("@graph"), list):
                stack.extend(v["@graph"])
    return out


def _is(node: dict[str, Any], kind: str) -> bool:
    types = node.get("@type")
    types = types if isinstance(types, list) else [types]
    return any(isinstance(t, str) and re.split(r"[/#:]", t)[-1] == kind for t in types)


def _text(v: Any) -> str | None:
    """A display string from a string or number, a list (its first), or an object's name."""
    if isinstance(v, list):
        return next((t for t in map(_text, v) if t), None)
    if isinstance(v, dict):
        return _text(v.get("name") or v.get("@value"))
    if isinstance(v, bool) or v is None:
        return None
    s = str(v).strip()
    return s or None


def image_urls(value: Any, base: str) -> list[str]:
    """Absolute URLs of an `image`: a string, an `ImageObject`, or a list of either."""
    out: list[str] = []
    items = value if isinstance(value, list) else [value]
    for item in items[:50]:
        url = item
        if isinstance(item, dict):
            url = item.get("contentUrl") or item.get("url") or item.get("@id")
        if isinstance(url, list):
            url = url[0] if url else None
        if isinstance(url, str) and url.strip():
            absolute = urljoin(base, url.strip())
            if absolute not in out:
                out.append(absolute)
    return out


def _offer(value: Any) -> tuple[str | None, str | None]:
    """(price, currency) of `offers`: an Offer, an AggregateOffer, or a list (the first)."""
    offers = value if isinstance(value, list) else [value]
    for o in offers:
        if not isinstance(o, dict):
            continue
        spec = o.get("priceSpecification")
        spec = spec[0] if isinstance(spec, list) and spec else spec
        spec = spec if isinstance(spec, dict) else {}
        price = _text(o.get("price")) or _text(o.get("lowPrice")) or _text(spec.get("price"))
        currency = _text(o.get("priceCurrency")) or _text(spec.get("priceCurrency"))
        if price or currency:
            return price, currency
    return None, None


def breadcrumb(nodes: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(name, item URL) of the first non-empty BreadcrumbList, ordered by `position`."""
    for node in nodes:
        if not _is(node, "BreadcrumbList"):
            continue
        items = node.get("itemListElement")
        items = items if isinstance(items, list) else [items]
        crumbs: list[tuple[float, int, str, str | None]] = []
        for k, el in enumerate(items):
            if not isinstance(el, dict):
                continue
            item = el.get("item")
            name = _text(el.get("name")) or (_text(item) if isinstance(item, dict) else None)
            url = item.get("@id") or item.get("url") if isinstance(item, dict) else item
            try:
                pos = float(el.get("position"))
            except (TypeError, ValueError):
                pos = float("inf")
            if name:
                crumbs.append((pos, k, name, url if isinstance(url, str) else None))
        if crumbs:
            return [(name, url) for _, _, name, url in sorted(crumbs)]
    return []


def label_path(
    crumbs: list[tuple[str, str | None]], product_name: str, category: Any, page_url: str
) -> list[str]:
    """The breadcrumb without a leading "Home" and a trailing crumb naming the product; else
    `category` split on `>` or `/`."""
    names = list(crumbs)
    if names and names[0][0].strip().lower() in HOME_NAMES:
        names = names[1:]
    if names:
        last, url = names[-1]
        same_page = url is not None and _same_page(url, page_url)
        if same_page or _norm(last) == _norm(product_name):
            names = names[:-1]
    if names:
        return [n for n, _ in names]
    text = _text(category)
    if not text:
        return []
    parts = [p.strip() for p in re.split(r"[>/]", text)]
    parts = [p for p in parts if p]
    if parts and parts[0].lower() in HOME_NAMES:
        parts = parts[1:]
    return parts


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _same_page(url: str, page_url: str) -> bool:
    a, b = urlsplit(urljoin(page_url, url)), urlsplit(page_url)
    return (a.netloc, a.path.rstrip("/")) == (b.netloc, b.path.rstrip("/"))


def item_id_from_url(page_url: str) -> str:
    """The last non-empty part of the page's path (`/p/red-dress-123.html` -> `red-dress-123`)."""
    parts = [p for p in urlsplit(page_url).path.split("/") if p]
    last = parts[-1] if parts else urlsplit(page_url).netloc
    return re.sub(r"\.(html?|php|aspx?)$", "", last) or page_url


def product(page: str, page_url: str) -> Product | None:
    """The page's Product with its label path, or None when the page has no Product."""
    nodes = [n for b in blocks(page) for n in _nodes(b)]
    found = next((n for n in nodes if _is(n, "Product") or _is(n, "ProductGroup")), None)
    if found is None:
        return None
    name = _text(found.get("name")) or ""
    item_id = (
        _text(found.get("sku"))
        or _text(found.get("productID"))
        or _text(found.get("mpn"))
        or item_id_from_url(page_url)
    )
    price, currency = _offer(found.get("offers"))
    category = _text(found.get("category"))
    return Product(
        item_id=item_id,
        name=name,
        labels=label_path(breadcrumb(nodes), name, found.get("category"), page_url),
        images=image_urls(found.get("image"), page_url),
        brand=_text(found.get("brand")),
        price=price,
        currency=currency,
        category=category,
        extra={k: v for k, v in (("sku", _text(found.get("sku"))),) if v},
    )

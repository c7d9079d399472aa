"""What the fake marketplace serves: its category tree, its leaves and the listings' photos.

The data half of `fake_marketplace` (the HTTP half): deterministic, so a test knows what a
crawl must find. Fashion leaves come in Women/Men pairs that share listings; non-fashion
branches (Beauty, Toys, Home, Entertainment) are there for the crawler to leave out.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw


@dataclass(frozen=True)
class FakeLeaf:
    id: int
    path: tuple[str, ...]
    fashion: bool
    items: tuple[int, ...]


ROOTS = {
    "Women": (1904, "WOMEN_ROOT"),
    "Men": (5, "MEN_ROOT"),
    "Kids": (1193, "KIDS_ROOT"),
    "Home": (1918, "HOME_ROOT"),
    "Entertainment": (2309, "ENTERTAINMENT_ROOT"),
}
FASHION = [
    ("Women", "Shoes", "Sneakers"),
    ("Men", "Shoes", "Sneakers"),
    ("Women", "Clothes", "Coats & jackets", "Parkas"),
    ("Men", "Clothes", "Coats & jackets", "Parkas"),
    ("Kids", "Girls", "Dresses"),
    ("Women", "Clothes", "Dresses"),
    ("Men", "Clothes", "Jeans"),
    ("Kids", "Boys", "T-shirts"),
    ("Women", "Bags", "Handbags"),
    ("Men", "Accessories", "Belts"),
]
"""Women/Men pairs first, so listings shared by a pair exist from 2 categories on."""
NON_FASHION = [
    ("Women", "Beauty", "Make-up"),
    ("Kids", "Toys", "Dolls"),
    ("Home", "Textiles", "Blankets"),
    ("Entertainment", "Books", "Novels"),
]


def fashion_paths(n: int) -> list[tuple[str, ...]]:
    """The first `n` fashion leaf paths (made-up styles beyond the built-in ten)."""
    out = list(FASHION[:n])
    for i in range(len(out), n):
        out.append((("Women", "Men", "Kids")[i % 3], "Clothes", f"Style {i}"))
    return out


def catalog_tree(leaves: list[FakeLeaf]) -> list[dict[str, Any]]:
    """The `catalogTree` of the home page: a root per top-level title, the leaves' paths under
    it, every node's `item_count` the sum of its leaves'."""
    roots: dict[str, dict[str, Any]] = {}
    ids = iter(range(30_000, 40_000))
    for leaf in leaves:
        rid, code = ROOTS[leaf.path[0]]
        node = roots.setdefault(leaf.path[0], _node(rid, leaf.path[0], code))
        for title in leaf.path[1:-1]:
            found = [c for c in node["catalogs"] if c["title"] == title]
            node = found[0] if found else _add(node, _node(next(ids), title, ""))
        _add(node, _node(leaf.id, leaf.path[-1], "", len(leaf.items)))
    for root in roots.values():
        _count(root)
    return list(roots.values())


def _node(nid: int, title: str, code: str, count: int = 0) -> dict[str, Any]:
    return {
        "id": nid,
        "title": title,
        "code": code,
        "catalogs": [],
        "item_count": count,
        "url": f"/catalog/{nid}",
        "photo": None,
        "unisex_catalog_id": None,
        "size_group_field_visibility": True,
    }


def _add(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    parent["catalogs"].append(child)
    return child


def _count(node: dict[str, Any]) -> int:
    if node["catalogs"]:
        node["item_count"] = sum(_count(c) for c in node["catalogs"])
    return node["item_count"]


def colour_int(item_id: int, n: int) -> int:
    return int(hashlib.sha1(f"{item_id}/{n}".encode()).hexdigest()[:6], 16)


@lru_cache(maxsize=4096)
def photo_bytes(item_id: int, n: int) -> bytes:
    """The JPEG of photo `n` of a listing: 240x320, one colour per listing, a band per photo."""
    c = colour_int(item_id, n)
    img = Image.new("RGB", (240, 320), ((c >> 16) & 255, (c >> 8) & 255, c & 255))
    ImageDraw.Draw(img).rectangle((0, 40 * n, 239, 40 * n + 30), fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()

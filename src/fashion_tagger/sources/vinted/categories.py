"""From the site's catalog tree to the leaves worth crawling, each with its label path.

The tree mixes fashion with homeware, toys, beauty and pet care; a classifier of fashion photos
should not learn those, so they are dropped by default (as the original notebook did), by root
and by title, and the user can change the list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.sources.vinted.api import Node

EXCLUDED_ROOT_IDS = frozenset({1918, 2309, 2093})
EXCLUDED_ROOT_TITLES = frozenset({"home", "entertainment", "pet care", "pets"})
"""Non-fashion roots (Home, Entertainment, Pet care), by id or title; only at the root, so a
"Home shoes" category is kept."""

DEFAULT_EXCLUDE = (
    "Beauty",
    "Grooming",
    "Toys",
    "Baby care",
    "Furniture",
    "Pushchairs",
    "Strollers",
    "Nursing",
    "Bathing",
    "Car seats",
    "Cosmetics",
    "Make-up",
    "Fragrances",
    "Skincare",
    "Hair care",
    "School supplies",
    "Other kids' items",
)
"""Titles (case-insensitive, whole words) whose subtrees are not fashion."""

WOMEN = ("women", "WOMEN_ROOT", 1904)
MEN = ("men", "MEN_ROOT", 5)


class CategoryError(FashionTaggerError):
    """A --categories choice matches nothing in the site's tree."""


@dataclass(frozen=True)
class Leaf:
    """A category to crawl: its id, its titles from the root, and its root's gender if any."""

    id: int
    path: tuple[str, ...]
    item_count: int | None = None
    gender: str = ""

    @property
    def label(self) -> str:
        return " > ".join(self.path)


def _matcher(titles: Iterable[str]) -> re.Pattern[str] | None:
    words = [re.escape(t.strip()) for t in titles if t.strip()]
    if not words:
        return None
    return re.compile(r"(?<!\w)(" + "|".join(words) + r")(?!\w)", re.I)


def _gender(root: Node) -> str:
    for name, (title, code, rid) in (("women", WOMEN), ("men", MEN)):
        if root.id == rid or root.code == code or root.title.lower() == title:
            return name
    return ""


def leaves(roots: Sequence[Node], exclude: Sequence[str] | None = DEFAULT_EXCLUDE) -> list[Leaf]:
    """Every leaf under `roots`, depth first in the site's order, minus excluded subtrees.

    Args:
        exclude: titles whose subtrees are dropped (whole words, any depth); None or () keeps
            everything, the non-fashion roots too.
    """
    pattern = _matcher(exclude or ())
    out: list[Leaf] = []

    def walk(node: Node, path: tuple[str, ...], gender: str) -> None:
        if pattern and pattern.search(node.title):
            return
        path = (*path, node.title)
        if not node.children:
            out.append(Leaf(node.id, path, node.item_count, gender))
        for child in node.children:
            walk(child, path, gender)

    for root in roots:
        if exclude and (root.id in EXCLUDED_ROOT_IDS or root.title.lower() in EXCLUDED_ROOT_TITLES):
            continue
        walk(root, (), _gender(root))
    return out


def select(all_leaves: Sequence[Leaf], roots: Sequence[Node], choices: Sequence[str]) -> list[Leaf]:
    """The leaves under any of `choices`: a node id, a title, or a path `Women > Clothes`."""
    if not choices:
        return list(all_leaves)
    ids: dict[int, set[int]] = {}

    def walk(node: Node) -> set[int]:
        below = {node.id} if not node.children else set()
        for c in node.children:
            below |= walk(c)
        ids[node.id] = below
        return below

    for r in roots:
        walk(r)
    wanted: set[int] = set()
    for choice in choices:
        c = choice.strip()
        found: set[int] = set()
        if c.isdigit():
            found = ids.get(int(c), set())
        else:
            parts = [p.strip().lower() for p in c.split(">")]
            for leaf in all_leaves:
                lower = [p.lower() for p in leaf.path]
                n = len(parts)
                if any(lower[i : i + n] == parts for i in range(len(lower) - n + 1)):
                    found.add(leaf.id)
        found &= {leaf.id for leaf in all_leaves}
        if not found:
            raise CategoryError(
                f"--categories {choice!r} matches no crawlable category; see them with "
                "`fashion-tagger crawl vinted --list-categories` (excluded ones need --keep-all)"
            )
        wanted |= found
    return [leaf for leaf in all_leaves if leaf.id in wanted]


def render_tree(roots: Sequence[Node], kept: Iterable[int]) -> list[str]:
    """The tree as indented lines `title [id] (items)`, excluded leaves marked `(excluded)`."""
    kept = set(kept)
    lines: list[str] = []

    def has_kept(node: Node) -> bool:
        return node.id in kept or any(has_kept(c) for c in node.children)

    def walk(node: Node, depth: int) -> None:
        count = f" ({node.item_count:,} items)" if node.item_count is not None else ""
        mark = "" if has_kept(node) else "  (excluded)"
        lines.append(f"{'  ' * depth}{node.title} [{node.id}]{count}{mark}")
        for c in node.children:
            walk(c, depth + 1)

    for r in roots:
        walk(r, 0)
    return lines

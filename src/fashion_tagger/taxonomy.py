"""The category tree: built from label paths, stored as a typed object, never a separator string.

A node is identified by its level and its index within that level; its name alone is not unique
(two parents may each have an "Other" child). Paths may have different depths: a leaf is any node
without children, at any level.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fashion_tagger.errors import FashionTaggerError


class TaxonomyError(FashionTaggerError):
    """A label path is not a path of the tree."""


def sanitize_name(name: str) -> str:
    """A file-system and URL safe form of a label: `Coats & jackets` -> `coats_and_jackets`.

    The rule of the Vinted notebook: lower case, `&` to `and`, quotes and commas dropped,
    spaces, dashes and slashes to `_`, then anything else outside [a-z0-9_.] dropped.
    """
    s = name.strip().lower().replace("&", "and")
    s = re.sub(r"[\"'`,]", "", s)
    s = re.sub(r"[\s\-/\\]+", "_", s)
    s = re.sub(r"[^a-z0-9_.]", "", s)
    s = re.sub(r"_+", "_", s).strip("_.")
    return s or "_"


@dataclass(frozen=True)
class Taxonomy:
    """A tree of classes, level by level.

    Attributes:
        level_names: one name per level, root level first.
        names: `names[level][i]` is the label of node i at that level.
        parents: `parents[level][i]` is the index of its parent at level-1 (-1 at level 0).
    """

    level_names: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]
    parents: tuple[tuple[int, ...], ...]
    _index: dict[tuple[str, ...], tuple[int, int]] = field(
        init=False, repr=False, compare=False, hash=False
    )
    _children: tuple[tuple[tuple[int, ...], ...], ...] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        if not (len(self.level_names) == len(self.names) == len(self.parents)):
            raise TaxonomyError("level_names, names and parents must have one entry per level")
        index: dict[tuple[str, ...], tuple[int, int]] = {}
        children: list[list[list[int]]] = [[[] for _ in lvl] for lvl in self.names]
        for level, (names, parents) in enumerate(zip(self.names, self.parents, strict=True)):
            if len(names) != len(parents):
                raise TaxonomyError(f"level {level}: {len(names)} names but {len(parents)} parents")
            for i, (name, parent) in enumerate(zip(names, parents, strict=True)):
                if level == 0:
                    if parent != -1:
                        raise TaxonomyError(f"root-level node {name!r} has a parent")
                    path: tuple[str, ...] = (name,)
                else:
                    if not 0 <= parent < len(self.names[level - 1]):
                        raise TaxonomyError(f"node {name!r} at level {level} has no valid parent")
                    path = (*self._path_of(level - 1, parent), name)
                    children[level - 1][parent].append(i)
                if path in index:
                    raise TaxonomyError(f"duplicate node {' > '.join(path)}")
                index[path] = (level, i)
        object.__setattr__(self, "_index", index)
        object.__setattr__(
            self, "_children", tuple(tuple(tuple(c) for c in lvl) for lvl in children)
        )

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_paths(
        cls, paths: Iterable[Sequence[str]], level_names: Sequence[str] | None = None
    ) -> Taxonomy:
        """Build the tree of every prefix of `paths`, nodes sorted by name within each level."""
        depth = 0
        prefixes: list[set[tuple[str, ...]]] = []
        for p in paths:
            p = tuple(p)
            if not p:
                continue
            if any(not isinstance(n, str) or not n for n in p):
                raise TaxonomyError(f"label path {list(p)!r} has an empty or non-text name")
            while len(prefixes) < len(p):
                prefixes.append(set())
            for d in range(len(p)):
                prefixes[d].add(p[: d + 1])
            depth = max(depth, len(p))
        if level_names is None or len(level_names) < depth:
            given = list(level_names or [])
            level_names = given + [f"level{d}" for d in range(len(given), depth)]
        level_names = tuple(level_names[:depth])
        ordered = [sorted(s) for s in prefixes]
        position = [{p: i for i, p in enumerate(lvl)} for lvl in ordered]
        names = tuple(tuple(p[-1] for p in lvl) for lvl in ordered)
        parents = tuple(
            tuple(-1 if d == 0 else position[d - 1][p[:-1]] for p in lvl)
            for d, lvl in enumerate(ordered)
        )
        return cls(level_names, names, parents)

    # -- queries ------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.level_names)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of classes per level."""
        return tuple(len(n) for n in self.names)

    def _path_of(self, level: int, i: int) -> tuple[str, ...]:
        out = []
        while level >= 0:
            out.append(self.names[level][i])
            i = self.parents[level][i]
            level -= 1
        return tuple(reversed(out))

    def path(self, level: int, i: int) -> tuple[str, ...]:
        """The names from the root to node `i` of `level`."""
        return self._path_of(level, i)

    def children(self, level: int, i: int) -> tuple[int, ...]:
        return self._children[level][i] if level < self.depth - 1 else ()

    def is_leaf(self, level: int, i: int) -> bool:
        return not self.children(level, i)

    def leaves(self) -> list[tuple[int, int]]:
        """Every leaf as (level, index), in level-then-index order."""
        return [
            (lvl, i)
            for lvl in range(self.depth)
            for i in range(len(self.names[lvl]))
            if self.is_leaf(lvl, i)
        ]

    def contains(self, path: Sequence[str]) -> bool:
        return tuple(path) in self._index

    def encode(self, path: Sequence[str]) -> list[int]:
        """Class index per level, -1 below the path's depth (masked in the loss)."""
        path = tuple(path)
        if path not in self._index:
            raise TaxonomyError(
                f"{' > '.join(path) or '(empty path)'} is not a path of the taxonomy"
            )
        out = [-1] * self.depth
        for d in range(len(path)):
            out[d] = self._index[path[: d + 1]][1]
        return out

    def decode(self, indices: Sequence[int]) -> tuple[str, ...]:
        """Names for per-level indices (stopping at the first -1); raises if not a valid path."""
        path: list[str] = []
        parent = -1
        for level, i in enumerate(indices):
            if i < 0:
                break
            if not 0 <= i < len(self.names[level]) or self.parents[level][i] != parent:
                raise TaxonomyError(f"indices {list(indices)} are not a path of the taxonomy")
            path.append(self.names[level][i])
            parent = i
        return tuple(path)

    def leaf_index_paths(self) -> list[list[int]]:
        """For each leaf, its index per level from the root (length = the leaf's depth).

        The candidates of path decoding (`fashion_tagger.model.decode`)."""
        out = []
        for level, i in self.leaves():
            idx = [i]
            for lvl in range(level, 0, -1):
                idx.append(self.parents[lvl][idx[-1]])
            out.append(list(reversed(idx)))
        return out

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "levels": list(self.level_names),
            "nodes": [
                [{"name": n, "parent": p} for n, p in zip(names, parents, strict=True)]
                for names, parents in zip(self.names, self.parents, strict=True)
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Taxonomy:
        try:
            return cls(
                tuple(d["levels"]),
                tuple(tuple(n["name"] for n in lvl) for lvl in d["nodes"]),
                tuple(tuple(int(n["parent"]) for n in lvl) for lvl in d["nodes"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TaxonomyError(f"malformed taxonomy: {exc}") from exc

"""A row's value for a name: a level of its label path, an attribute group, or a key of its meta.

`dataset filter --where`, `dataset relevel --levels` and `evaluate --slice-by` all name a property
of a row, and they must agree on what a name means, so the lookup lives here once. A name is, in
this order of precedence:

1. a level name of the dataset (`masterCategory`): the row's label at that depth;
2. an attribute group (`gender`, `colour`): the values of the row's `group=value` attributes (a
   row may carry several values of one group, or none);
3. a level that `relevel` took off the path (kept in `meta["former_levels"]`, see
   `dataset.relevel`);
4. any other key of the row's `meta` whose value is a string, number or boolean (`year`).

Values are strings as the manifest stores them; a number in meta becomes its JSON text.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError

LEVEL, ATTRIBUTE, FORMER_LEVEL, META = "level", "attribute", "former level", "meta"
FORMER_LEVELS = "former_levels"
"""The meta key where `relevel` keeps the values of levels it took off the path."""
SHOWN = 30
"""How many known names or values an error message lists."""


@dataclass(frozen=True)
class Field:
    """One name's values over a dataset's rows.

    Attributes:
        name: the name asked for.
        kind: `level`, `attribute`, `former level` or `meta` (where the values come from).
        values: per row, its values: () when the row has none, several for an attribute group
            the row carries more than once.
    """

    name: str
    kind: str
    values: list[tuple[str, ...]]

    @cached_property
    def counts(self) -> Counter[str]:
        """Rows per value (a row with two values counts for both)."""
        return Counter(v for vs in self.values for v in vs)

    def check_values(self, wanted: Sequence[str], flag: str) -> None:
        """Refuse a value no row has, listing the values that occur (a typo otherwise keeps
        nothing, or keeps everything else, without a word)."""
        for value in wanted:
            if value not in self.counts:
                raise DatasetError(
                    f"{flag} {self.name}={value}: no row has {self.name} {value!r}"
                    f"{_close(value, self.counts)}; its values are {_listing(self.counts)}"
                )


def _close(word: str, known: Sequence[str] | Counter[str]) -> str:
    """`(did you mean 'X'?)` for a near miss (a case slip included), or ''."""
    names = list(known)
    by_case = [n for n in names if n.lower() == word.lower()]
    hits = by_case or difflib.get_close_matches(word, names, n=1, cutoff=0.75)
    return f" (did you mean {hits[0]!r}?)" if hits else ""


def _listing(counts: Counter[str] | dict[str, Any]) -> str:
    """The most common values, with their row counts, and how many more there are."""
    if isinstance(counts, Counter):
        top = [f"{v} ({n:,})" for v, n in counts.most_common(SHOWN)]
    else:
        top = list(counts)[:SHOWN]
    more = len(counts) - len(top)
    return ", ".join(top) + (f" and {more} more" if more > 0 else "") if top else "none"


def _scalar(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return None


def _metas(ds: Dataset) -> list[dict[str, Any]]:
    out = []
    for text in ds.table.column("meta").to_pylist():
        try:
            meta = json.loads(text or "{}")
        except json.JSONDecodeError:
            meta = {}
        out.append(meta if isinstance(meta, dict) else {})
    return out


def known_names(ds: Dataset) -> dict[str, str]:
    """Every name a row can be asked for, with its kind, in order of precedence."""
    names: dict[str, str] = {n: LEVEL for n in ds.level_names}
    for group in ds.attribute_groups:
        names.setdefault(group, ATTRIBUTE)
    former: dict[str, None] = {}
    meta_keys: dict[str, None] = {}
    for meta in _metas(ds):
        levels = meta.get(FORMER_LEVELS)
        if isinstance(levels, dict):
            former.update(dict.fromkeys(k for k, v in levels.items() if _scalar(v)))
        meta_keys.update(dict.fromkeys(k for k, v in meta.items() if _scalar(v) is not None))
    for key in sorted(former):
        names.setdefault(key, FORMER_LEVEL)
    for key in sorted(meta_keys):
        names.setdefault(key, META)
    return names


def field(ds: Dataset, name: str, flag: str) -> Field:
    """The values of `name` on every row of `ds`; an unknown name is an error naming `flag` and
    the names this dataset knows."""
    names = known_names(ds)
    kind = names.get(name)
    if kind is None:
        raise DatasetError(
            f"{flag} {name!r} is no level, attribute group or meta key of this dataset"
            f"{_close(name, list(names))}; known names: {_listing(names)}"
        )
    if kind == LEVEL:
        depth = list(ds.level_names).index(name)
        values = [(p[depth],) if len(p) > depth else () for p in ds.labels]
    elif kind == ATTRIBUTE:
        prefix = name + "="
        values = [
            tuple(dict.fromkeys(a[len(prefix) :] for a in attrs or () if a.startswith(prefix)))
            for attrs in ds.table.column("attributes").to_pylist()
        ]
    elif kind == FORMER_LEVEL:
        values = []
        for meta in _metas(ds):
            levels = meta.get(FORMER_LEVELS)
            v = _scalar(levels.get(name)) if isinstance(levels, dict) else None
            values.append((v,) if v else ())
    else:
        values = [(v,) if (v := _scalar(m.get(name))) else () for m in _metas(ds)]
    return Field(name, kind, values)

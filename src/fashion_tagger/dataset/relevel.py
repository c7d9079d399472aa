"""`relevel`: choose what a dataset's label path is made of, from any of its levels and attributes.

An importer fixes the taxonomy (Kaggle products: masterCategory > subCategory > articleType, with
gender as an attribute), but the target is the user's choice: `relevel --levels gender` makes
gender the only level, `--levels gender,articleType` a two-level tree. Each new level is a name
as `dataset.fields` resolves it: a current level, an attribute group, a former level, a meta key.

What happens to each row, so that nothing is lost and a later relevel, `filter --where` or
`evaluate --slice-by` can still use every name:
- its new path is its values of the names, root first;
- its old path goes to `meta["label_history"]` (as `relabel` keeps it):
  `{"labels": old path, "levels": old level names, "op": "relevel", "at": time}`;
- an old level that is not in the new path keeps its value in `meta["former_levels"]`
  (`{"masterCategory": "Footwear", ...}`), a name `dataset.fields` still resolves; a name that
  enters the path leaves `former_levels`;
- an attribute group that becomes a level leaves `attributes`: a target is not also an
  attribute, or the model would predict it twice and its attribute metrics would copy the level's.
  (Taken off the path again later, it goes to `former_levels`, not back to `attributes`.)
dataset.json gets the new level names and a `relevel` entry in its history (old and new levels,
counts).

A row must have exactly one value of each name. Rows with none (or with several values of an
attribute group) are refused by default, with their count per name: dropping them silently would
change the dataset behind the user's back. `drop_missing` drops them instead, and says how many.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fashion_tagger.dataset import fields, manifest
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.dataset.ops import relocate
from fashion_tagger.errors import DatasetError


@dataclass(frozen=True)
class RelevelResult:
    """What `relevel` did: the levels before and after, rows kept, changed and dropped, and the
    rows each name was missing from (`missing`) or ambiguous in (`ambiguous`: several values)."""

    levels_before: list[str]
    levels_after: list[str]
    images_before: int
    images_after: int
    changed: int
    dropped: int
    missing: dict[str, int]
    ambiguous: dict[str, int]
    classes_per_level: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_levels(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`--levels A,B,C` (or a list of names) as distinct names, root first."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out = tuple(n.strip() for n in names if n.strip())
    if not out:
        raise DatasetError("--levels needs at least one name, e.g. --levels gender")
    if len(set(out)) != len(out):
        raise DatasetError(f"--levels {','.join(out)} names a level twice")
    return out


def _counts_or_refuse(
    columns: list[fields.Field], drop_missing: bool, n_rows: int
) -> tuple[np.ndarray, dict[str, int], dict[str, int]]:
    """The rows that have one value of every name, and the counts of those that do not."""
    keep = np.ones(n_rows, dtype=bool)
    missing: dict[str, int] = {}
    ambiguous: dict[str, int] = {}
    for f in columns:
        n_values = np.array([len(vs) for vs in f.values], dtype=np.int64)
        if (none := int((n_values == 0).sum())) > 0:
            missing[f.name] = none
        if (many := int((n_values > 1).sum())) > 0:
            ambiguous[f.name] = many
        keep &= n_values == 1
    if not keep.all() and not drop_missing:
        said = [f"{n:,} rows have no {name}" for name, n in missing.items()]
        said += [f"{n:,} rows carry several {name} values" for name, n in ambiguous.items()]
        raise DatasetError(
            f"{'; '.join(said)} (of {n_rows:,}): pass --drop-missing to drop them, or keep the "
            "rows you want first with `dataset filter --where NAME=...`"
        )
    if not keep.any():
        raise DatasetError("no row has a value for every --levels name; nothing would be left")
    return keep, missing, ambiguous


def _row_meta(text: str) -> dict[str, Any]:
    meta = json.loads(text or "{}")
    return meta if isinstance(meta, dict) else {}


def relevel(
    ds: Dataset, levels: str | Sequence[str], *, drop_missing: bool = False
) -> tuple[Dataset, RelevelResult]:
    """Rebuild every row's label path from `levels` (see the module docstring); not saved.

    Args:
        levels: names, root first: levels, attribute groups, former levels or meta keys.
        drop_missing: drop rows without exactly one value of each name instead of refusing.
    """
    names = parse_levels(levels)
    columns = [fields.field(ds, name, "--levels") for name in names]
    keep, missing, ambiguous = _counts_or_refuse(columns, drop_missing, len(ds))
    old_levels = list(ds.level_names)
    promoted = {f.name for f in columns if f.kind == fields.ATTRIBUTE}
    at = manifest.now()
    labels, attributes, metas = [], [], []
    changed = 0
    old_attrs = ds.table.column("attributes").to_pylist()
    old_metas = ds.table.column("meta").to_pylist()
    for i in np.flatnonzero(keep):
        old = list(ds.labels[i])
        new = [f.values[i][0] for f in columns]
        meta = _row_meta(old_metas[i])
        former = dict(meta.get(fields.FORMER_LEVELS) or {})
        former.update({n: v for n, v in zip(old_levels, old, strict=False) if n not in names})
        former = {n: v for n, v in former.items() if n not in names}
        if former:
            meta[fields.FORMER_LEVELS] = former
        else:
            meta.pop(fields.FORMER_LEVELS, None)
        if new != old:
            changed += 1
            meta.setdefault("label_history", []).append(
                {"labels": old, "levels": old_levels, "op": "relevel", "at": at}
            )
        labels.append(new)
        attributes.append([a for a in old_attrs[i] or () if a.split("=", 1)[0] not in promoted])
        metas.append(json.dumps(meta, ensure_ascii=False))
    table = ds.table.filter(pa.array(keep))
    for name, values in (("labels", labels), ("attributes", attributes), ("meta", metas)):
        j = table.schema.get_field_index(name)
        table = table.set_column(
            j, table.schema.field(j), pa.array(values, table.schema.field(j).type)
        )
    result = RelevelResult(
        levels_before=old_levels,
        levels_after=list(names),
        images_before=len(ds),
        images_after=table.num_rows,
        changed=changed,
        dropped=int((~keep).sum()),
        missing=missing,
        ambiguous=ambiguous,
        classes_per_level={n: len({row[d] for row in labels}) for d, n in enumerate(names)},
    )
    args = {"levels": list(names), "drop_missing": drop_missing}
    out = ds.with_table(table, levels=tuple(names))
    return out.with_history("relevel", args, result.to_dict()), result


def relevel_dir(
    location: str | Path,
    levels: str | Sequence[str],
    *,
    drop_missing: bool = False,
    out: str | Path | None = None,
) -> tuple[Dataset, RelevelResult]:
    """`relevel` a dataset dir, saved in place or as a new dataset dir at `out`."""
    ds, result = relevel(Dataset.open(location), levels, drop_missing=drop_missing)
    if out is not None:
        ds = relocate(ds, out)
    return ds.save(), result

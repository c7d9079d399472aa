"""Batch prediction: files, folders and globs in; one row per image out (jsonl, csv, parquet).

Rows stream out as batches finish (images of the next batch decode in threads meanwhile), so
memory stays flat on large folders. A file output is written to a temp file and renamed when
complete; an unreadable image gets a row with `error` set, never a crash.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import sys
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from fashion_tagger import _progress, storage
from fashion_tagger._io import atomic_path, check_output
from fashion_tagger.dataset.images import EXTENSIONS
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.inference.tagger import Prediction, Tagger

FORMATS = ("jsonl", "csv", "parquet")
_EXT_FORMAT = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders walked recursively for images, globs expanded (sorted).

    A path that does not exist and matches nothing is kept, so it gets an error row.
    """
    out: list[Path] = []
    for item in inputs:
        if storage.is_url(str(item)):  # a folder, glob or dataset dir on object storage
            out.extend(storage.local_copies(str(item), EXTENSIONS))
            continue
        p = Path(item)
        if p.is_dir():
            out.extend(
                sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in EXTENSIONS)
            )
        elif p.exists():
            out.append(p)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            out.extend(m for m in matches if m.is_file())
        else:
            out.append(p)
    return out


def infer_format(out: str | Path | None, fmt: str | None) -> str:
    """`--format`, else from `--out`'s extension, else jsonl."""
    if fmt:
        if fmt not in FORMATS:
            raise FashionTaggerError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        return fmt
    if out is None:
        return "jsonl"
    ext = Path(out).suffix.lower()
    if ext not in _EXT_FORMAT:
        raise FashionTaggerError(
            f"cannot tell the format of {out} from its extension; add --format jsonl|csv|parquet"
        )
    return _EXT_FORMAT[ext]


def csv_row(p: Prediction, level_names: Sequence[str]) -> dict[str, Any]:
    """A flat CSV row: the path, one label + score column per level, top-k and attributes as JSON."""
    row: dict[str, Any] = {"image": p.image or "", "label": " > ".join(p.labels)}
    by_level = {d["level"]: d for d in p.path}
    for name in level_names:
        d = by_level.get(name)
        row[name] = d["label"] if d else ""
        row[f"{name}_score"] = round(d["score"], 6) if d else ""
    row["top_k"] = json.dumps(p.top_k, ensure_ascii=False) if p.top_k else ""
    row["attributes"] = json.dumps(p.attributes, ensure_ascii=False) if p.attributes else ""
    row["error"] = p.error or ""
    return row


def _parquet_schema():
    import pyarrow as pa

    scored = pa.struct([("level", pa.string()), ("label", pa.string()), ("score", pa.float64())])
    return pa.schema(
        [
            ("image", pa.string()),
            ("path", pa.list_(scored)),
            (
                "top_k",
                pa.list_(pa.struct([("path", pa.list_(pa.string())), ("score", pa.float64())])),
            ),
            ("attributes", pa.list_(pa.struct([("name", pa.string()), ("score", pa.float64())]))),
            ("error", pa.string()),
        ]
    )


class _Writer:
    """Writes prediction rows in one format to an open stream (or a parquet path)."""

    def __init__(self, fmt: str, target: IO[str] | Path, level_names: Sequence[str]) -> None:
        self.fmt, self.target, self.level_names = fmt, target, level_names
        self._csv: csv.DictWriter | None = None
        self._pq = None

    def write(self, preds: list[Prediction]) -> None:
        if self.fmt == "jsonl":
            assert not isinstance(self.target, Path)
            for p in preds:
                self.target.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
        elif self.fmt == "csv":
            assert not isinstance(self.target, Path)
            rows = [csv_row(p, self.level_names) for p in preds]
            if self._csv is None:
                self._csv = csv.DictWriter(
                    self.target, list(csv_row(Prediction(None), self.level_names))
                )
                self._csv.writeheader()
            self._csv.writerows(rows)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = _parquet_schema()
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.target, schema)
            self._pq.write_table(pa.Table.from_pylist([p.to_dict() for p in preds], schema=schema))

    def close(self) -> None:
        if self._pq is not None:
            self._pq.close()
        elif self.fmt == "parquet":  # no rows at all: still a valid, empty file
            import pyarrow.parquet as pq

            pq.write_table(_parquet_schema().empty_table(), self.target)


def predict_paths(
    run_dir: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    fmt: str | None = None,
    batch_size: int = 32,
    top_k: int = 5,
    backend: str = "auto",
    progress: bool = True,
    stdout: IO[str] | None = None,
) -> dict[str, Any]:
    """Tag every image of `inputs` with the model of `run_dir`; write rows to `out` (or stdout
    as jsonl). Returns a summary: images, errors, format, out, backend.

    Example:
        >>> predict_paths("runs/p1", ["photos/", "more/*.jpg"], "preds.parquet")
    """
    fmt = infer_format(out, fmt)
    if out is None and fmt == "parquet":
        raise FashionTaggerError("parquet needs a file: add --out predictions.parquet")
    if batch_size < 1 or top_k < 1:
        raise FashionTaggerError("--batch-size and --top-k must be 1 or more")
    files = expand_inputs(inputs)
    if not files:
        raise FashionTaggerError(f"no images found in {', '.join(map(str, inputs))}")
    if out is not None:
        check_output(out, [*inputs, *files])
    tagger = Tagger.load(run_dir, backend=backend)
    n = errors = 0
    first_error = ""
    with ExitStack() as stack:
        if out is None:
            target: IO[str] | Path = stdout or sys.stdout
        else:
            tmp = stack.enter_context(atomic_path(out))
            target = (
                tmp
                if fmt == "parquet"
                else stack.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
            )
        writer = _Writer(fmt, target, tagger.spec.level_names)
        bar = stack.enter_context(_progress.bar("predicting", total=len(files), enabled=progress))
        for preds in tagger.iter_predict(files, batch_size=batch_size, top_k=top_k):
            writer.write(preds)
            n += len(preds)
            errors += sum(p.error is not None for p in preds)
            first_error = first_error or next(
                (f"{p.path}: {p.error}" for p in preds if p.error), ""
            )
            bar.advance(len(preds))
        if n and errors == n:  # raised inside the stack: a file --out is never written
            raise FashionTaggerError(
                f"none of the {n} inputs could be tagged (first: {first_error})"
                + (f"; nothing was written to {out}" if out is not None else "")
            )
        writer.close()
        if isinstance(target, io.TextIOBase) and out is not None:
            target.flush()
    return {
        "images": n,
        "errors": errors,
        "format": fmt,
        "out": str(out) if out is not None else None,
        "backend": tagger.backend_name,
    }

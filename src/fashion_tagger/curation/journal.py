"""The review's decisions, kept durably in the dataset dir: `review/decisions.jsonl`.

A reviewer's decisions are worth minutes of attention each, so they live beside the data they
are about, not in a browser profile. The file is an append-only journal: one JSON object a line,

    {"image": "images/ab/ab12....jpg", "item_id": "15970", "decision": "accept",
     "labels": ["Apparel", "Topwear", "Tshirts"], "at": "2026-01-02T03:04:05+00:00"}

where `decision` is "accept", "reject" or null (null clears an earlier decision) and `labels`
the path the decision keeps (the suggested one for accept, the given one for reject), so the
journal means the same thing after the audit is re-run. The latest line for an image wins.

Why this shape:
- An append is one `write` of one line on an `O_APPEND` descriptor, then `fsync`, before the
  caller answers: a decision acknowledged is on disk, and a kill -9 can only tear the line being
  written. A torn last line is ignored on read and cut off by the next append.
- Every writer holds an exclusive `flock` on `review/.lock` (not on the journal itself, whose
  inode compaction replaces) while it appends or compacts, so two tabs or two server processes
  on one dataset never lose each other's lines.
- Compaction rewrites the journal to the latest decision per image (cleared ones dropped) via a
  temp file and a rename, so a reader sees the old journal or the new one, never half of one.
  Readers take no lock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fashion_tagger._io import atomic_path
from fashion_tagger.errors import DatasetError

REVIEW_DIR = "review"
JOURNAL_FILE = f"{REVIEW_DIR}/decisions.jsonl"
LOCK_FILE = f"{REVIEW_DIR}/.lock"
DECISIONS = ("accept", "reject")
COMPACT_SLACK = 1000
"""Compact on append once the journal holds this many lines more than live decisions: a few
hundred kB at most, so reads stay fast, and a rewrite stays rare."""


class JournalError(DatasetError):
    """A decision is malformed, or the journal holds a line that is not a decision."""


@dataclass(frozen=True)
class Decision:
    """One reviewer's decision on one row of `label_issues.parquet`."""

    image: str
    decision: str | None
    item_id: str | None = None
    labels: tuple[str, ...] | None = None
    at: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels) if self.labels is not None else None
        return d


def _check(d: Decision) -> Decision:
    """The decision itself, or a one-line error saying which field is wrong."""
    if not isinstance(d.image, str) or not d.image:
        raise JournalError("a decision needs an `image`: the row's image as in label_issues")
    if d.decision is not None and d.decision not in DECISIONS:
        raise JournalError(
            f"decision for {d.image!r} must be accept, reject or null, not {d.decision!r}"
        )
    if d.item_id is not None and not isinstance(d.item_id, str):
        raise JournalError(f"item_id for {d.image!r} must be a string")
    if d.labels is not None and not all(isinstance(x, str) and x for x in d.labels):
        raise JournalError(f"labels for {d.image!r} must be a list of names")
    return d


def _parse(line: bytes) -> Decision:
    """A journal line as a `Decision` (ValueError when it is not one)."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    labels = obj.get("labels")
    if labels is not None and not isinstance(labels, list):
        raise ValueError("labels is not a list")
    d = Decision(
        image=obj.get("image"),
        decision=obj.get("decision"),
        item_id=obj.get("item_id"),
        labels=tuple(labels) if labels is not None else None,
        at=str(obj.get("at") or ""),
    )
    try:
        return _check(d)
    except JournalError as exc:
        raise ValueError(str(exc)) from exc


def _line(d: Decision) -> bytes:
    text = json.dumps(d.to_dict(), ensure_ascii=False, separators=(",", ":"))
    return (text + "\n").encode()


def _fsync_dir(path: Path) -> None:
    """Make a new name in `path` durable (the file's own fsync does not cover its entry)."""
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Journal:
    """The decisions journal of one dataset dir (see the module docstring).

    Example:
        >>> j = Journal("data/products")
        >>> j.append(Decision("images/ab/ab12.jpg", "accept", labels=("A", "B")))
        >>> j.latest()["images/ab/ab12.jpg"].decision
        'accept'
    """

    def __init__(self, dataset_dir: str | os.PathLike[str]) -> None:
        self.root = Path(dataset_dir)
        self.path = self.root / JOURNAL_FILE
        self.lock_path = self.root / LOCK_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The one writer of the journal at a time (an exclusive flock, held for one append)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as f:
            try:
                import fcntl
            except ImportError:  # not POSIX: appends still are single O_APPEND writes
                yield
                return
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def append(self, *decisions: Decision) -> list[Decision]:
        """Append decisions, durably (fsynced) before returning; compacts now and then.

        Returns:
            The decisions as stored (stamped with the time, unless they carry one).
        """
        checked = [_check(d) for d in decisions]
        if not checked:
            return []
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        checked = [d if d.at else _with_at(d, stamp) for d in checked]
        data = b"".join(_line(d) for d in checked)
        with self._locked():
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                _cut_torn_tail(fd)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)
            lines, live = self._counts()
            if lines - live >= COMPACT_SLACK:
                self._compact_locked()
        return checked

    def entries(self) -> list[Decision]:
        """Every decision in the journal, oldest first; a torn last line is left out."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = raw.split(b"\n")
        last_complete = raw.endswith(b"\n")
        lines = lines[:-1]  # the empty string after the final newline, or the torn tail
        out = []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                out.append(_parse(line))
            except (ValueError, UnicodeDecodeError) as exc:
                if n == len(lines) and last_complete:
                    continue  # a last line garbled by a crash: never acknowledged
                raise JournalError(
                    f"line {n} of {self.path} is not a decision ({exc}); "
                    "delete that line to keep the others"
                ) from exc
        return out

    def latest(self) -> dict[str, Decision]:
        """The latest decision per image, cleared ones (null) left out, in first-decided order."""
        return latest_of(self.entries())

    def compact(self) -> int:
        """Rewrite the journal to its latest decisions (atomically); returns the lines kept."""
        with self._locked():
            return self._compact_locked()

    def _counts(self) -> tuple[int, int]:
        entries = self.entries()
        return len(entries), len(latest_of(entries))

    def _compact_locked(self) -> int:
        if not self.path.exists():
            return 0
        keep = list(latest_of(self.entries()).values())
        with atomic_path(self.path) as tmp:
            tmp.write_bytes(b"".join(_line(d) for d in keep))
        _fsync_dir(self.path.parent)
        return len(keep)


def latest_of(entries: list[Decision]) -> dict[str, Decision]:
    """The latest decision per image of `entries`: a later line replaces an earlier one (and
    moves the image to the end), null clears it."""
    out: dict[str, Decision] = {}
    for d in entries:
        out.pop(d.image, None)
        if d.decision is not None:
            out[d.image] = d
    return out


def _with_at(d: Decision, stamp: str) -> Decision:
    return Decision(d.image, d.decision, d.item_id, d.labels, stamp)


def _cut_torn_tail(fd: int) -> None:
    """Cut a last line without its newline (a writer killed mid-line) so the next line starts
    clean; the caller holds the lock, so no other writer is mid-line now."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    start = max(0, size - (1 << 16))
    tail = os.pread(fd, size - start, start)
    cut = tail.rfind(b"\n")
    while cut < 0 and start > 0:  # a torn line over 64 kB: look further back
        start = max(0, start - (1 << 16))
        tail = os.pread(fd, size - start, start)
        cut = tail.rfind(b"\n")
    os.ftruncate(fd, start + cut + 1 if cut >= 0 else 0)


def stored_decisions(dataset_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The journal's latest decisions in the decisions-file format `relabel` reads (the review
    page's export), sorted by image: the same decisions make the same change set, whatever
    order they were made in."""
    latest = Journal(dataset_dir).latest()
    out = []
    for image in sorted(latest):
        d = latest[image]
        entry: dict[str, Any] = {"image": d.image}
        if d.item_id is not None:
            entry["item_id"] = d.item_id
        entry["decision"] = d.decision
        entry["labels"] = list(d.labels) if d.labels is not None else None
        out.append(entry)
    return out

"""The decisions journal: latest decision per image wins, appends survive compaction and crashes,
and concurrent writers never lose each other's lines."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fashion_tagger.curation import journal as journal_mod
from fashion_tagger.curation.journal import (
    JOURNAL_FILE,
    Decision,
    Journal,
    JournalError,
    stored_decisions,
)

IMAGES = [f"images/{i:02x}/{i:02x}aa.jpg" for i in range(6)]


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_the_latest_decision_per_image_wins_and_null_clears(tmp_path):
    j = Journal(tmp_path)
    assert j.latest() == {} and j.entries() == []
    j.append(Decision(IMAGES[0], "accept", item_id="7", labels=("A", "B")))
    j.append(Decision(IMAGES[1], "reject", labels=("A", "C")))
    j.append(Decision(IMAGES[0], "reject", labels=("A", "X")))
    j.append(Decision(IMAGES[1], None))
    latest = j.latest()
    assert list(latest) == [IMAGES[0]]
    assert (latest[IMAGES[0]].decision, latest[IMAGES[0]].labels) == ("reject", ("A", "X"))
    assert latest[IMAGES[0]].at  # stamped on append
    assert (tmp_path / JOURNAL_FILE).is_file()
    assert len(lines_of(tmp_path / JOURNAL_FILE)) == 4
    assert j.compact() == 1
    assert [d["image"] for d in lines_of(tmp_path / JOURNAL_FILE)] == [IMAGES[0]]
    assert j.latest() == latest


def test_stored_decisions_are_in_the_decisions_file_format_sorted_by_image(tmp_path):
    j = Journal(tmp_path)
    j.append(Decision(IMAGES[3], "accept", item_id="3", labels=("A", "B")))
    j.append(Decision(IMAGES[1], "reject", labels=("A", "C")))
    assert stored_decisions(tmp_path) == [
        {"image": IMAGES[1], "decision": "reject", "labels": ["A", "C"]},
        {"image": IMAGES[3], "item_id": "3", "decision": "accept", "labels": ["A", "B"]},
    ]


@pytest.mark.parametrize(
    ("decision", "match"),
    [
        (Decision("", "accept"), "needs an `image`"),
        (Decision(IMAGES[0], "maybe"), "accept, reject or null"),
        (Decision(IMAGES[0], "accept", item_id=3), "item_id"),  # type: ignore[arg-type]
        (Decision(IMAGES[0], "accept", labels=("A", "")), "labels"),
    ],
)
def test_a_malformed_decision_is_refused_before_anything_is_written(tmp_path, decision, match):
    j = Journal(tmp_path)
    with pytest.raises(JournalError, match=match):
        j.append(Decision(IMAGES[1], "accept"), decision)
    assert j.entries() == []


def test_a_torn_last_line_is_ignored_and_cut_by_the_next_append(tmp_path):
    j = Journal(tmp_path)
    j.append(Decision(IMAGES[0], "accept", labels=("A",)))
    path = tmp_path / JOURNAL_FILE
    with open(path, "ab") as f:  # what a writer killed mid-line leaves
        f.write(b'{"image": "images/01/01aa.jpg", "deci')
    assert list(j.latest()) == [IMAGES[0]]
    j.append(Decision(IMAGES[2], "reject"))
    assert [d["image"] for d in lines_of(path)] == [IMAGES[0], IMAGES[2]]
    with open(path, "ab") as f:  # a complete but garbled last line: never acknowledged either
        f.write(b"\x00\x00\x00\n")
    assert list(j.latest()) == [IMAGES[0], IMAGES[2]]


def test_a_garbled_line_inside_the_journal_is_an_error_that_says_where(tmp_path):
    path = tmp_path / JOURNAL_FILE
    path.parent.mkdir()
    good = json.dumps({"image": IMAGES[0], "decision": "accept"})
    path.write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(JournalError, match=r"line 2 of .*decisions\.jsonl"):
        Journal(tmp_path).latest()


OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"), st.sampled_from(IMAGES), st.sampled_from(["accept", "reject", None])
        ),
        st.tuples(st.just("compact")),
        st.tuples(st.just("crash"), st.binary(min_size=1, max_size=40)),
    ),
    max_size=30,
)


@given(ops=OPS)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_interleaved_appends_compactions_and_crashes_keep_every_acknowledged_decision(
    tmp_path_factory, ops
):
    root = tmp_path_factory.mktemp("journal")
    j = Journal(root)
    model: dict[str, str] = {}
    for op in ops:
        if op[0] == "append":
            _, image, decision = op
            j.append(Decision(image, decision))
            model.pop(image, None)
            if decision is not None:
                model[image] = decision
        elif op[0] == "compact":
            assert j.compact() == len(model)
        else:  # a writer dies mid-line: bytes with no newline at the end
            (root / JOURNAL_FILE).parent.mkdir(exist_ok=True)
            with open(root / JOURNAL_FILE, "ab") as f:
                f.write(op[1].replace(b"\n", b" "))
        assert {k: d.decision for k, d in j.latest().items()} == model
        assert list(j.latest()) == list(model)  # same order: re-decided images move last


def test_compaction_runs_by_itself_once_the_journal_has_enough_dead_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_mod, "COMPACT_SLACK", 5)
    j = Journal(tmp_path)
    for i in range(12):
        j.append(Decision(IMAGES[0], "accept" if i % 2 else "reject"))
    assert len(lines_of(tmp_path / JOURNAL_FILE)) < 6
    assert j.latest()[IMAGES[0]].decision == "accept"


def _writer(root: str, worker: int, n: int, compact: bool) -> None:
    j = Journal(root)
    for i in range(n):
        j.append(Decision(f"images/w{worker}/{i}.jpg", "accept" if i % 2 else "reject"))
        if compact and i % 5 == 0:
            j.compact()


def test_concurrent_writers_and_compactions_lose_no_decision(tmp_path):
    n, workers = 40, 3
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_writer, args=(str(tmp_path), w, n, w == 0)) for w in range(workers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    latest = Journal(tmp_path).latest()
    assert sorted(latest) == sorted(
        f"images/w{w}/{i}.jpg" for w in range(workers) for i in range(n)
    )
    assert all(d.decision == ("accept" if int(k.split("/")[-1][:-4]) % 2 else "reject")
               for k, d in latest.items())  # fmt: skip

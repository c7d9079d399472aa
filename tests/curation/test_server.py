"""`fashion-tagger review DIR`: the served review page keeps every decision in the dataset dir,
through a kill -9, two writers at once and a browser reload; `dataset relabel DIR` applies them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from run_fixtures import make_synthetic_dataset
from typer.testing import CliRunner

from fashion_tagger.cli import app
from fashion_tagger.curation.journal import JOURNAL_FILE
from fashion_tagger.curation.relabel import read_issues
from fashion_tagger.curation.server import create_app
from fashion_tagger.dataset.core import Dataset
from fashion_tagger.errors import DatasetError

ISSUES_FILE = "label_issues.parquet"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def review_server(dataset: Path, log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`fashion-tagger review DATASET --port P` in its own process, once it answers."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fashion_tagger", "review", str(dataset), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):  # polled until it answers; the bound only stops a hang
            if proc.poll() is not None:
                raise AssertionError(f"the review server exited: {log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/api/decisions", timeout=5).status_code == 200:
                    break
            threading.Event().wait(0.1)
        else:
            raise AssertionError(f"the review server never answered: {log.read_text()}")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)


def post(url: str, image: str, decision: str | None) -> httpx.Response:
    return httpx.post(f"{url}/api/decisions", json={"image": image, "decision": decision})


def stored(url: str) -> dict[str, str]:
    got = httpx.get(f"{url}/api/decisions").json()["decisions"]
    return {d["image"]: d["decision"] for d in got}


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> Path:
    """A small dataset dir after a real `fashion-tagger audit` (the tiny run's backbone)."""
    from run_fixtures import shared_tiny_run

    run_dir, dataset_dir = shared_tiny_run()
    data = tmp_path_factory.mktemp("served") / "data"
    shutil.copytree(dataset_dir, data)
    args = ["audit", str(data), "--run", str(run_dir), "--folds", "3", "--no-progress"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    return data


@pytest.fixture
def dataset(audited, tmp_path) -> Path:
    """A fresh copy of the audited dataset dir for each test (decisions change it)."""
    return Path(shutil.copytree(audited, tmp_path / "data"))


def test_decisions_survive_kill_9_and_relabel_applies_them(dataset, tmp_path):
    issues = read_issues(dataset).to_pylist()
    # three rows whose suggestion differs from their label, so an accept changes something
    differing = [r for r in issues if r["suggested"] != r["given"]][:2]
    assert differing, "the audit suggested no other label: nothing for an accept to change"
    rows = (differing + [r for r in issues if r not in differing])[:3]
    want = {rows[0]["image"]: "accept", rows[1]["image"]: "reject", rows[2]["image"]: "accept"}
    with review_server(dataset, tmp_path / "log") as (proc, url):
        page = httpx.get(url + "/")
        assert page.status_code == 200 and '"server":true' in page.text
        for image, decision in want.items():
            answer = post(url, image, decision)
            assert answer.status_code == 200, answer.text
            assert answer.json()["decision"] == decision and answer.json()["at"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    with review_server(dataset, tmp_path / "log") as (_, url):
        assert stored(url) == want
    before = {r["image"]: r["given"] for r in issues}
    out = CliRunner().invoke(app, ["dataset", "relabel", str(dataset), "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert (result["accepted"], result["rejected"]) == (2, 1)
    ds = Dataset.open(dataset)
    labels = dict(zip(ds.table.column("image").to_pylist(), ds.labels, strict=True))
    suggested = {r["image"]: r["suggested"] for r in issues}
    for image, decision in want.items():
        assert labels[image] == (suggested[image] if decision == "accept" else before[image])
        meta = ds.meta(ds.table.column("image").to_pylist().index(image))
        assert meta["review"]["decision"] == decision
    changed = [i for i, d in want.items() if d == "accept" and suggested[i] != before[i]]
    assert changed and result["changed"] == len(changed)


def test_two_clients_on_two_servers_lose_nothing(dataset, tmp_path):
    images = [r["image"] for r in read_issues(dataset).to_pylist()][:40]
    halves = {0: images[0::2], 1: images[1::2]}
    with (
        review_server(dataset, tmp_path / "log0") as (_, url0),
        review_server(dataset, tmp_path / "log1") as (_, url1),
    ):
        urls = [url0, url1]
        errors: list[str] = []

        def client(k: int) -> None:
            with httpx.Client(base_url=urls[k]) as c:
                for image in halves[k]:
                    d = "accept" if k == 0 else "reject"
                    r = c.post("/api/decisions", json={"image": image, "decision": d})
                    if r.status_code != 200:
                        errors.append(r.text)

        threads = [threading.Thread(target=client, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        want = {i: "accept" for i in halves[0]} | {i: "reject" for i in halves[1]}
        assert stored(url0) == want and stored(url1) == want
    lines = (dataset / JOURNAL_FILE).read_text().splitlines()
    assert len(lines) == len(images)  # one whole line per decision, none torn or interleaved


# -- the API in process -----------------------------------------------------------------------
def issue_rows(ds: Dataset) -> list[dict]:
    images = ds.table.column("image").to_pylist()
    items = ds.table.column("item_id").to_pylist()
    specs = [
        (["round", "red"], ["round", "blue"], 0.95, "label"),
        (["square", "green"], ["round", "green"], 0.90, "label"),
        ([], ["square", "green"], 0.70, "low_confidence"),
        (["square", "red"], ["square", "red"], 0.05, "ok"),
    ]
    return [
        {"item_id": items[i], "image": images[i], "given": g, "suggested": s, "score": sc,
         "kind": k, "level": None, "is_issue": k != "ok"}
        for i, (g, s, sc, k) in enumerate(specs)
    ]  # fmt: skip


@pytest.fixture
def small(tmp_path) -> Path:
    root = make_synthetic_dataset(tmp_path / "shapes", n=6)
    pq.write_table(pa.Table.from_pylist(issue_rows(Dataset.open(root))), root / ISSUES_FILE)
    return root


def test_the_api_stores_labels_validates_and_clears(small):
    rows = issue_rows(Dataset.open(small))
    client = TestClient(create_app(small), base_url="http://127.0.0.1")
    ok = client.post("/api/decisions", json={"image": rows[0]["image"], "decision": "accept"})
    assert ok.status_code == 200
    r = client.post("/api/decisions", json={"image": rows[2]["image"], "decision": "reject"})
    assert r.status_code == 200 and r.json()["labels"] == []  # unlabelled row: keeps no label
    # an unflagged row of the issues file may be decided too; a stranger may not
    ok = client.post("/api/decisions", json={"image": rows[3]["image"], "decision": "reject"})
    assert ok.status_code == 200
    missing = client.post("/api/decisions", json={"image": "images/00/x.jpg", "decision": "accept"})
    assert (
        missing.status_code == 404 and "no row of label_issues.parquet" in missing.json()["detail"]
    )
    bad = client.post("/api/decisions", json={"image": rows[0]["image"], "decision": "maybe"})
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], str)
    extra = client.post(
        "/api/decisions", json={"image": rows[0]["image"], "decision": None, "x": 1}
    )
    assert extra.status_code == 422
    form = client.post("/api/decisions", content=b"image=a", headers={"Content-Type": "text/plain"})
    assert form.status_code == 422  # JSON only: a form on another site cannot post decisions
    ok = client.post("/api/decisions", json={"image": rows[3]["image"], "decision": None})
    assert ok.status_code == 200
    got = client.get("/api/decisions").json()["decisions"]
    assert [(d["image"], d["decision"], d["labels"]) for d in got] == [
        (rows[0]["image"], "accept", ["round", "blue"]),
        (rows[2]["image"], "reject", []),
    ]
    rebound = TestClient(create_app(small), base_url="http://attacker.example")
    assert rebound.get("/api/decisions").status_code == 400  # a rebound name is not answered


def test_no_issues_file_is_one_error_before_serving(tmp_path):
    bare = make_synthetic_dataset(tmp_path / "bare", n=4)
    with pytest.raises(DatasetError, match="fashion-tagger audit"):
        create_app(bare)
    out = CliRunner().invoke(app, ["review", str(bare), "--port", str(free_port())])
    assert isinstance(out.exception, DatasetError)


# -- Chromium against the running server ------------------------------------------------------
def test_decisions_made_in_the_browser_survive_a_reload(small, tmp_path):
    from browser import chrome
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    rows = [r for r in issue_rows(Dataset.open(small)) if r["is_issue"]]

    def settled(driver) -> list:
        """The page's decisions once it has loaded them and every post has been answered."""
        script = "return window.review && window.review.ready() && window.review.pending() === 0"
        WebDriverWait(driver, 120, poll_frequency=0.2).until(lambda d: d.execute_script(script))
        return driver.execute_script("return window.review.decisions()")

    with review_server(small, tmp_path / "log") as (_, url), chrome() as driver:
        driver.get(url + "/")
        assert settled(driver) == []
        assert driver.execute_script("return window.review.mode()") == "server"
        # accept, reject, accept; undo the last (stored as a clearing), then reject it instead
        for key in ("a", "r", "a", "u", "r"):
            ActionChains(driver).send_keys(key).perform()
        made = settled(driver)
        assert [(d["image"], d["decision"]) for d in made] == [
            (rows[0]["image"], "accept"),
            (rows[1]["image"], "reject"),
            (rows[2]["image"], "reject"),
        ]
        assert stored(url) == {d["image"]: d["decision"] for d in made}
        status = driver.execute_script("return document.getElementById('saved').textContent")
        assert status == "all decisions saved"
        driver.execute_script("localStorage.clear()")  # the browser keeps nothing of its own
        driver.refresh()
        assert settled(driver) == made
        status = driver.execute_script("return document.getElementById('saved').textContent")
        assert status == "3 decisions loaded from the dataset dir"

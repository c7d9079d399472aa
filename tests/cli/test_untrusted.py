"""Hostile or broken input through the real entry point: one line on stderr, a non-zero exit,
no traceback, and nothing already written lost."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fashion_tagger", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_crawl_against_an_unreachable_host_is_one_line_naming_it(tmp_path: Path) -> None:
    port = _closed_port()
    out = tmp_path / "crawl"
    res = _cli(
        "crawl", "vinted", "--out", str(out), "--base-url", f"http://127.0.0.1:{port}",
        "--no-progress", "--timeout", "5",
    )  # fmt: skip
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "re-run the same command" in lines[0]
    assert (out / "crawl.db").is_file()  # the state is there for the re-run

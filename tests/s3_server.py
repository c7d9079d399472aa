"""A real S3-compatible server on 127.0.0.1 for tests: moto's server mode, in its own process.

The `s3` fixture gives each test a fresh bucket URL, with the standard AWS variables pointing the
client at the server (`AWS_ENDPOINT_URL`) and dummy credentials, and a private image cache.
Import both fixtures into a test module:
`from s3_server import s3_bucket_fixture, s3_endpoint_fixture`, then ask for `s3`.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", name="s3_endpoint")
def s3_endpoint_fixture() -> Iterator[str]:
    """`http://127.0.0.1:<port>` of a moto server started for this test session."""
    pytest.importorskip("moto.server", reason="pip install 'moto[server]' (a test dependency)")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"moto server did not start on port {port}")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(name="s3")
def s3_bucket_fixture(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> str:
    """`s3://<fresh bucket>` on the local server; the cache is the test's own."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("FASHION_TAGGER_CACHE", str(tmp_path / "cache"))
    import fsspec

    bucket = f"ft-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(bucket)
    return f"s3://{bucket}"

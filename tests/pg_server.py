"""A real PostgreSQL server on 127.0.0.1 for tests, started from Debian's `postgresql` package.

`initdb` + `pg_ctl` from /usr/lib/postgresql/*/bin make a throwaway cluster in a temp dir,
listening on a free port of 127.0.0.1 only (no Unix socket), with trust authentication for the
`postgres` user. PostgreSQL refuses to run as root, so as root the cluster belongs to `nobody`
and the commands run through `runuser`. Without the package (or without `runuser` as root) the
fixture skips with the reason. Import it into a test module:
`from pg_server import pg_url_fixture`, then ask for `pg_url`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", name="pg_url")
def pg_url_fixture() -> Iterator[str]:
    """`postgresql+psycopg://postgres@127.0.0.1:<port>/postgres` of a server for this session."""
    pytest.importorskip("psycopg", reason="pip install 'fashion-tagger[sql]' (psycopg)")
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; make test does)")
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing: postgres refuses to run as root")
        prefix = ["runuser", "-u", "nobody", "--"]
    tmp = tempfile.mkdtemp(prefix="ft-pg-")
    if prefix:
        shutil.chown(tmp, "nobody")
    data, log, port = os.path.join(tmp, "data"), os.path.join(tmp, "log"), _free_port()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)

    init = run(f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    if init.returncode:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"
    start = run(f"{bin_dir}/pg_ctl", "-D", data, "-l", log, "-o", opts, "-w", "-t", "90", "start")
    if start.returncode:
        text = Path(log).read_text()[-500:] if os.path.exists(log) else start.stderr
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"postgres did not start on port {port}: {text}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(tmp, ignore_errors=True)

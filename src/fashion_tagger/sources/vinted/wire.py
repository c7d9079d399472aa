"""The crawl's network I/O in a helper process, so a killed crawl wastes no request it sent.

A request in flight when the crawl is killed (SIGKILL included) has reached the site, which
counts it, but its answer dies with the process, and the resumed crawl must ask again. The
crawl's session therefore sends its requests through `WireTransport`, an httpx transport that
hands each one to a helper process (`wire.main`, started by the transport) doing the HTTP
itself. The helper writes every successful answer into a journal before passing it back,
and the crawl deletes the entry (`settle`) once what it made of the answer is committed. When
the crawl dies, the helper finishes the requests in flight (bounded by the request timeout),
leaves their answers in the journal and exits; the resumed crawl takes every answer it has not
settled from there instead of asking the site again.

The helper shares the crawl's lock on the dataset dir, so a resumed crawl waits for it to drain.
The home page (path `/`) is never journaled: every run loads it afresh for its cookie. Errors
(429, 5xx, 401...) are not journaled either: they are retried anyway.

Frames on the pipes: 8 bytes (`!II`, sizes of the JSON header and of the body), the UTF-8 JSON
header, the body. Requests: `{"id", "method", "url", "headers"}`; answers: `{"id", "status",
"headers"}` with the decoded body, or `{"id", "error": "timeout"|"network", "type", "message"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import struct
import sys
from pathlib import Path
from typing import Any

import httpx

from fashion_tagger._io import write_bytes_atomic
from fashion_tagger.errors import FashionTaggerError

_SIZES = struct.Struct("!II")
_SUFFIX = ".resp"
# the helper hands back the decoded body: these would make the client decode or count it again
_DROP = {"content-encoding", "content-length", "transfer-encoding"}


class WireBroken(FashionTaggerError):
    """The network helper process stopped; the crawl stops (resumably) rather than fail pages."""


def journal_path(journal: Path, method: str, url: str) -> Path:
    """Where the answer to `method url` waits for a resumed crawl."""
    return journal / (hashlib.sha1(f"{method} {url}".encode()).hexdigest() + _SUFFIX)


def pending_answers(journal: Path) -> int:
    """Answers in `journal` that a killed run received and no run has settled yet."""
    return len(list(journal.glob("*" + _SUFFIX)))


def _journaled(url: httpx.URL) -> bool:
    # the home page is loaded afresh by every run, for its cookie
    return url.path not in ("", "/")


def _frame(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return _SIZES.pack(len(head), len(body)) + head + body


async def _read_frame(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes] | None:
    try:
        n_head, n_body = _SIZES.unpack(await reader.readexactly(_SIZES.size))
        head = json.loads(await reader.readexactly(n_head))
        return head, await reader.readexactly(n_body)
    except asyncio.IncompleteReadError:
        return None


class WireTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose requests are made by a helper process that outlives a kill.

    Args:
        journal: the directory of answers kept for a resumed crawl.
        timeout: the helper's per-request timeout, seconds.
        connections: the helper's connection pool size.
        pass_fds: file descriptors the helper keeps open (the crawl's lock).
    """

    def __init__(
        self,
        journal: Path,
        timeout: float,
        connections: int,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.journal = Path(journal)
        self.timeout, self.connections = timeout, connections
        self.pass_fds = pass_fds
        self.replayed = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], bytes]]] = {}
        self._next_id = 0
        self._start_lock = asyncio.Lock()
        self._reader_task: asyncio.Task[None] | None = None
        self._broken: str | None = None

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        async with self._start_lock:
            if self._proc is None:
                self.journal.mkdir(parents=True, exist_ok=True)
                self._proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", f"from {__name__} import main; main()",
                    str(self.journal), str(self.timeout), str(self.connections),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    pass_fds=self.pass_fds,
                )  # fmt: skip
                self._reader_task = asyncio.create_task(self._read_answers(self._proc))
            return self._proc

    async def _read_answers(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while (frame := await _read_frame(proc.stdout)) is not None:
            fut = self._pending.pop(frame[0]["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(frame)
        self._broken = f"the crawl's network helper stopped (exit code {await proc.wait()})"
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WireBroken(self._broken))
        self._pending.clear()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        method, url = request.method, str(request.url)
        kept = journal_path(self.journal, method, url)
        if _journaled(request.url) and kept.is_file():  # answered, but not settled, before a kill
            self.replayed += 1
            return httpx.Response(200, content=kept.read_bytes(), request=request)
        if self._broken:
            raise WireBroken(self._broken)
        proc = await self._ensure_started()
        assert proc.stdin is not None
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[tuple[dict[str, Any], bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[rid] = fut
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.headers.raw]
        proc.stdin.write(
            _frame({"id": rid, "method": method, "url": url, "headers": headers}, request.content)
        )
        try:
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            self._pending.pop(rid, None)
            raise WireBroken("the crawl's network helper stopped") from None
        head, body = await fut
        if "error" in head:
            kind = getattr(httpx, head.get("type", ""), None)
            base = httpx.TimeoutException if head["error"] == "timeout" else httpx.TransportError
            if not (isinstance(kind, type) and issubclass(kind, base)):
                kind = httpx.ReadTimeout if head["error"] == "timeout" else httpx.NetworkError
            raise kind(head.get("message", ""), request=request)
        return httpx.Response(
            head["status"], headers=head["headers"], content=body, request=request
        )

    def settle(self, method: str, url: str) -> None:
        """What the crawl made of the answer to `method url` is committed: drop its entry."""
        journal_path(self.journal, method, url).unlink(missing_ok=True)

    async def aclose(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()  # end of requests: the helper finishes what is in flight and exits
        with contextlib.suppress(ProcessLookupError):
            try:
                await asyncio.wait_for(proc.wait(), self.timeout + 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader_task is not None:
            await self._reader_task


# -- the helper process ------------------------------------------------------------------------
async def _fetch(
    client: httpx.AsyncClient, head: dict[str, Any], body: bytes
) -> tuple[dict[str, Any], bytes]:
    rid = head["id"]
    try:
        resp = await client.request(
            head["method"], head["url"], headers=head["headers"], content=body or None
        )
    except httpx.TimeoutException as exc:
        return {"id": rid, "error": "timeout", "type": type(exc).__name__, "message": str(exc)}, b""
    except (httpx.TransportError, httpx.DecodingError) as exc:
        return {"id": rid, "error": "network", "type": type(exc).__name__, "message": str(exc)}, b""
    headers = [[k, v] for k, v in resp.headers.multi_items() if k.lower() not in _DROP]
    return {"id": rid, "status": resp.status_code, "headers": headers}, resp.content


async def _serve(journal: Path, timeout: float, connections: int) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout.buffer
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)  # drain, then exit
    tasks: set[asyncio.Task[None]] = set()
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=connections),
        follow_redirects=False,  # the crawl's client follows them, one request at a time
    )

    async def one(head: dict[str, Any], body: bytes) -> None:
        answer, content = await _fetch(client, head, body)
        if answer.get("status", 500) < 300 and _journaled(httpx.URL(head["url"])):
            # not fsynced: the journal must outlive the crawl's process, not the machine
            path = journal_path(journal, head["method"], head["url"])
            write_bytes_atomic(path, content, durable=False)
        if writer.is_closing():
            return
        try:
            writer.write(_frame(answer, content))
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the crawl is gone; the journal keeps the answer

    async with client:
        while True:
            read = asyncio.ensure_future(_read_frame(reader))
            stop = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            frame = read.result() if read.done() else None
            if frame is None:
                read.cancel()
                break
            task = asyncio.create_task(one(*frame))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout * 2)
    with contextlib.suppress(Exception):
        writer.close()


def main(argv: list[str] | None = None) -> None:
    """The helper: `python -c "from fashion_tagger.sources.vinted.wire import main; main()"
    JOURNAL TIMEOUT CONNECTIONS`, requests on stdin, answers on stdout."""
    journal, timeout, connections = argv or sys.argv[1:]
    # Ctrl-C reaches the whole process group: the crawl stops and closes our input, and we
    # finish what is in flight; on our own we would drop it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_serve(Path(journal), float(timeout), int(connections)))

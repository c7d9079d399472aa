"""Fetching images by URL without turning the service into a proxy into its own network.

Each host is resolved first and every address it resolves to is checked; the connection then goes
to one of those checked addresses (so a DNS answer cannot change between check and connect), and
nothing is sent to a refused host. Private, loopback, link-local, multicast, reserved and
unspecified addresses are refused unless `allow_private`. Redirects are followed by hand, each new
URL checked the same way. Size and time are limited; no proxy from the environment is used.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urljoin

import anyio
import httpcore

from fashion_tagger._net import UrlError, check_url, checked_addresses

USER_AGENT = "fashion-tagger/0.1 (+image classification service)"


async def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The host's addresses, all of them checked; raises before anything is sent."""
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UrlError(f"cannot resolve {host!r}: {exc}", refused=False) from exc
    return checked_addresses(
        host, infos, allow_private, "start the service with --allow-private-urls"
    )


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses that `resolve` checked, whatever host httpcore asks for."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        last: Exception | None = None
        for ip in await resolve(host, port, self.allow_private):
            try:
                return await self._inner.connect_tcp(
                    ip, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last = exc
        raise UrlError(f"cannot connect to {host!r}: {last}", refused=False)

    async def connect_unix_socket(self, *args, **kwargs):  # pragma: no cover - never used
        raise UrlError("unix sockets are not allowed", refused=True)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def fetch(
    url: str,
    *,
    allow_private: bool = False,
    max_bytes: int = 20 * 1024 * 1024,
    timeout_s: float = 10.0,
    max_redirects: int = 3,
) -> bytes:
    """Download one URL's body, following at most `max_redirects` checked redirects.

    Raises:
        UrlError: refused URL or host (`refused=True`), or a failed, too slow or too large fetch.
    """
    backend = _CheckedBackend(allow_private)
    try:
        with anyio.fail_after(timeout_s):
            async with httpcore.AsyncConnectionPool(
                ssl_context=ssl.create_default_context(), network_backend=backend, retries=0
            ) as pool:
                for _ in range(max_redirects + 1):
                    host, port = check_url(url)
                    await resolve(host, port, allow_private)  # refuse before any connection
                    location = await _get(pool, url, max_bytes)
                    if isinstance(location, bytes):
                        return location
                    url = urljoin(url, location)
                raise UrlError(f"more than {max_redirects} redirects", refused=False)
    except TimeoutError as exc:
        raise UrlError(f"{url!r} took longer than {timeout_s:g} s", refused=False) from exc
    except httpcore.TimeoutException as exc:
        raise UrlError(f"{url!r} took longer than {timeout_s:g} s", refused=False) from exc
    except (httpcore.ProtocolError, httpcore.NetworkError, httpcore.UnsupportedProtocol) as exc:
        raise UrlError(f"cannot fetch {url!r}: {exc or type(exc).__name__}", refused=False) from exc


async def _get(pool: httpcore.AsyncConnectionPool, url: str, max_bytes: int) -> bytes | str:
    """The body, or the Location of a redirect."""
    headers = [(b"User-Agent", USER_AGENT.encode()), (b"Accept", b"image/*")]
    async with pool.stream("GET", url, headers=headers) as resp:
        if resp.status in (301, 302, 303, 307, 308):
            for k, v in resp.headers:
                if k.lower() == b"location":
                    return v.decode("latin-1")
            raise UrlError(f"{url!r}: redirect without a Location", refused=False)
        if resp.status != 200:
            raise UrlError(f"{url!r} answered HTTP {resp.status}", refused=False)
        for k, v in resp.headers:
            if k.lower() == b"content-length" and v.isdigit() and int(v) > max_bytes:
                raise UrlError(f"{url!r} is larger than {max_bytes:,} bytes", refused=False)
        body = bytearray()
        async for chunk in resp.aiter_stream():
            body += chunk
            if len(body) > max_bytes:
                raise UrlError(f"{url!r} is larger than {max_bytes:,} bytes", refused=False)
        return bytes(body)

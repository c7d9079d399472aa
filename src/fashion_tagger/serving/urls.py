"""Fetching images by URL without turning the service into a proxy into its own network.

Each host is resolved first and every address it resolves to is checked; the connection then goes
to one of those checked addresses (so a DNS answer cannot change between check and connect), and
nothing is sent to a refused host. Private, loopback, link-local, multicast, reserved and
unspecified addresses are refused unless `allow_private`. Redirects are followed by hand, each new
URL checked the same way. Size and time are limited; no proxy from the environment is used.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from urllib.parse import urljoin, urlsplit

import anyio
import httpcore

from fashion_tagger.errors import FashionTaggerError

USER_AGENT = "fashion-tagger/0.1 (+image classification service)"


class UrlError(FashionTaggerError):
    """A URL was refused or could not be fetched.

    Attributes:
        refused: True when the URL itself is not allowed (HTTP 400), False when fetching it failed
            (HTTP 422).
    """

    def __init__(self, message: str, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


def is_public(ip: str) -> bool:
    """True for an address a public service may connect to."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
        or not addr.is_global
    )


def check_url(url: str) -> tuple[str, int]:
    """Refuse anything but an absolute http(s) URL with a host; return (host, port)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlError(f"{url!r} is not a valid URL: {exc}", refused=True) from exc
    if parts.scheme not in ("http", "https"):
        raise UrlError(f"{url!r}: only http and https URLs are allowed", refused=True)
    if not parts.hostname:
        raise UrlError(f"{url!r} has no host", refused=True)
    if parts.username or parts.password:
        raise UrlError(f"{url!r}: URLs with credentials are not allowed", refused=True)
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The host's addresses, all of them checked; raises before anything is sent."""
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UrlError(f"cannot resolve {host!r}: {exc}", refused=False) from exc
    ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not ips:
        raise UrlError(f"{host!r} resolves to no address", refused=False)
    if not allow_private:
        bad = [ip for ip in ips if not is_public(ip)]
        if bad:
            raise UrlError(
                f"{host!r} resolves to a private, loopback, link-local or reserved address "
                f"({bad[0]}); the service refuses those (start it with --allow-private-urls "
                "to allow them on a trusted network)",
                refused=True,
            )
    return ips


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

"""The one address guard every fetcher goes through: which hosts fashion-tagger may connect to.

URLs come from files and requests (a manifest's image column, a crawl's pages, a client of
`serve`), so by default nothing reaches a private, loopback, link-local, multicast, reserved or
unspecified address: a fetcher must not become a proxy into the network it runs in. Callers on a
trusted network opt in with `allow_private`. Hosts are resolved and every address checked before
anything is sent.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from fashion_tagger.errors import FashionTaggerError


class UrlError(FashionTaggerError):
    """A URL was refused or could not be fetched.

    Attributes:
        refused: True when the URL itself is not allowed (HTTP 400 in `serve`), False when
            fetching it failed (HTTP 422).
    """

    def __init__(self, message: str, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


def is_public(ip: str) -> bool:
    """True for an address a fetcher may connect to without `allow_private`."""
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


def refuse_private(host: str, ips: list[str], how_to_allow: str) -> None:
    """Raise when any address of `host` is not public; `how_to_allow` names the opt-in flag."""
    bad = [ip for ip in ips if not is_public(ip)]
    if bad:
        raise UrlError(
            f"{host!r} resolves to a private, loopback, link-local or reserved address "
            f"({bad[0]}); refused before connecting ({how_to_allow} to allow them on a trusted "
            "network)",
            refused=True,
        )


def checked_addresses(
    host: str, infos: list[Any], allow_private: bool, how_to_allow: str
) -> list[str]:
    """The addresses of a `getaddrinfo` answer for `host`, each one checked (`refuse_private`)
    unless `allow_private`; `how_to_allow` names the caller's opt-in flag in the error."""
    ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not ips:
        raise UrlError(f"{host!r} resolves to no address", refused=False)
    if not allow_private:
        refuse_private(host, ips, how_to_allow)
    return ips


def resolve_checked(host: str, port: int, allow_private: bool, how_to_allow: str) -> list[str]:
    """The host's addresses (blocking resolver), every one checked before anything is sent."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UrlError(f"cannot resolve {host!r}: {exc}", refused=False) from exc
    return checked_addresses(host, infos, allow_private, how_to_allow)


def check_request_url(url: str, allow_private: bool, how_to_allow: str) -> None:
    """The guard for a synchronous client: refuse `url` unless it is http(s) to allowed hosts.
    Used as an httpx request hook, it sees every request, each redirect's included."""
    host, port = check_url(url)
    resolve_checked(host, port, allow_private, how_to_allow)

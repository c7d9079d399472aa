"""Sitemaps (sitemaps.org 0.9): a `urlset` of pages or a `sitemapindex` of sitemaps, parsed safely.

A sitemap comes from the network, so it is untrusted: a document with a DOCTYPE (the only way
to declare entities, and so to mount a billion-laughs or an external-entity attack) is refused
before it is parsed, gzip is inflated only up to the protocol's 50 MB, and only http(s) `<loc>`s
are kept.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from fashion_tagger.errors import FashionTaggerError

MAX_BYTES = 50 * 1024 * 1024
"""The protocol's limit on an uncompressed sitemap."""
MAX_URLS = 50_000
_DECL = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


class SitemapError(FashionTaggerError):
    """A sitemap that cannot be read (not XML, refused, too large)."""


@dataclass(frozen=True)
class Sitemap:
    """`kind` is `urlset` (locs are pages) or `sitemapindex` (locs are sitemaps)."""

    kind: str
    locs: list[str]


def inflate(data: bytes, limit: int = MAX_BYTES) -> bytes:
    """A gzipped body inflated (at most `limit` bytes), or `data` as it is."""
    if not data.startswith(b"\x1f\x8b"):
        return data
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise SitemapError(f"a gzipped sitemap that does not inflate: {exc}") from exc
    if len(out) > limit:
        raise SitemapError(f"a sitemap larger than {limit:,} bytes once inflated")
    return out


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse(data: bytes, url: str) -> Sitemap:
    """The kind and `<loc>`s of a sitemap; relative locs are resolved against `url`.

    Raises:
        SitemapError: not XML, a DOCTYPE or entity declaration, neither urlset nor index.
    """
    data = inflate(data)
    if len(data) > MAX_BYTES:
        raise SitemapError(f"{url} is larger than {MAX_BYTES:,} bytes")
    if _DECL.search(data):
        raise SitemapError(f"{url} declares a DOCTYPE or entities; refused (sitemaps have none)")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise SitemapError(f"{url} is not XML: {exc}") from exc
    kind = _local(root.tag)
    if kind not in ("urlset", "sitemapindex"):
        raise SitemapError(f"{url} is not a sitemap (root element <{kind}>)")
    locs: list[str] = []
    seen: set[str] = set()
    for el in root.iter():
        if _local(el.tag) != "loc" or not (el.text or "").strip():
            continue
        loc = urljoin(url, el.text.strip())
        if urlsplit(loc).scheme in ("http", "https") and loc not in seen:
            seen.add(loc)
            locs.append(loc)
        if len(locs) >= MAX_URLS:
            break
    return Sitemap(kind, locs)

"""Downloads for importers: a cache folder, checksummed files, and bounded fetches of one image.

A file is streamed to a temp file beside its target and renamed only once its checksum matches,
so the cache never holds a partial or wrong file under a final name. Every request, each
redirect's included, goes through the project's one address guard (`fashion_tagger._net`)
before it connects.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fashion_tagger import _progress
from fashion_tagger._io import atomic_path
from fashion_tagger.errors import FashionTaggerError
from fashion_tagger.storage import cache_root

CHUNK = 1 << 16
MAX_IMAGE_BYTES = 50 * 1024 * 1024
"""Bigger downloads of one image are refused (no real photo is that large)."""


class DownloadError(FashionTaggerError):
    """A download failed, or its checksum did not match."""


def cache_dir(explicit: str | Path | None = None) -> Path:
    """Where downloads are kept: `explicit`, else the user's cache (`storage.cache_root()`)."""
    return Path(explicit) if explicit else cache_root()


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _algorithm(checksum: str) -> str:
    """MD5 (32 hex) or SHA-256 (64 hex), the two kinds datasets publish."""
    return {32: "md5", 64: "sha256"}.get(len(checksum)) or "sha256"


def guard_hook(allow_private: bool | None, url: str, how_to_allow: str) -> Any:
    """An httpx request hook checking every request with `_net.check_request_url`.

    `allow_private`: True lets every host through; False checks them all; None trusts the host
    of `url` itself (an address the user typed, such as `--base-url`) and checks every other
    one, so a redirect cannot lead the download into the local network.
    """
    from fashion_tagger._net import check_request_url

    named = urlsplit(url).netloc

    def hook(request: Any) -> None:
        trusted = allow_private or (allow_private is None and request.url.netloc.decode() == named)
        check_request_url(str(request.url), bool(trusted), how_to_allow)

    return hook


def fetch(
    url: str,
    target: Path,
    checksum: str | None,
    *,
    progress: bool = True,
    allow_private: bool | None = None,
    how_to_allow: str = "--allow-private-hosts",
    transport: Any = None,
) -> Path:
    """Download `url` to `target` unless a file with the right checksum is there already.

    Args:
        allow_private: whether private, loopback and link-local hosts may be reached (see
            `guard_hook`; None trusts only the host of `url`, which the caller named).
        how_to_allow: the caller's opt-in flag, named in the refusal.
        transport: an httpx transport (tests count the connections it is asked for).

    Raises:
        DownloadError: the server failed, the address was refused (before connecting), or the
            bytes do not match `checksum` (nothing is kept).
    """
    import httpx

    from fashion_tagger._net import UrlError

    if target.is_file() and (
        checksum is None or file_digest(target, _algorithm(checksum)) == checksum.lower()
    ):
        return target
    h = hashlib.new(_algorithm(checksum)) if checksum else None
    hook = guard_hook(allow_private, url, how_to_allow)
    try:
        with (
            httpx.Client(
                timeout=60, event_hooks={"request": [hook]}, trust_env=False, transport=transport
            ) as client,
            atomic_path(target) as tmp,
            client.stream("GET", url, follow_redirects=True) as resp,
        ):
            resp.raise_for_status()
            total = int(resp.headers.get("content-length") or 0) or None
            with (
                open(tmp, "wb") as f,
                _progress.bar(f"download {target.name}", total=total, enabled=progress) as bar,
            ):
                for chunk in resp.iter_bytes(CHUNK):
                    f.write(chunk)
                    if h is not None:
                        h.update(chunk)
                    bar.advance(len(chunk))
            if h is not None and checksum and h.hexdigest() != checksum.lower():
                raise DownloadError(
                    f"{url} has {_algorithm(checksum)} {h.hexdigest()}, expected {checksum}; the "
                    "file was not kept. Check the URL (--base-url) or retry later."
                )
    except httpx.HTTPError as exc:
        raise DownloadError(
            f"could not download {url}: {exc}. Check the network or pass the files' folder as SRC."
        ) from exc
    except UrlError as exc:
        raise DownloadError(f"could not download {url}: {exc}") from exc
    return target


def fetch_image(client, url: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """One image's bytes over HTTP(S), bounded in size; failures raise OSError/ValueError so
    that ingest records them as a skipped image instead of stopping the import."""
    import httpx

    from fashion_tagger._net import UrlError

    try:
        with client.stream("GET", url, follow_redirects=True) as resp:
            resp.raise_for_status()
            if int(resp.headers.get("content-length") or 0) > max_bytes:
                raise ValueError(f"{url} is larger than {max_bytes:,} bytes")
            buf = bytearray()
            for chunk in resp.iter_bytes(CHUNK):
                buf += chunk
                if len(buf) > max_bytes:
                    raise ValueError(f"{url} is larger than {max_bytes:,} bytes")
            return bytes(buf)
    except httpx.HTTPError as exc:
        raise OSError(f"download failed: {exc}") from exc
    except UrlError as exc:  # the client's address guard: this row is skipped, with the reason
        raise OSError(str(exc)) from exc

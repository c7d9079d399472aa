"""Image decoding: one place that turns bytes into RGB pixels, safely.

Handles JPEG, PNG, WebP, GIF (first frame), BMP and TIFF; CMYK, palette, alpha (flattened on
white) and 16-bit modes; EXIF orientation. A JPEG that only needs to be small is decoded straight
to a reduced size with `Image.draft`. Corrupt, truncated, empty and non-image data, and images with
more pixels than `MAX_PIXELS` (decompression bombs), raise `ImageError` with a short reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fashion_tagger._io import read_regular
from fashion_tagger.errors import FashionTaggerError

MAX_PIXELS = 64_000_000
"""Images larger than this (e.g. 8000 x 8000) are refused as decompression bombs."""

FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
           "TIFF": "tif"}  # fmt: skip
"""Formats we accept, and the extension each is stored under (MPO: a camera JPEG with extra frames)."""
EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

# PIL's own bomb check warns at MAX_IMAGE_PIXELS and fails at twice that; ours is stricter and
# applies before any pixel is decoded, so PIL's is only a backstop.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS * 2


class ImageError(FashionTaggerError):
    """The bytes are not an image we can use; `reason` is a short machine-friendly tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    ext: str
    width: int
    height: int


def sniff_ext(data: bytes) -> str | None:
    """The stored extension `probe` would give, from the magic bytes alone (no decoding), so the
    store can be checked with one `stat`; None for anything else."""
    head = data[:12]
    if head.startswith(b"\xff\xd8"):
        return "jpg"
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\0", b"MM\0*")):
        return "tif"
    return None


def _open(data: bytes) -> Image.Image:
    """Open lazily (header only) and refuse what is not an image or is too large to decode."""
    if not data:
        raise ImageError("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("decompression_bomb", str(exc)) from exc
    except Image.UnidentifiedImageError as exc:  # its text names the BytesIO, not the file
        raise ImageError("not_an_image", "no image format recognised in its bytes") from exc
    except Exception as exc:  # PIL raises many types for non-images
        raise ImageError("not_an_image", str(exc) or type(exc).__name__) from exc
    if img.format not in FORMATS:
        raise ImageError("unsupported_format", str(img.format))
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError("corrupt", f"size {w}x{h}")
    if w * h > MAX_PIXELS:
        raise ImageError("decompression_bomb", f"{w}x{h} pixels is more than {MAX_PIXELS:,}")
    return img


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright); call after `load()` (PNG reads EXIF while loading)."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:
        return 1


def probe(data: bytes, sha256: str | None = None) -> ImageInfo:
    """Check that `data` decodes completely; return its hash, extension and (oriented) size.

    JPEGs are decoded at 1/8 scale: every byte is still read, so truncation is caught, at a
    fraction of the cost of a full decode. Animated images are checked on their first frame, the
    one `decode` uses. Pass `sha256` when the caller has hashed `data` already.
    """
    img = _open(data)
    w, h = img.size  # before `draft` shrinks it
    ext = FORMATS[img.format]
    try:
        if img.format in ("JPEG", "MPO"):
            img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
        img.load()
        orientation = _orientation(img)
    except Exception as exc:
        raise ImageError("corrupt", str(exc) or type(exc).__name__) from exc
    finally:
        img.close()
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return ImageInfo(sha256 or hashlib.sha256(data).hexdigest(), ext, w, h)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: alpha flattened on white, 16-bit scaled down, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (
        img.mode in ("RGB", "L") and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def decode(source: bytes | str | Path, size: int | None = None) -> Image.Image:
    """Decode to an upright RGB image; with `size`, JPEGs decode at no less than `size` per side."""
    data = source if isinstance(source, bytes) else read_regular(source)
    img = _open(data)
    try:
        if size and img.format in ("JPEG", "MPO"):
            img.draft("RGB", (size, size))
        if getattr(img, "is_animated", False):
            img.seek(0)
        img.load()
    except Exception as exc:
        raise ImageError("corrupt", str(exc) or type(exc).__name__) from exc
    # A broken EXIF block must not cost us an otherwise good image.
    with contextlib.suppress(Exception):
        img = ImageOps.exif_transpose(img)
    try:
        return to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError("corrupt", str(exc) or type(exc).__name__) from exc


def encode_png(img: Image.Image) -> bytes:
    """Lossless PNG bytes of `img` in its own mode (e.g. greyscale stays one channel)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()

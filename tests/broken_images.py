"""Broken image bytes, one per reason `images.probe` gives, shared by the decoding and import tests."""

from __future__ import annotations

import struct
import zlib

from conftest import image_bytes


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width` x `height` (the classic decompression bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\0" * 64)
    body += (
        struct.pack(">I", len(idat))
        + b"IDAT"
        + idat
        + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    )
    return b"\x89PNG\r\n\x1a\n" + body


BROKEN = {
    "empty": b"",
    "not_an_image": b"hello, I am a text file renamed to .jpg\n",
    "decompression_bomb": png_header(20000, 20000),
    "corrupt": image_bytes("JPEG", size=(64, 64))[:-300],  # truncated
}

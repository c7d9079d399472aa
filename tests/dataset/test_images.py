"""Decoding: every supported kind of image becomes upright RGB; every broken kind a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from broken_images import BROKEN
from conftest import image_bytes
from PIL import Image

from fashion_tagger.dataset import images


def test_cmyk_jpeg_becomes_rgb():
    data = image_bytes("JPEG", mode="CMYK", color=(0, 255, 255, 0))
    img = images.decode(data)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # magenta + yellow ink is red


def test_palette_with_alpha_is_flattened_on_white():
    img = Image.new("P", (8, 8), 0)
    img.putpalette([10, 20, 30] * 256)
    img.info["transparency"] = 0
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    out = images.decode(buf.getvalue())
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_la_half_transparent_blends_with_white():
    data = image_bytes("PNG", mode="LA", color=(0, 128))
    r, g, b = images.decode(data).getpixel((0, 0))
    assert r == g == b and 120 <= r <= 135


def test_16_bit_greyscale_is_scaled_to_8_bit():
    arr = np.full((6, 6), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    out = images.decode(buf.getvalue())
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 0)
    assert images.probe(buf.getvalue()).ext == "png"


def test_exif_orientation_is_applied_and_probe_reports_upright_size():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert images.decode(buf.getvalue()).size == (20, 40)
    info = images.probe(buf.getvalue())
    assert (info.width, info.height) == (20, 40)


def test_gif_uses_the_first_frame():
    frames = [Image.new("P", (8, 8), i) for i in (1, 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = images.decode(buf.getvalue())
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert images.probe(buf.getvalue()).ext == "gif"


def test_webp_decodes():
    data = image_bytes("WEBP", color=(0, 200, 0), lossless=True)
    assert images.decode(data).getpixel((2, 2)) == (0, 200, 0)
    assert images.probe(data).ext == "webp"


def test_large_jpeg_decodes_at_reduced_size_with_draft():
    data = image_bytes("JPEG", size=(1600, 1200))
    small = images.decode(data, size=200)
    assert 200 <= min(small.size) < 1200


def test_probe_hash_and_size():
    data = image_bytes("PNG", size=(7, 5))
    info = images.probe(data)
    import hashlib

    assert info == images.ImageInfo(hashlib.sha256(data).hexdigest(), "png", 7, 5)


@pytest.mark.parametrize("reason", sorted(BROKEN))
def test_broken_bytes_raise_with_a_reason(reason):
    with pytest.raises(images.ImageError) as err:
        images.probe(BROKEN[reason])
    assert err.value.reason == reason
    with pytest.raises(images.ImageError):
        images.decode(BROKEN[reason])


def test_corrupt_png_data_is_caught():
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    idat = data.index(b"IDAT")
    data[idat + 100 : idat + 400] = b"\xff" * 300
    with pytest.raises(images.ImageError) as err:
        images.probe(bytes(data))
    assert err.value.reason == "corrupt"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_sniffed_extension_matches_probe(fmt):
    data = image_bytes(fmt)
    assert images.sniff_ext(data) == images.probe(data).ext
    assert images.sniff_ext(b"hello") is None

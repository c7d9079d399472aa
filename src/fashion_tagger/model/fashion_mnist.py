"""Zalando's Fashion-MNIST conversion, as a pure function on a PIL image.

Fashion-MNIST was made from product photos by a documented pipeline (the dataset's README):
trim the edges close to the corner colour (5 % of the largest RGB distance), resize the longest
edge to 28 by subsampling, sharpen (Gaussian, radius and sigma 1), extend the short edge to 28
with the image centred, negate, convert to 8-bit grey. A model trained on Fashion-MNIST never
saw a white studio background or a marketplace photo; running the same conversion on a photo
at predict time brings it into the model's own domain.

The function is registered as the resize mode `fashion-mnist` (stored in model.json), so
training runs it too. An image already in the domain (dark background, already the target size,
as every Fashion-MNIST image is) passes through unchanged: training images are not negated twice.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

SIDE = 28
"""Fashion-MNIST's side length."""
TRIM_FUZZ = 0.05
"""Trim tolerance: a fraction of the largest distance in RGB space (255 * sqrt(3))."""
DARK = 128
"""A background greyer than this is taken as already negated (a Fashion-MNIST image)."""
GREY_SPREAD = 8
"""Largest channel spread of a pixel of an image taken as grey."""
RESAMPLE = {"sample": Image.NEAREST, "box": Image.BOX, "bilinear": Image.BILINEAR}
"""How the longest edge is brought to the target: Zalando subsampled ("sample")."""


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """The background of an (H, W, 3) image: the per-channel median of its four corners."""
    corners = rgb[[0, 0, -1, -1], [0, -1, 0, -1]].astype(np.float32)
    return np.median(corners, axis=0)


def trim_box(rgb: np.ndarray, bg: np.ndarray, fuzz: float = TRIM_FUZZ) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the pixels farther than `fuzz` from the background colour.

    The whole image when every pixel is background (nothing to trim to).
    """
    dist = np.sqrt(((rgb.astype(np.float32) - bg) ** 2).sum(axis=-1))
    mask = dist > fuzz * 255.0 * np.sqrt(3.0)
    if not mask.any():
        return 0, 0, rgb.shape[1], rgb.shape[0]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _target(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, not {size!r}")
    return int(h), int(w)


def _fit(img: Image.Image, h: int, w: int, resample: str) -> Image.Image:
    """Scale so the image fits inside (h, w), longest edge touching it, aspect kept."""
    scale = min(w / img.width, h / img.height)
    nw = min(w, max(1, round(img.width * scale)))
    nh = min(h, max(1, round(img.height * scale)))
    return img.resize((nw, nh), RESAMPLE[resample])


def _centre(img: Image.Image, h: int, w: int, fill: tuple[int, ...] | int) -> Image.Image:
    canvas = Image.new(img.mode, (w, h), fill)
    canvas.paste(img, ((w - img.width) // 2, (h - img.height) // 2))
    return canvas


def to_fashion_mnist(
    img: Image.Image,
    size: int | tuple[int, int] = SIDE,
    *,
    fuzz: float = TRIM_FUZZ,
    resample: str = "sample",
    sharpen: bool = True,
    level: bool = False,
) -> Image.Image:
    """Convert a product photo the way Fashion-MNIST was made; returns an 'L' image of `size`.

    Args:
        img: any PIL image (any mode, any size; transparency counts as white).
        size: the side (or (H, W)) of the result; the object's longest edge touches it.
        fuzz: trim tolerance as a fraction of the largest RGB distance (Zalando: 5 %).
        resample: "sample" (Zalando's subsampling), "box" or "bilinear".
        sharpen: apply the Gaussian sharpening step (radius 1, sigma 1).
        level: instead of negating, take each pixel's grey distance from the background's
            grey, so any plain background (a floor, a bedsheet) ends black as a white one does.
            On a white background this is the negation (255 - grey); not in Zalando's recipe.

    A grey image whose background is dark is taken as already negated: it is trimmed, fitted and
    centred but neither sharpened nor negated again, and one already of the target size is
    returned unchanged (as 'L'), so converting twice gives the same image.
    """
    h, w = _target(size)
    if resample not in RESAMPLE:
        raise ValueError(f"resample must be one of {', '.join(RESAMPLE)}, not {resample!r}")
    rgb_img = _flatten(img)
    rgb = np.asarray(rgb_img)
    bg = background_colour(rgb)
    # Already in the domain: grey pixels on a dark background (a colour photo never is).
    grey_only = int((rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)).max()) <= GREY_SPREAD
    negated = grey_only and float(bg.mean()) < DARK
    if negated and rgb_img.size == (w, h):
        return rgb_img.convert("L")
    left, top, right, bottom = trim_box(rgb, bg, fuzz)
    obj = _fit(rgb_img.crop((left, top, right, bottom)), h, w, resample)
    fill = tuple(int(c + 0.5) for c in bg)
    if not negated and sharpen:
        # Sharpen on a margin of background so the border pixels see a true neighbourhood.
        padded = _centre(obj, obj.height + 4, obj.width + 4, fill)
        sharp = padded.filter(ImageFilter.UnsharpMask(radius=1.0, percent=100, threshold=0))
        obj = sharp.crop((2, 2, 2 + obj.width, 2 + obj.height))
    out = _centre(obj, h, w, fill)
    if negated:
        return out.convert("L")
    if level:
        grey = np.asarray(out.convert("L"), dtype=np.int16)
        bg_grey = int(Image.new("RGB", (1, 1), fill).convert("L").getpixel((0, 0)))
        return Image.fromarray(np.abs(grey - bg_grey).astype(np.uint8), "L")
    return ImageOps.invert(out).convert("L")


def _flatten(img: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent pixels become white (a cut-out product on a studio white)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")

"""The one preprocessing of the project: image -> normalised (C, H, W) float32 array.

Training (via `to_uint8`, cached once per image, then `normalize_tensor` per batch on its
device), evaluation, prediction, ONNX export and serving all read size, channels, mean, std and
the resize rule from the run dir's `ModelSpec`, and go through these functions, so the model
always sees what it was trained on. The normalisation is written once (`scale_shift`), for numpy
and for torch. Numpy and Pillow only at import: the ONNX runtime path needs no torch.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fashion_tagger.dataset import images
from fashion_tagger.model.fashion_mnist import to_fashion_mnist
from fashion_tagger.model.spec import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

PAD_FILL = 255
"""Pad colour for `resize="pad"`: white, as the studio backgrounds of catalog photos."""


FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
"""Pillow's filter for each of `model.spec.INTERPOLATIONS`."""


def resize(
    img: Image.Image,
    size: tuple[int, int],
    mode: str = "squash",
    interpolation: str = "bilinear",
) -> Image.Image:
    """Resize to (H, W): stretch (`squash`), fit inside and pad with white (`pad`), or the
    Fashion-MNIST conversion (`fashion-mnist`, which has its own filters; a converted image
    passes unchanged). `interpolation` names the filter (`FILTERS`)."""
    if mode == "fashion-mnist":
        return to_fashion_mnist(img, size).convert(img.mode)
    h, w = size
    if img.size == (w, h):
        return img
    if mode == "pad":
        scale = min(w / img.width, h / img.height)
        nw, nh = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        inner = img.resize((nw, nh), FILTERS[interpolation], reducing_gap=3.0)
        canvas = Image.new(img.mode, (w, h), (PAD_FILL,) * len(img.getbands()))
        canvas.paste(inner, ((w - nw) // 2, (h - nh) // 2))
        return canvas
    return img.resize((w, h), FILTERS[interpolation], reducing_gap=3.0)


def to_uint8(img: Image.Image, spec: ModelSpec) -> np.ndarray:
    """The resized pixels as (C, H, W) uint8: what the training cache stores."""
    img = images.to_rgb(img)
    if spec.channels == 1:
        img = img.convert("L")
    arr = np.asarray(resize(img, spec.input_size, spec.resize, spec.interpolation), dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def scale_shift(spec: ModelSpec, pixel_max: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift), (C, 1, 1) float32, with `x * scale - shift` equal to
    `(x / pixel_max - mean) / std`: the normalisation, as one multiply and one subtract."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return (1.0 / (pixel_max * std)).astype(np.float32), (mean / std).astype(np.float32)


def normalize(arr: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 (C, H, W) or (N, C, H, W) pixels to normalised float32."""
    scale, shift = scale_shift(spec)
    out = arr.astype(np.float32)  # in place from here: one new array, not four
    out *= scale
    out -= shift
    return out


def normalize_tensor(x: torch.Tensor, spec: ModelSpec, pixel_max: float = 255.0) -> torch.Tensor:
    """The torch twin of `normalize`, on `x`'s device: (N, C, H, W) pixels in [0, pixel_max]
    (uint8 pixels, or 1.0 for floats in [0, 1] after augmentation) to normalised float32."""
    import torch

    scale, shift = (torch.from_numpy(a).to(x.device) for a in scale_shift(spec, pixel_max))
    return x.float() * scale - shift


def preprocess(img: Image.Image, spec: ModelSpec) -> np.ndarray:
    """A decoded image to the model's input: (C, H, W) float32, normalised."""
    return normalize(to_uint8(img, spec), spec)


def decode_for_model(source: str | Path | bytes | Image.Image, spec: ModelSpec) -> Image.Image:
    """Decode any source to upright RGB, letting JPEGs decode straight at about the model size."""
    if isinstance(source, Image.Image):
        return images.to_rgb(source)
    if isinstance(source, bytearray | memoryview):
        source = bytes(source)
    if isinstance(source, io.IOBase):
        source = source.read()
    return images.decode(source, size=max(spec.input_size))


def load_for_model(source: str | Path | bytes | Image.Image, spec: ModelSpec) -> np.ndarray:
    """Path, bytes or PIL image to the model's input (raises `ImageError` if unreadable)."""
    return preprocess(decode_for_model(source, spec), spec)

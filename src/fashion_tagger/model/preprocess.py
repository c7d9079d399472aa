"""The one preprocessing of the project: image -> normalised (C, H, W) float32 array.

Training (via `to_uint8`, cached once per image, then `normalize` per batch), evaluation,
prediction, ONNX export and serving all read size, channels, mean, std and the resize rule from
the run dir's `ModelSpec`, and go through these functions, so the model always sees what it was
trained on. Numpy and Pillow only: the ONNX runtime path needs no torch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from fashion_tagger.dataset import images
from fashion_tagger.rundir import ModelSpec

PAD_FILL = 255
"""Pad colour for `resize="pad"`: white, as the studio backgrounds of catalog photos."""


def resize(img: Image.Image, size: tuple[int, int], mode: str = "squash") -> Image.Image:
    """Resize to (H, W): stretch (`squash`) or fit inside and pad with white (`pad`)."""
    h, w = size
    if img.size == (w, h):
        return img
    if mode == "pad":
        scale = min(w / img.width, h / img.height)
        nw, nh = max(1, round(img.width * scale)), max(1, round(img.height * scale))
        inner = img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
        canvas = Image.new(img.mode, (w, h), (PAD_FILL,) * len(img.getbands()))
        canvas.paste(inner, ((w - nw) // 2, (h - nh) // 2))
        return canvas
    return img.resize((w, h), Image.BILINEAR, reducing_gap=3.0)


def to_uint8(img: Image.Image, spec: ModelSpec) -> np.ndarray:
    """The resized pixels as (C, H, W) uint8: what the training cache stores."""
    img = images.to_rgb(img)
    if spec.channels == 1:
        img = img.convert("L")
    arr = np.asarray(resize(img, spec.input_size, spec.resize), dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def normalize(arr: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 (C, H, W) or (N, C, H, W) pixels to normalised float32."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    # (x / 255 - mean) / std as one scale and one shift, in place: one new array, not four.
    out = arr.astype(np.float32)
    out *= 1.0 / (255.0 * std)
    out -= mean / std
    return out


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

"""Zalando's Fashion-MNIST conversion: a product photo becomes a 28x28 negated grey image."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from fashion_tagger.model.fashion_mnist import background_colour, to_fashion_mnist, trim_box


def studio_photo(size=(300, 200), box=(100, 50, 160, 150), colour=(20, 20, 40), bg=(255,) * 3):
    img = Image.new("RGB", size, bg)
    ImageDraw.Draw(img).rectangle(box, fill=colour)
    return img


def test_a_dark_object_on_white_becomes_a_bright_centred_object_on_black():
    out = to_fashion_mnist(studio_photo())
    a = np.asarray(out).astype(int)
    assert out.mode == "L" and out.size == (28, 28)
    # The object (61x101 px, taller than wide) fills the height after trimming.
    bright = a > 128
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    assert (rows[0], rows[-1]) == (0, 27)
    width = cols[-1] - cols[0] + 1
    assert width == round(61 * 28 / 101)
    # centred: equal margins left and right (to a pixel)
    assert abs(cols[0] - (27 - cols[-1])) <= 1
    assert a[:, : cols[0]].max() == 0 and a[:, cols[-1] + 1 :].max() == 0  # background is 0
    assert a[5:23, cols[0] + 2 : cols[-1] - 1].min() >= 255 - 40  # negated dark navy


def test_the_white_margin_is_trimmed_whatever_its_size():
    small = to_fashion_mnist(studio_photo(size=(200, 200), box=(80, 40, 120, 160)))
    large = to_fashion_mnist(studio_photo(size=(900, 600), box=(80, 40, 120, 160)))
    assert np.array_equal(np.asarray(small), np.asarray(large))


def test_near_white_noise_counts_as_background():
    rng = np.random.default_rng(0)
    noisy = rng.integers(245, 256, size=(120, 90, 3), dtype=np.uint8)  # within 5 % of white
    noisy[30:90, 40:50] = 0
    a = np.asarray(to_fashion_mnist(Image.fromarray(noisy)))
    cols = np.flatnonzero((a > 128).any(axis=0))
    assert cols[-1] - cols[0] + 1 == round(10 * 28 / 60)  # the bar, not the noisy margin


def test_trim_box_and_background():
    rgb = np.full((10, 20, 3), 250, dtype=np.uint8)
    rgb[2:5, 7:9] = (10, 200, 10)
    bg = background_colour(rgb)
    assert bg.tolist() == [250, 250, 250]
    assert trim_box(rgb, bg) == (7, 2, 9, 5)
    assert trim_box(np.full((4, 6, 3), 9, dtype=np.uint8), np.array([9, 9, 9])) == (0, 0, 6, 4)


def test_transparent_pixels_count_as_white():
    img = Image.new("RGBA", (40, 60), (0, 0, 0, 0))  # transparent black
    ImageDraw.Draw(img).rectangle((10, 10, 29, 49), fill=(0, 0, 0, 255))
    a = np.asarray(to_fashion_mnist(img))
    assert a[0, 0] == 0 and a[14, 14] == 255


def test_sharpening_is_a_step_of_its_own():
    grad = np.tile(np.linspace(0, 200, 80, dtype=np.uint8), (120, 1))
    photo = np.full((140, 100), 255, dtype=np.uint8)
    photo[10:130, 10:90] = grad
    img = Image.fromarray(photo).convert("RGB")
    sharp, soft = to_fashion_mnist(img), to_fashion_mnist(img, sharpen=False)
    assert sharp.size == soft.size == (28, 28)
    assert not np.array_equal(np.asarray(sharp), np.asarray(soft))


def test_levelling_blackens_any_plain_background_and_is_negation_on_white():
    on_red = studio_photo(bg=(180, 40, 40), colour=(20, 20, 40))
    a = np.asarray(to_fashion_mnist(on_red, level=True)).astype(int)
    assert a[0, 0] == 0 and a[14, 14] >= 55  # background black, object as far as its grey is
    assert np.asarray(to_fashion_mnist(on_red))[0, 0] > 100  # plain negation leaves it grey
    white = studio_photo()
    levelled = np.asarray(to_fashion_mnist(white, level=True)).astype(int)
    negated = np.asarray(to_fashion_mnist(white)).astype(int)
    assert np.abs(levelled - negated).max() <= 1  # rounding of the grey conversion only


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="resample"):
        to_fashion_mnist(studio_photo(), resample="lanczos")
    with pytest.raises(ValueError, match="size"):
        to_fashion_mnist(studio_photo(), size=0)


def test_real_fashion_mnist_images_pass_unchanged(datasets_dir):
    """Training a model with this resize mode must not negate its own data a second time."""
    path = datasets_dir / "fashion-mnist" / "fashion-mnist_test-1000.csv"
    with open(path, newline="") as f:
        rows = [r for _, r in zip(range(20), csv.DictReader(f), strict=False)]
    for row in rows:
        pixels = np.array([int(row[f"pixel{i}"]) for i in range(1, 785)], dtype=np.uint8)
        img = Image.fromarray(pixels.reshape(28, 28), "L")
        assert np.array_equal(np.asarray(to_fashion_mnist(img)), pixels.reshape(28, 28))


images = st.builds(
    lambda w, h, mode, seed: Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    ).convert(mode),
    st.integers(1, 90),
    st.integers(1, 90),
    st.sampled_from(["RGB", "L", "RGBA", "P", "1"]),
    st.integers(0, 2**16),
)


@settings(max_examples=60, deadline=None)
@given(img=images, side=st.integers(1, 40))
def test_any_image_gives_the_target_size_in_grey(img, side):
    out = to_fashion_mnist(img, side)
    assert out.mode == "L" and out.size == (side, side)


@settings(max_examples=60, deadline=None)
@given(
    margin=st.tuples(*(st.integers(1, 60),) * 4),
    bw=st.integers(1, 300),
    bh=st.integers(1, 300),
    grey=st.integers(0, 200),
)
def test_converting_twice_is_converting_once(margin, bw, bh, grey):
    """Once converted, an image stays as it is, and the white frame has become black.

    An object that fills the whole square leaves no corner of background to tell the polarity
    from, so the objects here are at least 8 % longer one way than the other, as garments are.
    """
    assume(max(bw, bh) / min(bw, bh) >= 28 / 26)
    left, top, right, bottom = margin
    size = (left + bw + right, top + bh + bottom)
    photo = studio_photo(size, (left, top, left + bw - 1, top + bh - 1), colour=(grey,) * 3)
    once = to_fashion_mnist(photo)
    a = np.asarray(once)
    assert a[[0, 0, -1, -1], [0, -1, 0, -1]].tolist() == [0, 0, 0, 0]
    assert np.array_equal(np.asarray(to_fashion_mnist(once)), a)


@settings(max_examples=40, deadline=None)
@given(w=st.integers(3, 300), h=st.integers(3, 300))
def test_the_longest_edge_of_the_object_touches_the_frame(w, h):
    photo = studio_photo(
        size=(w + 20, h + 20), box=(10, 10, 10 + w - 1, 10 + h - 1), colour=(0,) * 3
    )
    a = np.asarray(to_fashion_mnist(photo, resample="box", sharpen=False))
    bright = a > 128
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    long_side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    assert long_side == 28

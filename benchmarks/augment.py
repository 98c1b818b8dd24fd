"""Drawing-style variants of preprocessed drawings: small affine moves, pen width, elastic bends.

Each drawing (the uint8 pixels ``images.preprocess`` gives, strokes on a plain ground) becomes
``k`` variants: a small affine map (shift up to ``SHIFT`` pixels, rotation up to ``ROTATE``
degrees, scale ``SCALE``, shear up to ``SHEAR``), the pen one pixel wider or thinner (grey
dilation or erosion, each a third of the time), and an elastic distortion (a random displacement
field on a coarse grid, upsampled smoothly). Numpy and Pillow only; deterministic: a variant's
random draws come from a seed derived from the drawing's own bytes and the caller's seed, so the
same drawing gives the same variants wherever it sits in a batch.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image, ImageFilter

SHIFT = 2.0  # pixels (of a 28-pixel canvas: the preprocessing's 12% margin is about 3)
ROTATE = 10.0  # degrees, either way
SCALE = (0.9, 1.1)
SHEAR = 0.15  # x += SHEAR * y at most, either way
ELASTIC = 1.2  # pixels: the largest displacement of the elastic field's coarse grid
ELASTIC_GRID = 4  # the coarse grid's points per side
PEN = True  # one pixel wider or thinner, each a third of the time


def drawing_seed(pixels: np.ndarray, seed: int) -> int:
    """A 63-bit seed from one drawing's pixels and ``seed``: the same drawing, the same variants."""
    digest = hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=8, key=b"%d" % seed)
    return int.from_bytes(digest.digest(), "little") >> 1


def variants(pixels: np.ndarray, k: int, seed: int = 0, ink: str = "light") -> np.ndarray:
    """[N * k, H, W, C] uint8: ``k`` variants of each of ``pixels`` [N, H, W, C], drawing by drawing.

    ``ink``: "light" (light strokes on a dark ground, what the preprocessing gives a drawing model)
    or "dark" (dark on light: the ground to fill with is white and the pen grows by erosion)."""
    pixels = np.asarray(pixels, np.uint8)
    n, height, width, channels = pixels.shape
    out = np.empty((n * k, height, width, channels), np.uint8)
    for i in range(n):
        rng = np.random.default_rng(drawing_seed(pixels[i], seed))
        ink_first = pixels[i] if ink != "dark" else 255 - pixels[i]
        for j in range(k):
            v = np.stack([_variant(ink_first[:, :, c], rng) for c in range(channels)], axis=-1)
            out[i * k + j] = v if ink != "dark" else 255 - v
    return out


def _variant(plane: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One variant of one light-on-dark plane."""
    height, width = plane.shape
    angle = np.deg2rad(rng.uniform(-ROTATE, ROTATE))
    scale = rng.uniform(*SCALE)
    shear = rng.uniform(-SHEAR, SHEAR)
    shift = rng.uniform(-SHIFT, SHIFT, 2)
    pen = rng.integers(3)  # 0 as drawn, 1 wider, 2 thinner
    coarse = rng.uniform(-ELASTIC, ELASTIC, (2, ELASTIC_GRID, ELASTIC_GRID)).astype(np.float32)
    # output -> input: centre + M^-1 (out - centre - shift), M = rotation @ shear @ scale
    cos, sin = np.cos(angle), np.sin(angle)
    m = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]]) * scale
    inv = np.linalg.inv(m)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    dx, dy = xs - cx - shift[0], ys - cy - shift[1]
    src_x = cx + inv[0, 0] * dx + inv[0, 1] * dy
    src_y = cy + inv[1, 0] * dx + inv[1, 1] * dy
    src_x += _smooth_field(coarse[0], width, height)
    src_y += _smooth_field(coarse[1], width, height)
    moved = _bilinear(plane.astype(np.float32), src_x, src_y)
    image = Image.fromarray(np.clip(np.rint(moved), 0, 255).astype(np.uint8), mode="L")
    if PEN and pen == 1:
        image = image.filter(ImageFilter.MaxFilter(3))
    elif PEN and pen == 2:
        thinner = image.filter(ImageFilter.MinFilter(3))
        if np.asarray(thinner).max() >= 128:  # a thin stroke would vanish: keep it as drawn
            image = thinner
    return np.asarray(image, np.uint8)


def _smooth_field(coarse: np.ndarray, width: int, height: int) -> np.ndarray:
    """A coarse grid of displacements upsampled bilinearly to the canvas (a smooth field)."""
    field = Image.fromarray(coarse, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(field, np.float64)


def _bilinear(plane: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``plane`` sampled at (x, y) with bilinear weights; outside the canvas is ground (0)."""
    height, width = plane.shape
    padded = np.zeros((height + 2, width + 2), np.float32)
    padded[1:-1, 1:-1] = plane
    x = np.clip(x + 1, 0, width + 1 - 1e-6)
    y = np.clip(y + 1, 0, height + 1 - 1e-6)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width + 1), np.minimum(y0 + 1, height + 1)
    fx, fy = x - x0, y - y0
    top = padded[y0, x0] * (1 - fx) + padded[y0, x1] * fx
    bottom = padded[y1, x0] * (1 - fx) + padded[y1, x1] * fx
    return top * (1 - fy) + bottom * fy

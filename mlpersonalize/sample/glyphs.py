"""Font glyphs of many writing systems, drawn like a pen would: pretraining data for the backbone.

Each class is one character; each sample renders it in one of the installed fonts that cover it
(Noto for most writing systems, handwriting fonts for Latin), at a random size, then either keeps
the font's outline (thickened or thinned) or skeletonises it and re-strokes the skeleton with a
pen of random width and varying pressure; then rotation, scale, shear and a coarse elastic warp.
The result goes through :func:`images.preprocess`, the path every drawing takes.

**No digits of any kind:** characters of Unicode category ``Nd``, ``No`` or ``Nl`` (decimal digits
of every script, Roman numerals, circled and superscript digits) and any character with a numeric
value (CJK numerals, for instance) are never classes, so digits stay a family the model never saw
and the real-digit benchmark (``benchmarks/real_digits.py``) stays honest. Letters that resemble
digits (O, l, S, Z) are fine.

The fonts come from Debian packages (``FONT_PACKAGES``; ``make sample-model`` installs them);
nothing is downloaded. Output is deterministic for a given seed and font set.
"""

from __future__ import annotations

import unicodedata
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ..images import ImageConstraint, preprocess

# Debian packages whose fonts are read, and the folder each installs them in (fonts-noto-core:
# most writing systems; the rest: handwriting). ``make sample-model`` installs the missing ones
# with apt-get. Only these folders are read, so other installed fonts never change the model.
FONT_PACKAGES = {
    "fonts-noto-core": "truetype/noto",
    "fonts-dkg-handwriting": "truetype/fifthhorseman",
    "fonts-breip": "truetype/breip",
    "fonts-femkeklaver": "truetype/femkeklaver",
    "fonts-rufscript": "truetype/rufscript",
    "fonts-sjfonts": "truetype/sjfonts",
    "fonts-humor-sans": "truetype/humor-sans",
    "fonts-comic-neue": "opentype/comic-neue",
    "fonts-bwht": "opentype/bwht",
    "fonts-dancingscript": "opentype/dancingscript",
}
FONT_ROOT = Path("/usr/share/fonts")
_NOTO = "noto"
_EXCLUDED_CATEGORIES = ("N", "M", "Z", "C")  # numbers, marks, separators, controls/unassigned


def is_allowed(char: str) -> bool:
    """A character may be a pretraining class: visible, not a mark, and no digit or number form."""
    category = unicodedata.category(char)
    if category.startswith(_EXCLUDED_CATEGORIES):
        return False
    return unicodedata.numeric(char, None) is None


def font_files(root: Path = FONT_ROOT) -> list[Path]:
    """The fonts read, sorted: Noto's regular faces and every face of the handwriting fonts."""
    found: list[Path] = []
    for folder in sorted(FONT_PACKAGES.values()):
        directory = root / folder
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.suffix.lower() not in (".ttf", ".otf") or not path.is_file():
                continue
            if directory.name == _NOTO and not path.stem.endswith("-Regular"):
                continue  # bold/italic Noto faces add weight, not writing systems
            found.append(path)
    return found


def missing_packages(root: Path = FONT_ROOT) -> list[str]:
    """The font packages whose folder is absent (``make sample-model`` installs them)."""
    return [package for package, folder in FONT_PACKAGES.items() if not (root / folder).is_dir()]


@cache
def _cmap(path: str) -> frozenset[str]:
    # lazy: fontTools is optional (the `sample` extra)
    from fontTools.ttLib import TTFont

    font = TTFont(path, lazy=True, fontNumber=0)
    try:
        return frozenset(chr(c) for c in (font.getBestCmap() or {}) if is_allowed(chr(c)))
    finally:
        font.close()


def glyph_classes(count: int, seed: int, per_font: int = 60) -> list[tuple[str, tuple[str, ...]]]:
    """``count`` classes: (character, the fonts that draw it), chosen deterministically.

    Up to ``per_font`` new characters are taken from each font in turn (so every writing system
    contributes, not only the largest fonts), then ``count`` of them are drawn with ``seed``.
    """
    fonts = font_files()
    missing = missing_packages()
    if missing:
        raise FileNotFoundError("font packages missing: apt-get install " + " ".join(missing))
    covering: dict[str, list[str]] = {}
    for path in fonts:
        for char in _cmap(str(path)):
            covering.setdefault(char, []).append(str(path))
    rng = np.random.default_rng([seed, 0x61F])
    pool: list[str] = []
    taken: set[str] = set()
    for path in fonts:
        chars = sorted(_cmap(str(path)) - taken)
        pick = rng.permutation(len(chars))[:per_font]
        for i in sorted(pick):
            pool.append(chars[i])
            taken.add(chars[i])
    chosen = sorted(rng.permutation(len(pool))[:count])
    return [(pool[i], tuple(covering[pool[i]])) for i in chosen]


@lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _elastic(image: np.ndarray, rng: np.random.Generator, amount: float, grid: int = 4) -> np.ndarray:
    """Warp with a smooth random displacement field (``grid``×``grid`` knots, bilinear)."""
    h, w = image.shape
    knots = rng.normal(0, amount, size=(2, grid, grid)).astype(np.float32)
    up = [np.asarray(Image.fromarray(k).resize((w, h), Image.Resampling.BICUBIC), np.float32) for k in knots]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    y = np.clip(yy + up[0], 0, h - 1.001)
    x = np.clip(xx + up[1], 0, w - 1.001)
    y0, x0 = y.astype(np.int32), x.astype(np.int32)
    fy, fx = y - y0, x - x0
    img = image.astype(np.float32)
    out = (
        img[y0, x0] * (1 - fy) * (1 - fx)
        + img[y0 + 1, x0] * fy * (1 - fx)
        + img[y0, x0 + 1] * (1 - fy) * fx
        + img[y0 + 1, x0 + 1] * fy * fx
    )
    return out


# The re-stroking pen's width, as a share of the canvas: drawn uniformly from (PEN_MIN, pen_max).
PEN_MIN = 0.025
PEN_MAX = 0.075


def _restroke(ink: np.ndarray, rng: np.random.Generator, canvas: int, pen_max: float) -> np.ndarray:
    """Skeletonise the glyph and draw the skeleton again with a pen of random width and pressure."""
    # lazy: scikit-image is optional (the `sample` extra)
    from skimage.morphology import skeletonize

    skeleton = skeletonize(ink > 0.5)
    ys, xs = np.nonzero(skeleton)
    if len(ys) == 0:
        return ink
    width = canvas * rng.uniform(PEN_MIN, pen_max)
    # pressure: a smooth random field scaling the pen radius across the drawing
    field = rng.normal(0, 0.25, size=(3, 3)).astype(np.float32)
    pressure = np.clip(
        1.0 + np.asarray(Image.fromarray(field).resize((canvas, canvas), Image.Resampling.BICUBIC)), 0.5, 1.6
    )
    out = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(out)
    jitter = rng.normal(0, 0.3, size=(len(ys), 2))
    for (y, x), (jy, jx) in zip(zip(ys.tolist(), xs.tolist(), strict=True), jitter.tolist(), strict=True):
        r = max(0.6, 0.5 * width * float(pressure[y, x]))
        cx, cy = x + jx, y + jy
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    return np.asarray(out, np.float32) / 255.0


def render(
    char: str, fonts: Sequence[str], rng: np.random.Generator, canvas: int = 96, pen_max: float = PEN_MAX
) -> Image.Image:
    """One pen-like drawing of ``char`` (dark on light, ``canvas``×``canvas``)."""
    path = fonts[int(rng.integers(len(fonts)))]
    size = int(canvas * rng.uniform(0.45, 0.7))
    layer = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(layer)
    draw.text((canvas / 2, canvas / 2), char, fill=255, font=_font(path, size), anchor="mm")
    ink = np.asarray(layer, np.float32) / 255.0
    if rng.random() < 0.5:
        ink = _restroke(ink, rng, canvas, pen_max)
    else:
        k = int(rng.choice([0, 3, 3, 5])) if rng.random() < 0.6 else 0
        if k:
            image = Image.fromarray((ink * 255).astype(np.uint8))
            image = image.filter(ImageFilter.MaxFilter(k))  # thicker strokes
            ink = np.asarray(image, np.float32) / 255.0
        elif rng.random() < 0.3:
            image = Image.fromarray((ink * 255).astype(np.uint8)).filter(ImageFilter.MinFilter(3))
            thin = np.asarray(image, np.float32) / 255.0
            ink = thin if thin.max() > 0.5 else ink  # thinning must not erase the glyph
    # affine: rotation, scale, shear (about the centre)
    angle = np.radians(rng.uniform(-15, 15))
    scale = rng.uniform(0.8, 1.2)
    shear = rng.uniform(-0.3, 0.3)
    c, s = np.cos(angle), np.sin(angle)
    m = np.array([[c, -s], [s, c]]) @ np.array([[1, shear], [0, 1]]) / scale
    centre = canvas / 2
    offset = centre - m @ np.array([centre, centre])
    image = Image.fromarray((ink * 255).astype(np.uint8)).transform(
        (canvas, canvas),
        Image.Transform.AFFINE,
        (m[0, 0], m[0, 1], offset[0], m[1, 0], m[1, 1], offset[1]),
        resample=Image.Resampling.BILINEAR,
    )
    warped = _elastic(np.asarray(image, np.float32), rng, canvas * rng.uniform(0.0, 0.04))
    return Image.fromarray((255 - np.clip(warped, 0, 255)).astype(np.uint8))


def sample_rng(char: str, index: int, seed: int) -> np.random.Generator:
    """The rng of drawing ``index`` of ``char``: independent of order and process split."""
    return np.random.default_rng([seed, zlib.crc32(char.encode()), index, 0x6C7])


def _make_chunk(
    args: tuple[list[tuple[str, tuple[str, ...]]], int, int, ImageConstraint, float],
) -> np.ndarray:
    classes, per_class, seed, constraint, pen_max = args
    out = np.empty((len(classes) * per_class, *constraint.shape), dtype=np.uint8)
    for i, (char, fonts) in enumerate(classes):
        for n in range(per_class):
            out[i * per_class + n] = preprocess(
                render(char, fonts, sample_rng(char, n, seed), pen_max=pen_max), constraint
            )
    return out


def make_dataset(
    classes: Sequence[tuple[str, tuple[str, ...]]],
    per_class: int,
    seed: int,
    constraint: ImageConstraint,
    *,
    workers: int = 1,
    pen_max: float = PEN_MAX,
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` preprocessed drawings of each class: uint8 (N, H, W, C) and int64 class ids.

    ``pen_max`` is the widest re-stroking pen, as a share of the canvas.
    """
    classes = list(classes)
    if workers <= 1 or len(classes) < 2 * workers:
        pixels = _make_chunk((classes, per_class, seed, constraint, pen_max))
    else:
        chunks = [classes[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_make_chunk, [(c, per_class, seed, constraint, pen_max) for c in chunks]))
        pixels = np.empty((len(classes) * per_class, *constraint.shape), dtype=np.uint8)
        for w, part in enumerate(parts):
            for j in range(len(chunks[w])):
                i = w + j * workers
                pixels[i * per_class : (i + 1) * per_class] = part[j * per_class : (j + 1) * per_class]
    ids = np.repeat(np.arange(len(classes), dtype=np.int64), per_class)
    return pixels, ids


if __name__ == "__main__":  # the Makefile asks which packages to install
    print(" ".join(missing_packages()))

"""Procedural hand-drawn doodles with Pillow: the sample model's training and test data.

Three families of labels share one renderer:

* ``NAMED_LABELS`` — the bundled model's classes (circle, star, house, …);
* ``NOVEL_LABELS`` — never used in pretraining; tests and benchmarks teach them as new labels;
* procedural classes ``"proc-<id>"`` — each id is a fixed random template of 1–3 strokes, used
  to widen pretraining (class variety transfers far better than more samples per class).

Every drawing is jittered like a hand would: wobbly strokes, closes that overshoot or stay open,
random stroke width, rotation, scale, aspect and position, dark-on-light or light-on-dark.
Output is deterministic for a given seed, whatever the number of worker processes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..images import ImageConstraint, preprocess
from .templates import NAMED, NOVEL, Stroke, Template, arc

NAMED_LABELS: tuple[str, ...] = tuple(NAMED)
NOVEL_LABELS: tuple[str, ...] = tuple(NOVEL)
PROC_PREFIX = "proc-"
_PROC_FAMILY = 0x5EED  # procedural templates depend only on their id, never on a run's seed


def procedural_labels(count: int, start: int = 0) -> list[str]:
    """Names of ``count`` procedural pretraining classes: ``proc-<start>`` onwards."""
    return [f"{PROC_PREFIX}{i}" for i in range(start, start + count)]


def _random_points(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-1, 1, size=(n, 2))


def _proc_part(rng: np.random.Generator) -> list[Stroke]:
    """One random primitive in unit coordinates."""
    kind = rng.choice(
        ["polyline", "arc", "polygon", "ellipse", "dots", "hatch", "glyph", "zigzag", "spiral", "blob"],
        p=[0.16, 0.14, 0.14, 0.09, 0.06, 0.07, 0.16, 0.07, 0.05, 0.06],
    )
    if kind == "polyline":
        return [("line", _random_points(rng, int(rng.integers(2, 5))))]
    if kind == "arc":
        a0 = rng.uniform(0, 360)
        return [("line", arc(0, 0, 1, rng.uniform(0.4, 1), a0, a0 + rng.uniform(80, 320), 20))]
    if kind in ("polygon", "blob"):
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(0.5, 1.0, n) if rng.random() < 0.6 else np.ones(n)
        pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        return [("closed" if kind == "polygon" else "blob", pts)]
    if kind == "ellipse":
        return [("closed", arc(0, 0, 1, rng.uniform(0.35, 1), 0, 360, 33)[:-1])]
    if kind == "dots":
        return [("dot", p[None]) for p in _random_points(rng, int(rng.integers(1, 4)))]
    if kind == "hatch":
        n, angle = int(rng.integers(2, 6)), rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, s], [-s, c]])
        return [("line", np.array([[-1, y], [1, y]]) @ rot) for y in np.linspace(-0.8, 0.8, n)]
    if kind == "glyph":  # letter-like: sharp turns, sometimes with a hook
        pts = _random_points(rng, int(rng.integers(3, 6)))
        if rng.random() < 0.4:
            a0 = rng.uniform(0, 360)
            hook = arc(pts[-1, 0], pts[-1, 1] + 0.3, 0.3, 0.3, a0, a0 + 180, 8)
            pts = np.concatenate([pts, hook])
        return [("line", pts)]
    if kind == "zigzag":
        n = int(rng.integers(3, 8))
        y = np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * rng.uniform(0.2, 0.8)
        return [("line", np.stack([np.linspace(-1, 1, n), y], axis=1))]
    turns = rng.uniform(1.0, 2.5)  # spiral
    t = np.linspace(0, turns * 2 * np.pi, int(30 * turns))
    return [("line", np.stack([t / t[-1] * np.cos(t), t / t[-1] * np.sin(t)], axis=1))]


def procedural_template(class_id: int) -> list[Stroke]:
    """The fixed strokes of procedural class ``class_id``: 1–3 primitives placed in sub-boxes."""
    rng = np.random.default_rng([_PROC_FAMILY, class_id])
    strokes: list[Stroke] = []
    for _ in range(int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))):
        size = rng.uniform(0.35, 1.0, size=2) * (1 if rng.random() < 0.7 else rng.uniform(0.4, 1.0))
        centre = rng.uniform(-1, 1, size=2) * (1 - size)
        strokes += [(kind, pts * size + centre) for kind, pts in _proc_part(rng)]
    return strokes


def template_strokes(label: str, rng: np.random.Generator) -> list[Stroke]:
    """The template strokes of any label (named, novel or ``proc-<id>``)."""
    if label.startswith(PROC_PREFIX):
        return procedural_template(int(label[len(PROC_PREFIX) :]))
    template: Template | None = NAMED.get(label) or NOVEL.get(label)
    if template is None:
        raise KeyError(f"unknown doodle label {label!r}")
    return template(rng)


def _wobble(points: np.ndarray, closed: bool, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Resample a stroke densely and bend it with low-frequency noise, like a hand-drawn line."""
    if closed:
        points = np.concatenate([points, points[:1]])
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    length = float(seg.sum())
    if length < 1e-6:
        return points
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(8, int(length / 0.04))
    t = np.linspace(0, length, n)
    dense = np.stack([np.interp(t, s, points[:, 0]), np.interp(t, s, points[:, 1])], axis=1)
    knots = max(3, int(length / 0.5) + 2)  # one random bend every half unit of length
    bend = rng.normal(0, amount, size=(knots, 2))
    dense += np.stack([np.interp(t, np.linspace(0, length, knots), bend[:, k]) for k in (0, 1)], axis=1)
    if closed:  # hands rarely meet the start exactly: stop short or run on a little
        cut = rng.uniform(-0.08, 0.1)
        if cut < 0:
            dense = dense[: max(4, int(n * (1 + cut)))]
        else:
            dense = np.concatenate([dense, dense[1 : 1 + int(n * cut)]])
    return dense


def _jitter(strokes: list[Stroke], rng: np.random.Generator) -> list[Stroke]:
    """Per-drawing distortion: point noise, rotation, aspect, shear and wobbly strokes."""
    angle = np.radians(rng.normal(0, 8))
    c, s = np.cos(angle), np.sin(angle)
    aspect = np.exp(rng.normal(0, 0.12))
    shear = rng.normal(0, 0.08)
    matrix = np.array([[c, s], [-s, c]]) @ np.array([[aspect, 0], [shear, 1 / aspect]])
    point_noise = rng.uniform(0.015, 0.05)
    wobble = rng.uniform(0.01, 0.04)
    out: list[Stroke] = []
    for kind, pts in strokes:
        pts = (pts + rng.normal(0, point_noise, size=pts.shape)) @ matrix.T
        if kind in ("line", "closed"):
            pts = _wobble(pts, kind == "closed", rng, wobble)
        out.append((kind, pts))
    return out


def render(label: str, rng: np.random.Generator, size: int = 112) -> Image.Image:
    """One hand-drawn-looking drawing of ``label`` as a grayscale ``size``×``size`` image."""
    strokes = _jitter(template_strokes(label, rng), rng)
    allpts = np.concatenate([pts for _, pts in strokes])
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    extent = float(max((hi - lo).max(), 1e-3))
    box = size * rng.uniform(0.45, 0.85)  # the drawing's size on the canvas
    offset = (
        rng.uniform(0.08 * size, size - 0.08 * size - box, size=2)
        if box < 0.84 * size
        else np.full(2, 0.08 * size)
    )
    # pen width relative to the drawing: after fitting to 28 px that is about 0.8–2.5 px
    width = max(2, round(box * rng.uniform(0.035, 0.11)))
    dark_on_light = rng.random() < 0.75
    ground, ink = (255, int(rng.integers(0, 70))) if dark_on_light else (int(rng.integers(0, 40)), 255)
    image = Image.new("L", (size, size), ground)
    draw = ImageDraw.Draw(image)
    for kind, pts in strokes:
        xy = [tuple(p) for p in ((pts - lo) / extent * box + offset).tolist()]
        if kind == "dot":
            r = width * rng.uniform(0.7, 1.4)
            draw.ellipse([xy[0][0] - r, xy[0][1] - r, xy[0][0] + r, xy[0][1] + r], fill=ink)
        elif kind == "blob":
            draw.polygon(xy, fill=ink, outline=ink)
        else:
            draw.line(xy, fill=ink, width=width, joint="curve")
    return image


def sample_rng(label: str, index: int, seed: int) -> np.random.Generator:
    """The rng of drawing ``index`` of ``label``: independent of order and process split."""
    return np.random.default_rng([seed, zlib.crc32(label.encode()), index])


def _make_chunk(args: tuple[list[str], int, int, ImageConstraint, int]) -> np.ndarray:
    labels, per_label, seed, constraint, size = args
    out = np.empty((len(labels) * per_label, *constraint.shape), dtype=np.uint8)
    for i, label in enumerate(labels):
        for n in range(per_label):
            out[i * per_label + n] = preprocess(render(label, sample_rng(label, n, seed), size), constraint)
    return out


def make_dataset(
    labels: Sequence[str],
    per_label: int,
    seed: int,
    constraint: ImageConstraint,
    *,
    size: int = 112,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """``per_label`` preprocessed drawings of each label: uint8 (N, H, W, C) and int64 class ids.

    Class ids index ``labels``. Drawings go through :func:`images.preprocess`, the same path as
    ``prepare`` and ``predict``. ``workers`` > 1 renders in that many processes (same output).
    """
    labels = list(labels)
    if workers <= 1 or len(labels) < 2 * workers:
        pixels = _make_chunk((labels, per_label, seed, constraint, size))
    else:
        chunks = [labels[i::workers] for i in range(workers)]
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_make_chunk, [(c, per_label, seed, constraint, size) for c in chunks]))
        pixels = np.empty((len(labels) * per_label, *constraint.shape), dtype=np.uint8)
        for w, part in enumerate(parts):  # undo the round-robin split so order matches labels
            for j in range(len(chunks[w])):
                i = w + j * workers
                pixels[i * per_label : (i + 1) * per_label] = part[j * per_label : (j + 1) * per_label]
    ids = np.repeat(np.arange(len(labels), dtype=np.int64), per_label)
    return pixels, ids


def write_folder(
    directory: Path, labels: Sequence[str], per_label: int, seed: int, size: int = 112
) -> list[Path]:
    """Write drawings as ``directory/<label>/<n>.png`` (the layout ``prepare`` reads)."""
    written = []
    for label in labels:
        folder = Path(directory) / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_label):
            path = folder / f"{n}.png"
            render(label, sample_rng(label, n, seed), size).save(path)
            written.append(path)
    return written

"""Drawings of a known label in another user's style, for the re-teaching (style rows) benchmark.

The bundled model learned ``star`` as a five-pointed outline. Some people draw a star as an
asterisk: three or four crossing strokes. The model reads those as ``sun`` (generated drawings,
not real ones), so they make the "my way of drawing a known label" case of issue 19.
"""

from __future__ import annotations

from unittest import mock

import numpy as np

from mlpersonalize.images import ImageConstraint, preprocess
from mlpersonalize.sample import doodles
from mlpersonalize.sample.templates import NOVEL, Stroke, line

STYLE_LABEL = "star"


def asterisk(rng: np.random.Generator) -> list[Stroke]:
    """3 or 4 strokes through the centre, evenly turned (with a little wobble)."""
    k = int(rng.integers(3, 5))
    strokes = []
    for i in range(k):
        a = np.pi * i / k + rng.normal(0, 0.1)
        strokes.append(line(-np.cos(a), -np.sin(a), np.cos(a), np.sin(a)))
    return strokes


STYLES = {"asterisk": asterisk}


def style_drawings(style: str, count: int, seed: int, constraint: ImageConstraint) -> np.ndarray:
    """``count`` preprocessed drawings (uint8 [N, H, W, C]) in ``style``, jittered like any doodle."""
    key = f"__style-{style}"
    with mock.patch.dict(NOVEL, {key: STYLES[style]}):
        return np.stack(
            [
                preprocess(doodles.render(key, np.random.default_rng([seed, 7919, i])), constraint)
                for i in range(count)
            ]
        )


def style_images(style: str, count: int, seed: int) -> list:
    """The same drawings as PIL images (for a folder the CLI's ``prepare`` reads)."""
    key = f"__style-{style}"
    with mock.patch.dict(NOVEL, {key: STYLES[style]}):
        return [doodles.render(key, np.random.default_rng([seed, 7919, i])) for i in range(count)]

"""scripts/score_backbone.py's scores on embeddings whose answer is known (no digits, no model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


@pytest.fixture(scope="module")
def score() -> ModuleType:
    path = Path(__file__).parent.parent / "scripts" / "score_backbone.py"
    spec = importlib.util.spec_from_file_location("score_backbone", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clusters(spread: float, per_class: int = 30, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Ten classes of normalised embeddings around orthogonal centres, ``spread`` apart from noise."""
    rng = np.random.default_rng(3)
    digits = np.repeat(np.arange(10), per_class)
    centres = np.eye(dim)[:10]
    return unit(centres[digits] + spread * rng.normal(size=(len(digits), dim))), digits


def test_separated_digits_are_classified_and_untaught_ones_all_rejected(score: ModuleType) -> None:
    feats, digits = clusters(0.05)
    assert np.all(score.ncm(feats, digits, 1, 5) == 1.0)
    assert np.all(score.untaught_oracle(feats, digits, 3, 5) == 1.0)


def test_indistinct_digits_are_near_chance_and_untaught_ones_rejected_like_the_taught(
    score: ModuleType,
) -> None:
    feats, digits = clusters(50.0)
    assert score.ncm(feats, digits, 5, 20).mean() < 0.3
    # the threshold rejects 5% of the taught digits' right answers; untaught ones look the same
    assert score.untaught_oracle(feats, digits, 5, 20).mean() < 0.25

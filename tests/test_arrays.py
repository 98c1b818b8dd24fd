"""The numpy helpers that keep numpy.ma out of an update: same answers as numpy's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_batch

from mlpersonalize._arrays import distinct, quantile


def test_distinct_and_quantile_give_numpys_answers_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(1, 40))
        x = rng.standard_normal(n) * float(rng.choice([1e-3, 1.0, 1e3]))
        for q in (0.0, 0.01, 0.05, 0.5, 0.95, 1.0, float(rng.random())):
            assert quantile(x, q) == float(np.quantile(x, q))
        labels = rng.integers(0, 9, n)
        assert np.array_equal(distinct(labels), np.unique(labels))
        assert distinct(labels).dtype == labels.dtype
    assert len(distinct(np.zeros(0, np.int64))) == 0


def test_an_update_does_not_import_numpy_ma(tmp_path: Path, tiny_model: Path) -> None:
    """Plain np.unique and np.quantile import numpy.ma (about 6 ms of `python -X importtime`)."""
    batch = write_batch(tmp_path / "b.npz", tiny_model, ["circle", "umbrella"], per_label=4)
    code = (
        "import sys; from pathlib import Path; from mlpersonalize import updater; "
        f"updater.update([Path({str(batch)!r})], updater.UpdateOptions(model=Path({str(tiny_model)!r}), "
        f"output=Path({str(tmp_path / 'out')!r}), force=True)); print('numpy.ma' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "False"


def test_chunked_scoring_gives_the_whole_matrix_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring CHUNK examples at a time (memory at 100,000 examples) changes no answer: labels
    with style rows, rows imprinted from scored examples, a label without rows."""
    from mlpersonalize import _arrays, calibration, selection
    from mlpersonalize.heads import cosine

    rng = np.random.default_rng(1)
    emb = rng.standard_normal((50, 8)).astype(np.float32)
    labels = rng.integers(0, 5, 50)  # label 4 has no row
    rows = rng.standard_normal((6, 8)).astype(np.float32)
    row_label = np.array([0, 1, 2, 3, 1, 1])  # label 1: a row and two style rows
    imprinted = {4: np.flatnonzero(labels == 1)[:4], 2: np.flatnonzero(labels == 2)}
    loo = rng.random(50)

    def answers() -> list[np.ndarray]:
        own, trusted = calibration.calibration_scores(emb, labels, rows, row_label, 5, imprinted)
        return [
            calibration.label_probabilities(emb, rows, row_label, 16.0, 5),
            calibration.label_cosines(emb, rows, row_label, 5),
            own,
            trusted,
            cosine.nearest_own_row(emb, labels, rows, row_label),
            selection._right(emb, labels, loo, rows, row_label),
        ]

    whole = answers()
    cos = calibration.normalize(emb) @ calibration.normalize(rows).T  # the dense nearest own row
    dense = np.where(row_label[None, :] == labels[:, None], cos, -np.inf).argmax(axis=1)
    assert np.array_equal(whole[4], dense)
    monkeypatch.setattr(_arrays, "CHUNK", 7)
    for chunked, full in zip(answers(), whole, strict=True):
        np.testing.assert_allclose(chunked, full, rtol=0, atol=1e-12)

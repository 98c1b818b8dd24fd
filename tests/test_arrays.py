"""The numpy helpers that keep numpy.ma out of an update: same answers as numpy's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
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

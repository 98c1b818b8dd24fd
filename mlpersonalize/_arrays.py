"""Small numpy helpers the update's modules share."""

from __future__ import annotations

import numpy as np

# Rows scored, normalised or moved at a time wherever a whole pool at once would hold large
# float64 temporaries (by size: 100,000 examples' unit embeddings at 256 dimensions are 205 MB,
# [CHUNK, 256] is 4 MB). No answer depends on it (tests/test_arrays.py); the memory tests set it
# small to show at a few thousand examples what 100,000 do.
CHUNK = 2048


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of ``values`` (flattened), as plain ``np.unique`` gives them.

    Plain ``np.unique`` (no ``return_*``) asks ``np.ma.is_masked`` first, which imports numpy.ma:
    5-6 ms of a process's start (``python -X importtime``) that nothing else of an update needs."""
    flat = np.sort(np.asarray(values).reshape(-1))
    if len(flat) < 2:
        return flat
    return flat[np.concatenate(([True], flat[1:] != flat[:-1]))]


def quantile(values: np.ndarray, q: float) -> float:
    """``float(np.quantile(values, q))`` (its default, linear method, with numpy's arithmetic: the
    same bits) without the numpy.ma import np.quantile's internal np.unique makes. Non-empty."""
    flat = np.sort(np.asarray(values, np.float64).reshape(-1))
    n = len(flat)
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return float(flat[-1])
    if virtual < 0:
        return float(flat[0])
    below = int(np.floor(virtual))
    t = virtual - np.floor(virtual)
    a, b = flat[below], flat[below + 1]
    diff = b - a
    return float(b - diff * (1 - t) if t >= 0.5 else a + diff * t)

"""Drawings an update has already learned: the same drawing again is not a new example.

A batch made with ``prepare --append`` grows day by day, and a cron job updates the model with the
whole of it each time; a user may also simply run the same ``update`` twice. Before this check the
same drawings came back as new examples every time: the exemplar memory (which keeps every drawing
of the labels the user taught) held them twice, then three times; cross-validation held out a
drawing whose twin it trained on; and the calibration's spreads shrank around the copies. Measured
through the CLI on real handwritten digits (five digits from 3 drawings each, one batch applied
three times, 10 held-out drawings of each of the ten digits, one run): the taught digits read right
50 -> 36 of 50, and 11 -> 64 of 100 test drawings came out ``unknown``; every rerun was saved (the
second said "learned nothing", the third exited 0).

An example repeats a drawing when, under the same label, it is

* an example already in the exemplar memory: its embedding lies within ``SAME`` of the stored one,
  relative to its length (the memory is stored in float16, which moves an embedding by at most
  2.5e-4 of its length; two different drawings of one handwritten digit lie at least 0.15 apart:
  scikit-learn's 1,797 digits through the bundled backbone), or
* an earlier example of this update with the same file digest (the same file in two batches;
  ``prepare`` already leaves duplicates out within one batch).

The same drawing under another label is not a repeat: it is a conflict, which reteach.py judges.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _arrays

SAME = 0.01  # relative distance under which two embeddings are one drawing (see above), tested
# as lengths within 1% and directions within 0.01 radians. Cost, with update's one BLAS thread:
# 100,000 examples of new labels 0.08 s (the digests), of ten known labels 0.12-0.13 s.
SAME_COSINE = 1.0 - SAME * SAME / 2.0
TINY = 1e-12


def repeated(
    memory: tuple[np.ndarray, np.ndarray],
    emb: np.ndarray,
    idx: np.ndarray,
    digests: Sequence[str],
) -> np.ndarray:
    """Boolean mask over the update's examples (``emb`` / ``idx`` / ``digests`` in one order):
    True where the example repeats a drawing the model holds or an earlier example (see above)."""
    mask = np.zeros(len(idx), bool)
    seen: set[tuple[str, int]] = set()
    for i, (digest, label) in enumerate(zip(digests, idx.tolist(), strict=True)):
        key = (digest, label)
        mask[i] = key in seen
        seen.add(key)
    mem_emb, mem_idx = memory
    both = set(_arrays.distinct(mem_idx).tolist()) & set(_arrays.distinct(idx).tolist())
    for label in sorted(both):
        stored = np.asarray(mem_emb[mem_idx == label], np.float32)
        stored_len = np.maximum(np.linalg.norm(stored, axis=1), TINY)
        stored_unit = stored / stored_len[:, None]
        rows = np.flatnonzero(idx == label)
        for start in range(0, len(rows), _arrays.CHUNK):
            part = rows[start : start + _arrays.CHUNK]
            ours = np.asarray(emb[part], np.float32)
            ours_len = np.maximum(np.linalg.norm(ours, axis=1), TINY)
            cosine = (ours @ stored_unit.T) / ours_len[:, None]
            lengths = np.abs(ours_len[:, None] / stored_len[None, :] - 1.0)
            mask[part] |= ((cosine >= SAME_COSINE) & (lengths <= SAME)).any(1)
    return mask

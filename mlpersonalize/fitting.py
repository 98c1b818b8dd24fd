"""The training loop every head kind and engine share: label-balanced epochs over cached embeddings.

It knows neither the head kind (which gives a forward graph and its trainable names) nor the
engine (which runs one optimizer step): it only calls ``session.step``, ``parameters`` and
``set_parameter`` (see ``engines.TrainSession``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from .engines import TrainSession
from .params import UpdateParams

# After each epoch, known labels' rows are pulled this far back towards their values before the
# update (an L2-SP-like anchor): rehearsal keeps them right, the anchor keeps them from drifting.
ANCHOR = 0.5

EpochCallback = Callable[[int, float], None]


def balanced_order(idx: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """One epoch of positions where every label appears as often as the most frequent one.

    Three drawings of a new label against twenty exemplars of each old one would otherwise be
    drowned out; cycling each label's examples to the same count balances them without a
    weighted loss (the ORT cross-entropy block has none).
    """
    labels, counts = np.unique(idx, return_counts=True)
    target = int(counts.max()) if len(counts) else 0
    parts = []
    for label in labels:
        members = np.flatnonzero(idx == label)
        if rng is not None:
            members = rng.permutation(members)
        parts.append(np.resize(members, target))
    if not parts:
        return np.zeros(0, np.int64)
    order = np.stack(parts, axis=1).reshape(-1)  # interleaved: each mini-batch mixes labels
    return rng.permutation(order) if rng is not None else order


def train(
    session: TrainSession,
    emb: np.ndarray,
    idx: np.ndarray,
    params: UpdateParams,
    anchored: Mapping[str, int] | None = None,
    on_epoch: EpochCallback | None = None,
) -> list[float]:
    """Train for ``params.epochs`` label-balanced epochs; return each epoch's mean loss.

    ``anchored`` names parameters whose first rows (the known labels') are pulled back by
    ANCHOR towards their start after every epoch. A NaN or infinite loss ends the run (it never
    recovers; the guard refuses the result).
    """
    rng = np.random.default_rng(params.seed) if params.shuffle else None
    emb = np.ascontiguousarray(emb, np.float32)
    idx = np.asarray(idx, np.int64)
    anchored = {name: rows for name, rows in (anchored or {}).items() if rows > 0}
    start = session.parameters()
    losses: list[float] = []
    for epoch in range(1, params.epochs + 1):
        order = balanced_order(idx, rng)
        total = 0.0
        for i in range(0, len(order), params.batch_size):
            batch = order[i : i + params.batch_size]
            total += session.step(emb[batch], idx[batch]) * len(batch)
        mean = total / max(1, len(order))
        if anchored and ANCHOR:
            now = session.parameters()
            for name, rows in anchored.items():
                value, first = now[name], start[name]
                value[:rows] = first[:rows] + (1 - ANCHOR) * (value[:rows] - first[:rows])
                session.set_parameter(name, value)
        losses.append(mean)
        if on_epoch is not None:
            on_epoch(epoch, mean)
        if not np.isfinite(mean):
            break
    return losses

"""The training loop every head kind and engine share: epochs over cached embeddings.

It knows neither the head kind (which gives a forward graph and its trainable names) nor the
engine (which runs one optimizer step): it only calls ``session.step``, ``parameters`` and
``set_parameter`` (see ``engines.TrainSession``).

What one epoch draws is :class:`EpochPlan`'s business: a number of examples set by the *new*
examples (and the labels they touch), never by the largest label or the whole exemplar memory,
so an update costs what its new examples cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .engines import TrainSession
from .params import UpdateParams

# After each epoch, known labels' rows are pulled this far back towards their values before the
# update (an L2-SP-like anchor): rehearsal keeps them right, the anchor keeps them from drifting.
ANCHOR = 0.5

EpochCallback = Callable[[int, float], None]

# One epoch draws the new examples (label-balanced) once each, at least MIN_PER_LABEL of every
# label, and at most MAX_NEW in all: past it each epoch is a fresh random MAX_NEW of them (100,000
# examples train like 8,192; the imprinted start already averages every one of them). The
# rehearsal set is drawn as often per label as a touched label, up to the larger of its size and
# the new draws. MIN_PER_LABEL was chosen on `make bench`'s quality section (generated drawings,
# 5 seeds): 10 kept the old labels where the former epochs (every label cycled to the largest's
# count) left them, 6 cost them 0.2-0.4 points; both raised the new labels' top-1.
MIN_PER_LABEL = 10
MAX_NEW = 8192


def balanced_order(idx: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """One epoch of positions where every label appears as often as the most frequent one.

    The loop's former epoch (kept for benchmarks that reproduce it): its length grows with the
    largest label's count times the number of labels, which is what :class:`EpochPlan` avoids.
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


class Losses(list[float]):
    """Each epoch's mean loss, and ``steps``: how many optimizer steps the run took."""

    steps: int = 0


def _groups(idx: np.ndarray, offset: int) -> list[np.ndarray]:
    """Positions (plus ``offset``) of each label's examples, one array per label, label order."""
    if len(idx) == 0:
        return []
    order = np.argsort(idx, kind="stable")
    bounds = np.flatnonzero(np.diff(idx[order])) + 1
    return [part + offset for part in np.split(order, bounds)]


def _draw(
    groups: list[np.ndarray], per_label: int, epoch: int, rng: np.random.Generator | None
) -> np.ndarray:
    """``per_label`` positions of each group: a shuffled cycle through its members (a label with
    more members than ``per_label`` shows a different slice each epoch, so all of them count)."""
    parts = []
    for members in groups:
        if rng is not None:
            members = rng.permutation(members)
        start = (epoch * per_label) % len(members)
        parts.append(np.take(members, np.arange(start, start + per_label), mode="wrap"))
    if not parts:
        return np.zeros(0, np.int64)
    return np.stack(parts, axis=1).reshape(-1)  # interleaved: each mini-batch mixes labels


@dataclass(frozen=True)
class EpochPlan:
    """What each epoch draws: ``new_per_label`` of every label the new examples touch, and
    ``rehearsal`` examples of the rehearsal set (spread evenly over its labels).

    With ``n`` new examples over ``t`` labels an epoch draws ``q = max(min(n, MAX_NEW) / t,
    MIN_PER_LABEL)`` of each touched label (balanced: three drawings of one label count as much
    as thirty of another) and ``q`` of each rehearsed label, in all at most the larger of the
    rehearsal set and the new draws. So the steps grow with the new examples and the labels they
    touch, never with the largest label or the size of the exemplar memory, and the same
    examples split over 2 or 10 labels cost the same.
    """

    new: list[np.ndarray]
    old: list[np.ndarray]
    new_per_label: int
    rehearsal: int

    @classmethod
    def of(cls, idx: np.ndarray, rehearsed: int = 0) -> EpochPlan:
        """The plan for labels ``idx`` whose first ``rehearsed`` entries are the rehearsal set."""
        rehearsed = min(max(0, rehearsed), len(idx))
        if rehearsed == len(idx):  # nothing new: everything counts as new
            rehearsed = 0
        idx = np.asarray(idx, np.int64)
        new = _groups(idx[rehearsed:], rehearsed)
        old = _groups(idx[:rehearsed], 0)
        m = min(len(idx) - rehearsed, MAX_NEW)
        per_label = max(math.ceil(m / len(new)), MIN_PER_LABEL) if new else 0
        draws = per_label * len(new)
        rehearsal = min(per_label * len(old), max(rehearsed, draws))
        return cls(new, old, per_label, rehearsal)

    @property
    def size(self) -> int:
        """Examples per epoch."""
        return self.new_per_label * len(self.new) + self.rehearsal

    def steps(self, batch_size: int) -> int:
        """Optimizer steps per epoch."""
        return math.ceil(self.size / batch_size)

    def order(self, epoch: int, rng: np.random.Generator | None) -> np.ndarray:
        """Positions of epoch ``epoch`` (0-based), mixed so each mini-batch holds new and old."""
        parts = [_draw(self.new, self.new_per_label, epoch, rng)]
        if self.rehearsal:
            per_old = math.ceil(self.rehearsal / len(self.old))
            old = _draw(self.old, per_old, epoch, rng)
            if len(old) > self.rehearsal:  # a random rehearsal-sized subset, still label-spread
                keep = rng.permutation(len(old)) if rng is not None else np.arange(len(old))
                old = old[np.sort(keep[: self.rehearsal])]
            parts.append(old)
        order = np.concatenate(parts)
        return rng.permutation(order) if rng is not None else order


# Examples gathered (copied in epoch order) at a time: gathering a whole epoch at once held a second
# copy of the training set's embeddings (100 MB at 100,000 examples of a 256-d backbone).
GATHER = 4096


def train(
    session: TrainSession,
    emb: np.ndarray,
    idx: np.ndarray,
    params: UpdateParams,
    anchored: Mapping[str, int | np.ndarray] | None = None,
    on_epoch: EpochCallback | None = None,
    rehearsed: int = 0,
) -> Losses:
    """Train for ``params.epochs`` epochs; return each epoch's mean loss (and the step count).

    The first ``rehearsed`` examples are the rehearsal set (the exemplar memory of known
    labels), the rest the new examples, and each epoch is :class:`EpochPlan`'s. Without a
    rehearsal set (``rehearsed`` 0, a caller that does not say) each epoch is
    :func:`balanced_order`'s: every label cycled to the largest one's count. ``anchored`` names
    parameters whose first rows (a count: the known labels') are pulled back by ANCHOR towards
    their start after every epoch, or gives a strength per row (1: by ANCHOR, 0: not at all). A
    NaN or infinite loss ends the run (it never recovers; the guard refuses the result).
    """
    rng = np.random.default_rng(params.seed) if params.shuffle else None
    emb = np.asarray(emb, np.float32)
    idx = np.asarray(idx, np.int64)
    plan = EpochPlan.of(idx, rehearsed) if 0 < rehearsed < len(idx) else None
    pulled: dict[str, slice | np.ndarray] = {
        name: slice(0, rows) if isinstance(rows, (int, np.integer)) else np.asarray(rows, np.float32)
        for name, rows in (anchored or {}).items()
        if (rows > 0 if isinstance(rows, (int, np.integer)) else np.any(rows))
    }
    start = session.parameters() if pulled and ANCHOR else {}
    losses = Losses()
    batch_size = params.batch_size
    gather = batch_size * max(1, GATHER // batch_size)  # whole mini-batches per gathered block
    for epoch in range(params.epochs):
        order = plan.order(epoch, rng) if plan is not None else balanced_order(idx, rng)
        total = 0.0
        for at in range(0, len(order), gather):  # each step then reads a contiguous slice
            x, y = emb[order[at : at + gather]], idx[order[at : at + gather]]
            for i in range(0, len(y), batch_size):
                yb = y[i : i + batch_size]
                total += session.step(x[i : i + batch_size], yb) * len(yb)
                losses.steps += 1
        mean = total / max(1, len(order))
        if start:
            now = session.parameters()
            for name, rows in pulled.items():
                value, first = now[name], start[name]
                if isinstance(rows, slice):
                    value[rows] = first[rows] + (1 - ANCHOR) * (value[rows] - first[rows])
                else:  # a strength per row: 1 pulls back by ANCHOR, 0 not at all
                    keep = (1 - ANCHOR * rows).reshape(-1, *([1] * (value.ndim - 1)))
                    value = first + keep * (value - first)
                session.set_parameter(name, value)
        losses.append(mean)
        if on_epoch is not None:
            on_epoch(epoch + 1, mean)
        if not np.isfinite(mean):
            break
    return losses

"""The server's side of a round, in numpy: the devices' rows become one global head.

A cosine head's row for a label is (after imprinting) the normalised mean embedding of its
examples, so the count-weighted mean of the devices' normalised rows is the row the fleet's
examples would imprint together (exactly so for imprinted rows; trained rows move from there,
and averaging them by counts is FedAvg). A label taught on one device only becomes that
device's row; a label nobody taught in the round (a label the devices all had) is the plain
mean of the rows the devices sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..heads.cosine import normalize


@dataclass(frozen=True)
class Contribution:
    """What one device sends after training: a row per label and its example count per label."""

    labels: tuple[str, ...]
    rows: np.ndarray  # float32 [len(labels), D], any length (normalised here)
    counts: tuple[int, ...]  # examples of each label the device trained on this round

    def __post_init__(self) -> None:
        if self.rows.ndim != 2 or len(self.rows) != len(self.labels) or len(self.counts) != len(self.labels):
            raise ValueError(
                f"a contribution needs one row and one count per label: {len(self.labels)} labels, "
                f"rows {tuple(self.rows.shape)}, {len(self.counts)} counts"
            )
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("a contribution names a label twice")
        if any(c < 0 for c in self.counts):
            raise ValueError("example counts cannot be negative")


@dataclass(frozen=True)
class GlobalHead:
    """The aggregated head: labels in order, one unit row each, and the fleet's examples per label."""

    labels: tuple[str, ...]
    rows: np.ndarray
    counts: tuple[int, ...]
    devices: tuple[int, ...]  # how many devices sent a row of each label


def aggregate(contributions: Sequence[Contribution], order: Sequence[str] = ()) -> GlobalHead:
    """Merge the devices' rows label by label.

    Labels come in ``order`` first (the previous global head's labels, so rows keep their
    places), then every other label in the order devices first sent it. Rows of a label with
    examples anywhere are weighted by those counts; a label without examples this round is the
    unweighted mean of the rows sent. Every row is normalised before and after averaging.
    """
    if not contributions:
        raise ValueError("no device sent rows: nothing to aggregate")
    dims = {int(c.rows.shape[1]) for c in contributions}
    if len(dims) != 1:
        raise ValueError(f"devices sent rows of different widths: {sorted(dims)}")
    sent: dict[str, list[tuple[np.ndarray, int]]] = {}
    for c in contributions:
        unit = normalize(np.asarray(c.rows, np.float32))
        for label, row, count in zip(c.labels, unit, c.counts, strict=True):
            sent.setdefault(label, []).append((row, int(count)))
    labels = [label for label in order if label in sent]
    labels += [label for label in sent if label not in labels]
    rows = np.zeros((len(labels), dims.pop()), np.float32)
    counts, devices = [], []
    for i, label in enumerate(labels):
        stack = np.stack([row for row, _ in sent[label]])
        weights = np.array([n for _, n in sent[label]], np.float64)
        if weights.sum() <= 0:
            weights = np.ones(len(weights))
        rows[i] = (weights[:, None] * stack).sum(axis=0) / weights.sum()
        counts.append(int(sum(n for _, n in sent[label])))
        devices.append(len(sent[label]))
    return GlobalHead(tuple(labels), normalize(rows), tuple(counts), tuple(devices))


def weighted_mean(values: Sequence[tuple[float, int]]) -> float | None:
    """The mean of (value, weight) pairs by weight; None when every weight is 0."""
    total = sum(w for _, w in values)
    return sum(v * w for v, w in values) / total if total else None

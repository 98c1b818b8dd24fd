"""What travels, as Flower records. Everything a device sends is built here, and only from
rows, label names, counts and accuracies: never pixels, file names or embeddings.

* server → device, ``train``:    config {round, known labels}
* device → server, ``train``:    arrays {rows [L, D] float32}, config {labels [L], counts [L], reason,
  and with differential privacy on: dp-epsilon, dp-delta, dp-clip, dp-noise-std}
* server → device, ``evaluate``: arrays {rows}, config {labels}
* device → server, ``evaluate``: metrics {num-examples, candidate-accuracy, current-accuracy}
* server → device, ``query``:    arrays {rows}, config {action "adopt", labels, round}
* device → server, ``query``:    config {adopted 0/1, version, reason}, metrics {accuracy before/after}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from .aggregate import Contribution
from .device import Adoption, Evaluation, TrainReport
from .privacy import DpConfig

ROWS = "rows"


def get(content: RecordDict, record: str, key: str, default: Any = None) -> Any:
    """A value of one of a message's records (``default`` when the record or key is missing)."""
    if record not in content:
        return default
    values: Any = content[record]
    return values[key] if key in values else default


def head_record(labels: Sequence[str], rows: np.ndarray, **config: Any) -> RecordDict:
    """A head as a message: its rows (one per label) and its labels, plus ``config`` values."""
    return RecordDict(
        {
            "arrays": ArrayRecord({ROWS: Array(np.ascontiguousarray(rows, np.float32))}),
            "config": ConfigRecord({"labels": list(labels), **config}),
        }
    )


def read_head(content: RecordDict) -> tuple[tuple[str, ...], np.ndarray]:
    """(labels, rows) of a head message; ValueError when they do not match."""
    labels = tuple(str(x) for x in get(content, "config", "labels", []))
    array: Any = get(content, "arrays", ROWS)
    if array is None:
        raise ValueError("a head message without rows")
    rows = np.asarray(array.numpy(), np.float32)
    if rows.ndim != 2 or len(rows) != len(labels):
        raise ValueError(f"a head message has {len(labels)} labels and rows of shape {rows.shape}")
    return labels, rows


def train_request(round_no: int, known: Sequence[str]) -> RecordDict:
    return RecordDict({"config": ConfigRecord({"round": round_no, "known": list(known)})})


def train_reply(report: TrainReport, dp: DpConfig | None = None) -> RecordDict:
    """The device's rows and counts (``dp``: the privacy the rows were sent with, recorded beside)."""
    c = report.contribution
    if c is None:
        return RecordDict({"config": ConfigRecord({"reason": report.reason, "labels": [], "counts": []})})
    extra = {f"dp-{k.replace('_', '-')}": float(v) for k, v in dp.record().items()} if dp else {}
    record = head_record(c.labels, c.rows, counts=list(c.counts), reason="", **extra)
    record["metrics"] = MetricRecord({"num-examples": int(sum(c.counts))})
    return record


def read_train_reply(content: RecordDict) -> Contribution | str:
    """The device's contribution, or the reason it sent none."""
    if get(content, "config", "error"):
        return str(get(content, "config", "error"))
    if not get(content, "config", "labels"):
        return str(get(content, "config", "reason") or "the device sent no rows")
    labels, rows = read_head(content)
    return Contribution(labels, rows, tuple(int(n) for n in get(content, "config", "counts", [])))


def read_dp(content: RecordDict) -> dict[str, float] | None:
    """The differential privacy a train reply's rows were sent with; None when it was off."""
    keys = ("epsilon", "delta", "clip", "noise_std")
    values = {k: get(content, "config", f"dp-{k.replace('_', '-')}") for k in keys}
    return None if values["epsilon"] is None else {k: float(v) for k, v in values.items()}


def evaluate_reply(result: Evaluation) -> RecordDict:
    metrics: dict[str, Any] = {"num-examples": result.examples}
    if result.candidate is not None and result.current is not None:
        metrics |= {"candidate-accuracy": result.candidate, "current-accuracy": result.current}
    return RecordDict({"metrics": MetricRecord(metrics)})


def adopt_reply(result: Adoption) -> RecordDict:
    config: dict[str, Any] = {
        "adopted": int(result.adopted),
        "version": result.version or "",
        "reason": result.reason,
    }
    metrics: dict[str, Any] = {k: float(v) for k, v in result.accuracy.items() if v is not None}
    return RecordDict({"config": ConfigRecord(config), "metrics": MetricRecord(metrics)})


def error_reply(message: str) -> RecordDict:
    """A device-side failure (bad batch, busy store, …) as the message the server logs."""
    return RecordDict({"config": ConfigRecord({"error": message, "labels": [], "counts": []})})

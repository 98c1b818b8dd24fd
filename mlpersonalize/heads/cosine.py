"""The "cosine" head kind (the bundled model's): ``logits = s * normalize(e) @ normalize(W).T``.

One row of ``W`` per label, or more: a label the user re-taught in their own style owns a second
(third, fourth) row, its style row (manifest ``head.row_labels``; reteach.py plans them). Cosine rows
make weight imprinting exact (a new row is the normalised mean embedding of its examples) and keep
old and new labels on the same scale. Every row trains; the exemplar memory of known labels is
rehearsed with the new data, and rows are anchored (fitting.py) to where they started: the known
labels' rows so they are not forgotten, new labels' rows to their imprints (style rows move
freely). Anchoring only the known rows let three drawings pull a new row off its imprint: on
generated drawings (3 per label, two rounds of five, 20 seeds, ``python -m
benchmarks.quality_rows``) the heads the update chose read round 1's and round 2's new labels 2.6
and 3.4 points worse than imprinting alone did (real digits: round 2's 1.1 points worse); with new
rows anchored at half strength (NEW_ROW_ANCHOR), 0.6 and 0.7 points (real digits: 0.1), while the
43 labels keep their gain over imprinting (98.1% vs 94.9% after round 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _arrays, calibration, fitting
from .._lazy import deferred
from ..classifier import SCORES, head_model
from ..manifest import HEAD_FILE
from ..params import UpdateParams
from .base import FitResult, HeadKind, PackageView, Parts, StoredHead

if TYPE_CHECKING:
    import onnx
    from onnx import helper, numpy_helper

    from ..engines import Engine
else:  # onnx (~30 ms): when a head graph is built or read, which predict and inspect never do
    onnx, helper, numpy_helper = deferred("onnx", "onnx.helper", "onnx.numpy_helper")

KIND = "cosine"
WEIGHT = "head.weight"
EPS = 1e-12


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_logits(emb: np.ndarray, weight: np.ndarray, scale: float) -> np.ndarray:
    """The head's logits in numpy (same formula as head.onnx) for quick evaluation."""
    return float(scale) * normalize(emb) @ normalize(weight).T


def imprint(emb: np.ndarray, idx: np.ndarray, rows: list[int]) -> np.ndarray:
    """One row per label index in ``rows``: the normalised mean of its examples' embeddings."""
    out = np.zeros((len(rows), emb.shape[1]), np.float32)
    for i, row in enumerate(rows):
        members = normalize(emb[idx == row])  # only this label's rows are copied
        if len(members):
            out[i] = normalize(members.mean(axis=0, keepdims=True))[0]
    return out


def nearest_own_row(
    emb: np.ndarray,
    idx: np.ndarray,
    rows: np.ndarray,
    row_label: np.ndarray,
    unit: Callable[[np.ndarray], np.ndarray] = normalize,
) -> np.ndarray:
    """Per example, the index of its label's row nearest to it (by cosine; row 0 for a label with
    no row). A label with one row needs no cosine; the examples of labels with several rows are
    compared with those rows only, _arrays.CHUNK at a time, so no [examples, rows] matrix is made.
    ``unit`` normalises rows (float32 :func:`normalize` or calibration's float64 one)."""
    idx = np.asarray(idx, np.int64)
    row_label = np.asarray(row_label, np.int64)
    n_labels = max(int(row_label.max(initial=-1)), int(idx.max(initial=-1))) + 1
    first = np.zeros(n_labels, np.int64)
    first[row_label[::-1]] = np.arange(len(row_label))[::-1]  # each label's first row
    out = first[idx]
    for label in np.flatnonzero(np.bincount(row_label, minlength=n_labels) > 1):
        own = np.flatnonzero(row_label == label)
        own_rows = unit(rows[own])
        members = np.flatnonzero(idx == label)
        for at in range(0, len(members), _arrays.CHUNK):
            part = members[at : at + _arrays.CHUNK]
            out[part] = own[(unit(emb[part]) @ own_rows.T).argmax(axis=1)]
    return out


def _normalize_nodes(source: str, target: str, prefix: str) -> list[onnx.NodeProto]:
    """Row-wise L2 normalisation from basic ops (each has a gradient in ORT training)."""
    return [
        helper.make_node("Mul", [source, source], [f"{prefix}_sq"]),
        helper.make_node("ReduceSum", [f"{prefix}_sq", "head.axes"], [f"{prefix}_ss"], keepdims=1),
        helper.make_node("Add", [f"{prefix}_ss", "head.eps"], [f"{prefix}_sse"]),
        helper.make_node("Sqrt", [f"{prefix}_sse"], [f"{prefix}_norm"]),
        helper.make_node("Div", [source, f"{prefix}_norm"], [target]),
    ]


# How hard a new label's row is pulled back to its imprint, as a share of the known rows' pull.
# Generated drawings, 3 per label, two rounds of five, 20 seeds (new labels' top-1, round 1 / round 2
# new / round 1's after; imprinting alone 0.997 / 0.995 / 0.995): 0 (free) 0.971 / 0.961 / 0.994,
# 0.5 0.991 / 0.988 / 0.993, 1 0.994 / 0.992 / 0.992. A fleet's averaged head (tests/test_fleet.py,
# three devices, two labels each) scored 0.9838 / 0.9804 / 0.9758 on the devices' own examples at 0 /
# 0.75 / 1 (current model 0.9792; 0.9838 at 0.5): rows held at their imprints take more of the known
# labels' drawings once other devices' rows are averaged in.
NEW_ROW_ANCHOR = 0.5
FAR = 4.0  # subtracted from other labels' rows before the max: below any cosine


def label_parts(row_label: np.ndarray, n_labels: int, logit_scale: float, logits: str) -> Parts:
    """From the rows' cosines "head.cos" [N, R]: ``logits`` = log of the per-label probabilities
    (softmax over rows summed per label) and SCORES = the cosine to each label's best row."""
    onehot = np.zeros((len(row_label), n_labels), np.float32)
    onehot[np.arange(len(row_label)), row_label] = 1.0
    nodes = [
        helper.make_node("Mul", ["head.cos", "head.scale"], ["head.row_logits"]),
        helper.make_node("Softmax", ["head.row_logits"], ["head.row_prob"], axis=1),
        helper.make_node("MatMul", ["head.row_prob", "head.onehot"], ["head.label_prob"]),
        helper.make_node("Add", ["head.label_prob", "head.tiny"], ["head.label_prob_e"]),
        helper.make_node("Log", ["head.label_prob_e"], [logits]),
        helper.make_node("Unsqueeze", ["head.cos", "head.axis2"], ["head.cos3"]),
        helper.make_node("Add", ["head.cos3", "head.row_mask"], ["head.cos_masked"]),
        helper.make_node("ReduceMax", ["head.cos_masked"], [SCORES], axes=[1], keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(onehot, "head.onehot"),
        numpy_helper.from_array(np.array(1e-30, np.float32), "head.tiny"),
        numpy_helper.from_array(np.array([2], np.int64), "head.axis2"),
        numpy_helper.from_array(((onehot - 1.0) * FAR).astype(np.float32), "head.row_mask"),
    ]
    return nodes, inits


def head_parts(
    weight: np.ndarray,
    logit_scale: float,
    embedding: str,
    logits: str,
    row_label: np.ndarray | None = None,
) -> Parts:
    """The head's nodes; with ``row_label`` (more rows than labels) ``logits`` are per label."""
    nodes = _normalize_nodes(WEIGHT, "head.wn", "head_w")
    nodes += _normalize_nodes(embedding, "head.en", "head_e")
    nodes.append(helper.make_node("Gemm", ["head.en", "head.wn"], ["head.cos"], transB=1))
    extra: list[onnx.TensorProto] = []
    if row_label is None or np.array_equal(row_label, np.arange(len(weight))):
        nodes.append(helper.make_node("Mul", ["head.cos", "head.scale"], [logits]))
        if row_label is not None:
            nodes.append(helper.make_node("Identity", ["head.cos"], [SCORES]))
    else:
        more, extra = label_parts(row_label, int(row_label.max()) + 1, logit_scale, logits)
        nodes += more
    inits = extra + [
        numpy_helper.from_array(np.ascontiguousarray(weight, dtype=np.float32), WEIGHT),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "head.axes"),
        numpy_helper.from_array(np.array(EPS, dtype=np.float32), "head.eps"),
        numpy_helper.from_array(np.array(logit_scale, dtype=np.float32), "head.scale"),
    ]
    return nodes, inits


def head_weight(head: onnx.ModelProto) -> np.ndarray:
    """The weight rows stored in a cosine head model."""
    for init in head.graph.initializer:
        if init.name == WEIGHT:
            return numpy_helper.to_array(init).astype(np.float32)
    raise ValueError(f"head model has no initializer named {WEIGHT}")


class CosineHead(HeadKind):
    """The bundled kind: rehearse the exemplar memory, imprint new rows, train every row."""

    kind = KIND
    selects = True

    @staticmethod
    def graph(stored: StoredHead) -> onnx.ModelProto:
        classes, dim = stored.weight.shape
        return head_model(*head_parts(stored.weight, stored.logit_scale, "embedding", "logits"), dim, classes)

    @staticmethod
    def trainable(stored: StoredHead) -> list[str]:
        return [WEIGHT]

    @staticmethod
    def classifier_parts(stored: StoredHead, embedding: str, output: str) -> Parts:
        # With row_label, model.onnx also gets its per-label "scores" output.
        return head_parts(stored.weight, stored.logit_scale, embedding, output, stored.row_label())

    @classmethod
    def calibrate(cls, stored: StoredHead, emb: np.ndarray, idx: np.ndarray, n_labels: int) -> dict[str, Any]:
        if len(emb) == 0:
            return {}
        return calibration.calibrate(emb, idx, stored.weight, stored.row_label(), n_labels).to_manifest()

    @staticmethod
    def embedding_dim(stored: StoredHead, backbone: onnx.ModelProto) -> int:
        return int(stored.weight.shape[1])

    @classmethod
    def read(cls, package: PackageView) -> StoredHead:
        weight = head_weight(onnx.load(str(package.path / HEAD_FILE)))
        return StoredHead(weight, package.manifest.logit_scale, row_labels=package.manifest.row_labels)

    def __init__(
        self, package: PackageView, labels: tuple[str, ...], params: UpdateParams, engine: Engine
    ) -> None:
        super().__init__(package, labels, params, engine)
        self.old = self.read(package)
        self.old_weight = self.old.weight
        self.scale = self.old.logit_scale
        self.row_label = self.old.row_label()  # grows with the update's style and new rows (``adopt``)

    def adopt(self, row_label: np.ndarray) -> None:
        """The rows this update's head has (style rows and new labels' rows appended)."""
        self.row_label = np.asarray(row_label, np.int64)

    def anchored_rows(self, n_rows: int) -> np.ndarray:
        """How hard training pulls each row back to its start (fitting.train): the model's rows (the
        known labels') fully, the rows of labels this update adds by NEW_ROW_ANCHOR (to their
        imprints; see the module docstring), not the style rows it adds for known labels, which
        must move to carve out their place (a toy model's style row held in place kept taking its
        known labels' drawings: the update was refused)."""
        row_label = self.row_label if len(self.row_label) == n_rows else np.arange(n_rows)
        n_known = int(self.old.row_label().max()) + 1 if len(self.old_weight) else 0
        known = np.arange(n_rows) < len(self.old_weight)
        return np.where(known, 1.0, np.where(row_label >= n_known, NEW_ROW_ANCHOR, 0.0))

    def target_rows(self, rows: np.ndarray, emb: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Each example's training target: its label's row nearest to it (its only row for most)."""
        return nearest_own_row(emb, idx, rows, self.row_label, calibration.normalize)

    def predict_labels(self, emb: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Top-1 label per embedding under ``rows`` (softmax over rows summed per label)."""
        row_label = self.row_label if len(self.row_label) == len(rows) else np.arange(len(rows))
        return self._labels_under(emb, rows, row_label)

    def grow(self, emb: np.ndarray, idx: np.ndarray, rows: list[int], rehearse_emb: np.ndarray) -> np.ndarray:
        return np.concatenate([self.old_weight, imprint(emb, idx, rows)])

    def train(
        self,
        start: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        params: UpdateParams,
        on_epoch: fitting.EpochCallback | None,
    ) -> FitResult:
        stored = StoredHead(start, self.scale)
        session = self.engine.open(self.graph(stored), self.trainable(stored), params)
        try:
            losses = fitting.train(
                session, x, y, params, {WEIGHT: self.anchored_rows(len(start))}, on_epoch, self.rehearsed
            )
            return FitResult(session.parameters()[WEIGHT], losses)
        finally:
            session.close()

    def predict(self, emb: np.ndarray, result: FitResult | None = None) -> np.ndarray:
        if result is None:  # the head as it was: its own rows and their labels
            return self._labels_under(emb, self.old_weight, self.old.row_label())
        return self.predict_labels(emb, result.weight)

    def _labels_under(self, emb: np.ndarray, rows: np.ndarray, row_label: np.ndarray) -> np.ndarray:
        if len(emb) == 0:
            return np.zeros(0, np.int64)
        n_labels = int(row_label.max()) + 1
        out = np.empty(len(emb), np.int64)
        for at in range(
            0, len(emb), _arrays.CHUNK
        ):  # bounded temporaries (float64 [CHUNK, rows]) at any size
            part = emb[at : at + _arrays.CHUNK]
            prob = calibration.label_probabilities(part, rows, row_label, self.scale, n_labels)
            out[at : at + _arrays.CHUNK] = prob.argmax(axis=1)
        return out

    def stored(self, result: FitResult) -> StoredHead:
        rl = self.row_label if len(self.row_label) == len(result.weight) else np.arange(len(result.weight))
        identity = bool(np.array_equal(rl, np.arange(len(rl))))
        return StoredHead(result.weight, self.scale, row_labels=() if identity else tuple(int(r) for r in rl))

"""The "cosine" head kind (the bundled model's): ``logits = s * normalize(e) @ normalize(W).T``.

One row of ``W`` per label. Cosine rows make weight imprinting exact (a new row is the
normalised mean embedding of its examples) and keep old and new labels on the same scale.
Every row trains; the exemplar memory of known labels is rehearsed with the new data and
their rows are anchored (fitting.py) so they are not forgotten.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import fitting
from ..classifier import head_model
from ..manifest import HEAD_FILE
from ..params import UpdateParams
from .base import FitResult, HeadKind, PackageView, Parts, StoredHead

if TYPE_CHECKING:
    from ..engines import Engine

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


def _normalize_nodes(source: str, target: str, prefix: str) -> list[onnx.NodeProto]:
    """Row-wise L2 normalisation from basic ops (each has a gradient in ORT training)."""
    return [
        helper.make_node("Mul", [source, source], [f"{prefix}_sq"]),
        helper.make_node("ReduceSum", [f"{prefix}_sq", "head.axes"], [f"{prefix}_ss"], keepdims=1),
        helper.make_node("Add", [f"{prefix}_ss", "head.eps"], [f"{prefix}_sse"]),
        helper.make_node("Sqrt", [f"{prefix}_sse"], [f"{prefix}_norm"]),
        helper.make_node("Div", [source, f"{prefix}_norm"], [target]),
    ]


def head_parts(weight: np.ndarray, logit_scale: float, embedding: str, logits: str) -> Parts:
    nodes = _normalize_nodes(WEIGHT, "head.wn", "head_w")
    nodes += _normalize_nodes(embedding, "head.en", "head_e")
    nodes += [
        helper.make_node("Gemm", ["head.en", "head.wn"], ["head.cos"], transB=1),
        helper.make_node("Mul", ["head.cos", "head.scale"], [logits]),
    ]
    inits = [
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

    @staticmethod
    def graph(stored: StoredHead) -> onnx.ModelProto:
        classes, dim = stored.weight.shape
        return head_model(*head_parts(stored.weight, stored.logit_scale, "embedding", "logits"), dim, classes)

    @staticmethod
    def trainable(stored: StoredHead) -> list[str]:
        return [WEIGHT]

    @staticmethod
    def classifier_parts(stored: StoredHead, embedding: str, output: str) -> Parts:
        return head_parts(stored.weight, stored.logit_scale, embedding, output)

    @staticmethod
    def embedding_dim(stored: StoredHead, backbone: onnx.ModelProto) -> int:
        return int(stored.weight.shape[1])

    @classmethod
    def read(cls, package: PackageView) -> StoredHead:
        weight = head_weight(onnx.load(str(package.path / HEAD_FILE)))
        return StoredHead(weight, package.manifest.logit_scale)

    def __init__(
        self, package: PackageView, labels: tuple[str, ...], params: UpdateParams, engine: Engine
    ) -> None:
        super().__init__(package, labels, params, engine)
        self.old = self.read(package)
        self.old_weight = self.old.weight
        self.scale = self.old.logit_scale

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
                session, x, y, params, {WEIGHT: len(self.old_weight)}, on_epoch, self.rehearsed
            )
            return FitResult(session.parameters()[WEIGHT], losses)
        finally:
            session.close()

    def predict(self, emb: np.ndarray, result: FitResult | None = None) -> np.ndarray:
        if len(emb) == 0:
            return np.zeros(0, np.int64)
        weight = self.old_weight if result is None else result.weight
        return np.argmax(cosine_logits(emb, weight, self.scale), axis=1)

    def stored(self, result: FitResult) -> StoredHead:
        return StoredHead(result.weight, self.scale)

"""What every head kind is: its graph, its trainable parameters and its part of an update.

A head kind answers two sets of questions.

* About the stored head (:class:`StoredHead`, what a package keeps): its forward graph
  ``"embedding" [N, D] -> "logits" [N, C]`` (head.onnx, and what an engine trains), the names
  of that graph's trainable initializers, and its nodes inside the inference model (model.onnx).
* About one update (an instance, made for one package and label list): what is rehearsed
  (the exemplar memory, plus stand-ins where a kind has no data of its labels), how new rows
  are imprinted and the head grown, how the rows train (through an engine, with the shared
  loop in fitting.py), what is set by hand afterwards, and how it predicts on embeddings.

The registry in ``heads/__init__.py`` maps a manifest's ``head_kind`` to its class; nothing
else compares a kind's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeAlias

import numpy as np

from ..fitting import EpochCallback
from ..manifest import Manifest
from ..params import UpdateParams

if TYPE_CHECKING:
    import onnx  # annotations only: predict and inspect load a package without importing onnx

    from ..engines import Engine

Parts: TypeAlias = "tuple[list[onnx.NodeProto], list[onnx.TensorProto]]"


class PackageView(Protocol):
    """What a head kind reads of a loaded package (``package.ModelPackage`` is one)."""

    @property
    def path(self) -> Path: ...

    @property
    def manifest(self) -> Manifest: ...


@dataclass(frozen=True)
class StoredHead:
    """A head as a package stores it: weight rows (one per label) and what the kind needs besides.

    ``weight`` is ``[C, D]`` for a cosine head and ``[C, D + 1]`` (bias last) for the linear
    kinds, whose first ``frozen_rows`` rows are constants of the training graph, and so are the
    last ``gate_columns`` weights of the others (a brought model's margin gate). A branch head
    also has its ``features`` part (heads/branch.py).
    """

    weight: np.ndarray
    logit_scale: float = 1.0
    frozen_rows: int = 0
    gate_columns: int = 0
    features: onnx.ModelProto | None = None
    # The label of each row when a head has more rows than labels (a cosine head's style rows);
    # empty: one row per label, in order.
    row_labels: tuple[int, ...] = ()

    def row_label(self) -> np.ndarray:
        """The label index of each weight row."""
        if self.row_labels:
            return np.asarray(self.row_labels, np.int64)
        return np.arange(len(self.weight), dtype=np.int64)


@dataclass
class FitResult:
    """What one training run produced."""

    weight: np.ndarray
    losses: list[float] = field(default_factory=list)
    branch: dict[str, np.ndarray] = field(default_factory=dict)  # a branch head's trained layers

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")

    @property
    def finite(self) -> bool:
        arrays = [self.weight, *self.branch.values()]
        return all(bool(np.all(np.isfinite(a))) for a in arrays) and all(np.isfinite(v) for v in self.losses)


class RowHead(Protocol):
    """What a kind with ``selects`` adds for update_algorithm's choice between imprinted and trained
    heads and its style rows (heads/cosine.py): unit rows, each with a label (``row_label``)."""

    old_weight: np.ndarray
    scale: float
    row_label: np.ndarray
    rehearsed: int

    def adopt(self, row_label: np.ndarray) -> None: ...

    def target_rows(self, rows: np.ndarray, emb: np.ndarray, idx: np.ndarray) -> np.ndarray: ...

    def predict_labels(self, emb: np.ndarray, rows: np.ndarray) -> np.ndarray: ...

    def predict(self, emb: np.ndarray, result: FitResult | None = None) -> np.ndarray: ...

    def train(
        self,
        start: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        params: UpdateParams,
        on_epoch: EpochCallback | None,
    ) -> FitResult: ...

    def stored(self, result: FitResult) -> StoredHead: ...


class HeadKind(ABC):
    """One head kind. Class methods describe a stored head; an instance runs one update."""

    kind: ClassVar[str]
    # True for a kind that chooses between its imprinted and trained head from the user's examples
    # and learns style rows (``choose``); the others keep the two-pass update of update_algorithm.py.
    selects: ClassVar[bool] = False
    rehearsed: int = 0  # how many of the rows ``train`` gets are the rehearsal set (set by ``fit``)

    # --- the stored head ------------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def graph(stored: StoredHead) -> onnx.ModelProto:
        """The forward head (head.onnx): "embedding" -> "logits"; also what an engine trains."""

    @staticmethod
    @abstractmethod
    def trainable(stored: StoredHead) -> list[str]:
        """The names of ``graph(stored)``'s initializers that training changes."""

    @staticmethod
    @abstractmethod
    def classifier_parts(stored: StoredHead, embedding: str, output: str) -> Parts:
        """The head's nodes and initializers inside the inference model: ``embedding`` -> ``output``."""

    @staticmethod
    @abstractmethod
    def embedding_dim(stored: StoredHead, backbone: onnx.ModelProto) -> int:
        """The width of the backbone's embedding this head reads."""

    @classmethod
    @abstractmethod
    def read(cls, package: PackageView) -> StoredHead:
        """The head the package stores."""

    @classmethod  # noqa: B027  (a hook: most kinds need nothing more of a manifest)
    def check(cls, manifest: Manifest, where: str) -> None:
        """ModelError (naming ``where``) when ``manifest`` lacks what this kind needs."""

    @classmethod
    def calibrate(cls, stored: StoredHead, emb: np.ndarray, idx: np.ndarray, n_labels: int) -> dict[str, Any]:
        """The manifest's calibrated ``unknown`` for this head from labelled embeddings (the
        exemplar memory), or {} for a kind whose predictions keep the single probability threshold."""
        return {}

    @classmethod
    def updatable(cls, stored: StoredHead) -> list[dict[str, Any]]:
        """The trainable parameters with their shapes (the manifest's ``updatable``)."""
        shapes = {init.name: [int(n) for n in init.dims] for init in cls.graph(stored).graph.initializer}
        return [{"name": name, "shape": shapes[name]} for name in cls.trainable(stored)]

    # --- one update -----------------------------------------------------------------------

    def __init__(
        self, package: PackageView, labels: tuple[str, ...], params: UpdateParams, engine: Engine
    ) -> None:
        self.package = package
        self.labels = labels
        self.params = params
        self.engine = engine

    def rehearsal(self, ex_emb: np.ndarray, ex_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What training rehearses of the known labels: their exemplar memory (and stand-ins)."""
        return ex_emb, ex_idx

    def stand_in_embeddings(self) -> np.ndarray:
        """Inputs the kind rehearses in place of missing data of its labels (none by default):
        the guard checks that an update leaves the model's answers on them as they were."""
        return np.zeros((0, 0), np.float32)

    def own_labels_reason(self, result: FitResult, max_drop: float) -> str:
        """Without real data of the known labels: why ``result`` (the update's last ``fit``) must
        not be published as far as the kind can tell from its own inputs ("" when nothing shows it;
        the default, for kinds whose known labels' answers no trained layer can move)."""
        return ""

    def fit(
        self,
        emb: np.ndarray,
        idx: np.ndarray,
        rows: list[int],
        rehearse: tuple[np.ndarray, np.ndarray],
        real: tuple[np.ndarray, np.ndarray],
        params: UpdateParams,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult:
        """Grow the head by ``rows`` (the labels added) and train it on (emb, idx) with the
        rehearsal set; ``real`` is the exemplar memory (real examples of known labels, which
        set what a kind sets by hand)."""
        rehearse_emb, rehearse_idx = rehearse
        start = self.grow(emb, idx, rows, rehearse_emb)
        train_idx = np.concatenate([rehearse_idx, idx])
        if params.epochs == 0 or len(train_idx) == 0:
            result = FitResult(np.asarray(start, np.float32))
        else:
            x = self.train_input(np.concatenate([rehearse_emb, emb]))
            self.rehearsed = len(rehearse_idx)  # x's first rows: fitting.train's ``rehearsed``
            result = self.train(start, x, train_idx, params, on_epoch)
            del x  # before finish's copy: one copy of the embeddings at a time
        self.finish(result, np.concatenate([real[0], emb]), np.concatenate([real[1], idx]), idx)
        return result

    @abstractmethod
    def grow(self, emb: np.ndarray, idx: np.ndarray, rows: list[int], rehearse_emb: np.ndarray) -> np.ndarray:
        """The head to train: the known rows and one imprinted row per label in ``rows``."""

    def train_input(self, emb: np.ndarray) -> np.ndarray:
        """What the trained rows read, from the embeddings."""
        return emb

    @abstractmethod
    def train(
        self,
        start: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        params: UpdateParams,
        on_epoch: EpochCallback | None,
    ) -> FitResult:
        """Train the rows ``start`` on (x, y) through the engine; known rows are anchored."""

    def finish(  # noqa: B027  (a hook: most kinds set nothing by hand)
        self, result: FitResult, real_emb: np.ndarray, real_idx: np.ndarray, taught: np.ndarray
    ) -> None:
        """Set what the kind sets by hand after training (nothing by default)."""

    @abstractmethod
    def predict(self, emb: np.ndarray, result: FitResult | None = None) -> np.ndarray:
        """Top-1 row per embedding, with the trained ``result`` or (None) the head as it was."""

    @abstractmethod
    def stored(self, result: FitResult) -> StoredHead:
        """The head to write after an update that trained ``result``."""

"""The public Python API: ``prepare``, ``update`` and ``load_model(...).predict``.

Each call does what the CLI command of the same name does, with the same checks and errors
(subclasses of :class:`mlpersonalize.errors.MLPersonalizeError`, each with its exit code), and
nothing is printed. See docs/python-api.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _ort, store, threads
from .embedding import embed
from .inference import Classifier, Prediction, collect_images
from .manifest import BACKBONE_FILE, HEAD_FILE
from .package import ModelPackage, load_package
from .prepare import Report
from .prepare import prepare as _prepare_batch
from .updater import DEFAULT_MAX_DROP, UpdateOptions, UpdateResult
from .updater import update as _update

PathLike = str | os.PathLike[str]


def _model_path(model: PathLike | None) -> Path:
    """A package folder, a personalized model's name, or None (the model the CLI would use)."""
    return store.resolve_model(None if model is None else Path(model)).path


def prepare(
    data_dirs: PathLike | Sequence[PathLike],
    output: PathLike,
    model: PathLike | None = None,
    *,
    append: bool = False,
    force: bool = False,
    workers: int | None = None,
) -> Report:
    """Turn labelled image folders (``DATA_DIR/<label>/...``) into the batch file ``output`` for ``model``.

    Returns the report of what was used and skipped (``report.to_dict()`` is what
    ``mlpersonalize prepare --json`` prints).
    """
    dirs = [Path(data_dirs)] if isinstance(data_dirs, (str, os.PathLike)) else [Path(d) for d in data_dirs]
    manifest = load_package(_model_path(model)).manifest
    return _prepare_batch(dirs, Path(output), manifest, append=append, force=force, workers=workers)


def update(
    batches: PathLike | Sequence[PathLike],
    model: PathLike | None = None,
    *,
    output: PathLike | None = None,
    epochs: int | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    shuffle: bool | None = None,
    keep: int = store.DEFAULT_KEEP,
    wait: bool = True,
    force: bool = False,
    max_drop: float = DEFAULT_MAX_DROP,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    engine: str | None = None,
) -> UpdateResult:
    """Personalize ``model`` with labelled batch files; return where the updated model is.

    Without ``output`` the result becomes the model's newest personalized version (as
    ``mlpersonalize update`` does); with it, a new package is written there. ``max_drop`` is a
    share (0.02 = 2 points). ``on_event`` receives the progress events (``began``,
    ``epoch_end``, ``completed``). A refused update raises RejectedError unless ``force``.
    ``engine`` forces the training engine ("ort" or "portable"; default: ort where installed).
    """
    paths = [Path(batches)] if isinstance(batches, (str, os.PathLike)) else [Path(b) for b in batches]
    options = UpdateOptions(
        model=None if model is None else Path(model),
        output=None if output is None else Path(output),
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        keep=keep,
        wait=wait,
        force=force,
        max_drop=max_drop,
        engine=engine,
    )
    with threads.one_blas_thread():  # as the command runs it (threads.small_blas)
        return _update(paths, options, on_event)


@dataclass
class Model:
    """A loaded, verified model package, ready to classify."""

    package: ModelPackage

    @property
    def path(self) -> Path:
        return self.package.path

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.package.manifest.labels)

    def predict(
        self,
        images: PathLike | Iterable[PathLike] | np.ndarray,
        top_k: int = 3,
        threshold: float | None = None,
    ) -> list[Prediction]:
        """Predictions for image files and folders (searched like ``mlpersonalize predict``), or
        for uint8 pixels ``[N, H, W, C]`` that fit the model's image constraint (their ``file``
        is then ``"#i"``). Below ``threshold`` (default: the model's) the label is "unknown"."""
        classifier = Classifier(self.package)
        if isinstance(images, np.ndarray):
            probs, scores = classifier.outputs(images)
            decided = classifier.decide(probs, top_k, threshold, scores)
            return [
                Prediction(file=f"#{i}", label=label, confidence=confidence, top=top)
                for i, (label, confidence, top) in enumerate(decided)
            ]
        inputs = [Path(images)] if isinstance(images, (str, os.PathLike)) else [Path(p) for p in images]
        return list(classifier.classify(collect_images(inputs), top_k, threshold))

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """Embeddings ``[N, D]`` of uint8 pixels through the model's frozen backbone."""
        return embed(self.path / BACKBONE_FILE, pixels, self.package.manifest.constraint)

    def predict_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """The label index (into ``labels``) of each embedding, by the model's head (head.onnx)."""
        if len(embeddings) == 0:
            return np.zeros(0, np.int64)
        session = _ort.inference_session(self.path / HEAD_FILE)
        (logits,) = session.run(["logits"], {"embedding": np.ascontiguousarray(embeddings, np.float32)})
        rows = self.package.manifest.row_labels
        if not rows:
            return np.argmax(logits, axis=1)
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))  # a head with style rows: the
        per_label = np.zeros((len(prob), len(self.labels)))  # softmax over rows summed per label
        np.add.at(per_label.T, np.asarray(rows), prob.T)
        return np.argmax(per_label, axis=1)


def load_model(model: PathLike | None = None) -> Model:
    """The model package at ``model`` (a folder, or a personalized model's name); None: the one
    the CLI would use (``$MLPERSONALIZE_MODEL``, the personalized copy, else the bundled one)."""
    return Model(load_package(_model_path(model)))

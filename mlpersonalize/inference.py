"""Classify images with a model package: one ONNX Runtime session, batched runs, top-k, "unknown".

``unknown``: a model with a calibrated ``unknown`` in its manifest (calibration.py) answers it when
the top label's open-set score (model.onnx's ``scores``: the cosine to the label's best row) is
under that label's threshold; a model without one, or any ``threshold`` the caller gives, compares
the top probability with one number (the manifest's ``unknown_threshold`` by default).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _ort, images
from .decoding import Decoded, decode_file
from .errors import ModelError
from .manifest import MODEL_FILE, UNKNOWN
from .package import ModelPackage

RUN_BATCH = 64  # examples per session run: big enough to amortise the call, small for latency


@dataclass(frozen=True)
class Prediction:
    """One image's result; ``error`` is set (and the rest empty) when the image could not be read."""

    file: str
    label: str = ""
    confidence: float = 0.0
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""

    def to_dict(self) -> dict[str, object]:
        if self.error:
            return {"file": self.file, "error": self.error}
        return {
            "file": self.file,
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "top": [{"label": label, "probability": round(p, 6)} for label, p in self.top],
        }


def collect_images(inputs: Iterable[Path]) -> Iterator[Path]:
    """Files named directly, and image files found recursively (sorted, hidden skipped) in folders.

    A named file that is missing or unreadable is yielded too: it becomes an error entry, as
    the same file inside a folder does, and the rest are still classified.
    """
    for item in inputs:
        if item.is_dir():
            for root, dirs, files in os.walk(item):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and images.is_image_name(name):
                        yield Path(root) / name
        else:
            yield item


class Classifier:
    """An inference session over a package's model.onnx."""

    def __init__(self, package: ModelPackage, threads: int = 0) -> None:
        self.package = package
        self.manifest = package.manifest
        self.constraint = package.manifest.constraint
        self.labels = list(package.manifest.labels)
        try:
            self.session = _ort.inference_session(package.file(MODEL_FILE), threads)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise ModelError(f"{package.file(MODEL_FILE)}: ONNX Runtime cannot load it ({exc})") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != self.manifest.input_name:
            raise ModelError(
                f"{package.file(MODEL_FILE)}: input is not {self.manifest.input_name!r} as the manifest says"
            )
        self.input_name = inputs[0].name
        outputs = {o.name for o in self.session.get_outputs()}
        calibrated = self.manifest.unknown.get("thresholds")
        # Per-label thresholds on "scores", when the manifest has them and model.onnx gives scores.
        self.thresholds = np.asarray(calibrated, np.float32) if calibrated and "scores" in outputs else None

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Per-label probabilities [N, C] for preprocessed uint8 examples (N, H, W, C)."""
        return self.outputs(pixels)[0]

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-label probabilities [N, C] and, for a calibrated model, the open-set scores [N, C]."""
        names = ["probabilities"] + (["scores"] if self.thresholds is not None else [])
        out: list[list[np.ndarray]] = [[] for _ in names]
        for start in range(0, len(pixels), RUN_BATCH):
            x = images.to_model_input(pixels[start : start + RUN_BATCH], self.constraint)
            for part, value in zip(out, self.session.run(names, {self.input_name: x}), strict=True):
                part.append(value)
        if not out[0]:
            empty = np.zeros((0, len(self.labels)), np.float32)
            return empty, (empty if self.thresholds is not None else None)
        probs = np.concatenate(out[0])
        if probs.shape[1] != len(self.labels):
            raise ModelError(f"model gives {probs.shape[1]} probabilities for {len(self.labels)} labels")
        return probs, (np.concatenate(out[1]) if len(out) > 1 else None)

    def decide(
        self, probs: np.ndarray, top_k: int, threshold: float | None, scores: np.ndarray | None = None
    ) -> list[tuple[str, float, list]]:
        """(label, confidence, top-k) per row. The label is "unknown" when its score is under its
        calibrated threshold (``threshold`` None, ``scores`` given, the model calibrated), else when
        its probability is under ``threshold`` (None: the manifest's ``unknown_threshold``)."""
        k = max(1, min(top_k, probs.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        calibrated = threshold is None and scores is not None and self.thresholds is not None
        limit = self.manifest.unknown_threshold if threshold is None else threshold
        results = []
        for n, (row, idx) in enumerate(zip(probs, order, strict=True)):
            top = [(self.labels[i], float(row[i])) for i in idx]
            label, confidence = top[0]
            if calibrated:
                assert scores is not None and self.thresholds is not None
                if scores[n, idx[0]] < self.thresholds[idx[0]]:
                    label = UNKNOWN
            elif confidence < limit:
                label = UNKNOWN
            results.append((label, confidence, top))
        return results

    def classify(
        self,
        paths: Iterable[Path],
        top_k: int = 3,
        threshold: float | None = None,
        decoded: Iterable[Decoded] | None = None,
    ) -> Iterator[Prediction]:
        """Predictions in input order, run in chunks of RUN_BATCH.

        ``decoded`` gives each path's :func:`decoding.decode_file` result (from a
        :class:`decoding.Decoder`'s workers); without it the files are decoded here, one by one.
        """
        limit = threshold
        paths = list(paths)
        if decoded is None:
            decoded = (decode_file(os.fspath(path), False, self.constraint, digest=False) for path in paths)
        chunk: list[tuple[str, np.ndarray | None, str]] = []
        for path, (ok, pixels, info) in zip(paths, decoded, strict=True):
            name = os.fsdecode(path)
            chunk.append((name, pixels, "") if ok else (name, None, f"{name}: {info}"))
            if len(chunk) >= RUN_BATCH:
                yield from self._run(chunk, top_k, limit)
                chunk = []
        if chunk:
            yield from self._run(chunk, top_k, limit)

    def _run(
        self, chunk: list[tuple[str, np.ndarray | None, str]], top_k: int, threshold: float | None
    ) -> Iterator[Prediction]:
        good = [pixels for _, pixels, _ in chunk if pixels is not None]
        if good:
            probs, scores = self.outputs(np.stack(good))
            decided = iter(self.decide(probs, top_k, threshold, scores))
        else:
            decided = iter([])
        for name, pixels, error in chunk:
            if pixels is None:
                yield Prediction(file=name, error=error)
            else:
                label, confidence, top = next(decided)
                yield Prediction(file=name, label=label, confidence=confidence, top=top)

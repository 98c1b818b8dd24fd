"""manifest.json of a model package: the schema, its validation, and reading it safely.

Every field is checked when read; any fault is one ModelError naming the file and the problem.
The package's layout and loading are in package.py.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError
from .fsio import read_bounded
from .images import ImageConstraint
from .params import UpdateParams, ranges_from_dict

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
BACKBONE_FILE = "backbone.onnx"
HEAD_FILE = "head.onnx"
EXEMPLARS_FILE = "exemplars.npz"
TRAINING_FILES = (
    "training/training_model.onnx",
    "training/eval_model.onnx",
    "training/optimizer_model.onnx",
    "training/checkpoint",
)
REQUIRED_FILES = (MODEL_FILE, BACKBONE_FILE, HEAD_FILE, EXEMPLARS_FILE, *TRAINING_FILES)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
UNKNOWN = "unknown"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def normalize_label(label: str) -> str:
    """Labels are compared and stored NFC-normalised."""
    return unicodedata.normalize("NFC", label)


def check_labels(labels: Any, where: str) -> list[str]:
    if not isinstance(labels, list) or not labels:
        raise ModelError(f"{where}: labels must be a non-empty list of strings")
    out: list[str] = []
    for label in labels:
        if not isinstance(label, str) or not label.strip() or "\x00" in label:
            raise ModelError(f"{where}: label {label!r} is not a non-empty string")
        out.append(normalize_label(label))
    duplicates = sorted({label for label in out if out.count(label) > 1})
    if duplicates:
        raise ModelError(f"{where}: duplicate labels: {', '.join(duplicates)}")
    return out


def gate_thresholds(training: dict[str, Any]) -> tuple[float, ...]:
    """The gate thresholds a package's manifest records (none for packages made before the gate)."""
    brought = training.get("brought") if isinstance(training, dict) else None
    gate = brought.get("gate") if isinstance(brought, dict) else None
    values = gate.get("thresholds") if isinstance(gate, dict) else None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        return ()
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """The validated contents of manifest.json (see module docstring and docs/package-format.md)."""

    name: str
    description: str
    author: str
    license: str
    input_name: str
    constraint: ImageConstraint
    labels: tuple[str, ...]
    embedding_dim: int
    logit_scale: float
    update_defaults: UpdateParams
    update_ranges: dict[str, tuple[float, float]]
    files: dict[str, FileEntry]
    unknown_threshold: float = 0.0
    exemplars_per_label: int = 20
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()
    producer: dict[str, str] = field(default_factory=dict)
    model_id: str = ""
    format_version: int = FORMAT_VERSION
    # Which head kind reads this package (the registry in heads/ maps the name to its class).
    head_kind: str = "cosine"
    frozen_labels: int = 0  # the first rows (a brought model's labels) never train
    # The trainable parameters with their shapes, as the head kind's training graph has them
    # (HeadKind.updatable); written with every package.
    updatable: tuple[dict[str, Any], ...] = ()
    # The label of each head row when a head has more rows than labels (style rows, see
    # heads/cosine.py); empty means one row per label, in order (every package made before them).
    row_labels: tuple[int, ...] = ()
    # The calibrated ``unknown`` (calibration.py): {"score": "max_cosine", "thresholds": [per label]};
    # empty: predict uses ``unknown_threshold`` on the top probability.
    unknown: dict[str, Any] = field(default_factory=dict)

    def head_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {
            "kind": self.head_kind,
            "embedding_dim": self.embedding_dim,
            "logit_scale": self.logit_scale,
        }
        if self.frozen_labels:
            head["frozen_labels"] = self.frozen_labels
        if self.row_labels:
            head["row_labels"] = list(self.row_labels)
        return head

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model_id": self.model_id,
            "name": self.name,
            "description": self.description,
            "author": self.author,
            "license": self.license,
            "producer": self.producer,
            "input": {"name": self.input_name, "image": self.constraint.to_dict()},
            "outputs": {
                "label": "label",
                "probabilities": "probabilities",
                "embedding": "embedding",
            },
            "labels": list(self.labels),
            "unknown_label": UNKNOWN,
            "unknown_threshold": self.unknown_threshold,
            **({"unknown": self.unknown} if self.unknown else {}),
            "head": self.head_dict(),
            "updatable": [dict(p) for p in self.updatable],
            "update_defaults": self.update_defaults.to_dict(),
            "update_ranges": {k: [v[0], v[1]] for k, v in self.update_ranges.items()},
            "exemplars_per_label": self.exemplars_per_label,
            "metrics": self.metrics,
            "training": self.training,
            "history": list(self.history),
            "files": {k: {"sha256": v.sha256, "bytes": v.bytes} for k, v in sorted(self.files.items())},
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> Manifest:
        if not isinstance(data, dict):
            raise ModelError(f"{where}: not a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelError(
                f"{where}: format_version {version!r} is not supported (this tool reads {FORMAT_VERSION})"
            )
        try:
            inp = data["input"]
            head = data["head"]
            constraint = ImageConstraint.from_dict(inp["image"])
            files = {
                str(name): FileEntry(str(entry["sha256"]), int(entry["bytes"]))
                for name, entry in data["files"].items()
            }
            manifest = cls(
                name=str(data["name"]),
                description=str(data.get("description", "")),
                author=str(data.get("author", "")),
                license=str(data.get("license", "")),
                input_name=str(inp["name"]),
                constraint=constraint,
                labels=tuple(check_labels(data["labels"], where)),
                embedding_dim=int(head["embedding_dim"]),
                logit_scale=float(head["logit_scale"]),
                update_defaults=UpdateParams.from_dict(data.get("update_defaults", {})),
                update_ranges=ranges_from_dict(data.get("update_ranges", {})),
                files=files,
                unknown_threshold=float(data.get("unknown_threshold", 0.0)),
                exemplars_per_label=int(data.get("exemplars_per_label", 20)),
                metrics=dict(data.get("metrics", {})),
                training=dict(data.get("training", {})),
                history=tuple(dict(h) for h in data.get("history", [])),
                producer={str(k): str(v) for k, v in dict(data.get("producer", {})).items()},
                model_id=str(data.get("model_id", "")),
                head_kind=str(head.get("kind", "cosine")),
                frozen_labels=int(head.get("frozen_labels", 0)),
                updatable=tuple(_parameter(p) for p in data.get("updatable", [])),
                row_labels=tuple(int(r) for r in head.get("row_labels", [])),
                unknown=_unknown(data.get("unknown"), len(data["labels"]), where),
            )
        except ModelError as exc:
            if str(exc).startswith(where):
                raise
            raise ModelError(f"{where}: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from exc
        if not 0.0 <= manifest.unknown_threshold < 1.0:
            raise ModelError(f"{where}: unknown_threshold must be in [0, 1)")
        if manifest.embedding_dim < 1 or not np.isfinite(manifest.logit_scale):
            raise ModelError(f"{where}: head.embedding_dim and head.logit_scale are invalid")
        if not 0 <= manifest.frozen_labels <= len(manifest.labels):
            raise ModelError(f"{where}: head.frozen_labels must be within [0, number of labels]")
        _check_row_labels(manifest.row_labels, len(manifest.labels), where)
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise ModelError(f"{where}: files lists no entry for {', '.join(missing)}")
        for name in files:
            check_relative(name, where)
        return manifest


def _parameter(entry: Any) -> dict[str, Any]:
    """One ``updatable`` entry: a parameter's name and shape."""
    return {"name": str(entry["name"]), "shape": [int(n) for n in entry["shape"]]}


def _check_row_labels(row_labels: tuple[int, ...], n_labels: int, where: str) -> None:
    """Every row names a label and every label has a row (empty: one row per label)."""
    if row_labels and (
        min(row_labels) < 0 or max(row_labels) >= n_labels or len(set(row_labels)) != n_labels
    ):
        raise ModelError(
            f"{where}: head.row_labels must name every label (0 to {n_labels - 1}) at least once"
        )


def _unknown(entry: Any, n_labels: int, where: str) -> dict[str, Any]:
    """The calibrated ``unknown``: a score name and one finite threshold per label (absent: {})."""
    if entry is None:
        return {}
    thresholds = entry.get("thresholds") if isinstance(entry, dict) else None
    if (
        not isinstance(entry, dict)
        or entry.get("score") != "max_cosine"
        or not isinstance(thresholds, list)
        or len(thresholds) != n_labels
        or not all(isinstance(t, (int, float)) and np.isfinite(t) for t in thresholds)
    ):
        raise ModelError(f"{where}: unknown must be {{'score': 'max_cosine', 'thresholds': [one per label]}}")
    return {"score": "max_cosine", "thresholds": [float(t) for t in thresholds]}


def check_relative(name: str, where: str) -> None:
    parts = Path(name).parts
    if Path(name).is_absolute() or not parts or ".." in parts or "\\" in name or name.startswith("/"):
        raise ModelError(f"{where}: file entry {name!r} points outside the package")


def read_manifest(path: Path) -> Manifest:
    where = str(path / MANIFEST)
    try:
        if not path.is_dir():
            raise ModelError(f"{path} is not a model package (no such folder)")
        with (path / MANIFEST).open("rb") as handle:
            raw = read_bounded(handle, MAX_MANIFEST_BYTES)
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is not a model package: {MANIFEST} is missing") from exc
    except OSError as exc:
        raise ModelError(f"cannot read {where}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ModelError(f"{where}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelError(f"{where}: not valid UTF-8 JSON ({exc})") from exc
    return Manifest.from_dict(data, where)

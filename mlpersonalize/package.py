"""The model package: one folder with the models, training artifacts, exemplars and a manifest.

Layout (format version 1)::

    manifest.json              everything below, plus the SHA-256 and size of every other file
    model.onnx                 inference model: image -> label, probabilities, embedding
    backbone.onnx              the frozen part: image -> embedding (runs once per example)
    head.onnx                  the updatable part: embedding -> logits (forward only)
    training/                  ONNX Runtime training artifacts of the head
      training_model.onnx  eval_model.onnx  optimizer_model.onnx  checkpoint
    exemplars.npz              bounded memory of known labels' embeddings (for rehearsal)

Loading checks the schema, that every listed file exists inside the folder and matches its hash,
and that labels, head shape and exemplars agree. Any mismatch is a ModelError naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import ModelError
from .images import ImageConstraint
from .manifest import (  # re-exported: the package's names live here for its users
    BACKBONE_FILE,
    EXEMPLARS_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    HEAD_KINDS,
    MANIFEST,
    MODEL_FILE,
    REQUIRED_FILES,
    TRAINING_FILES,
    UNKNOWN,
    FileEntry,
    Manifest,
    check_labels,
    check_relative,
    gate_thresholds,
    normalize_label,
    read_manifest,
    sha256_file,
)
from .params import DEFAULT_RANGES, UpdateParams

__all__ = [
    "BACKBONE_FILE",
    "EXEMPLARS_FILE",
    "FORMAT_VERSION",
    "HEAD_FILE",
    "HEAD_KINDS",
    "MANIFEST",
    "MODEL_FILE",
    "REQUIRED_FILES",
    "TRAINING_FILES",
    "UNKNOWN",
    "FileEntry",
    "Manifest",
    "ModelPackage",
    "build_contents",
    "check_labels",
    "create_package",
    "describe",
    "load_package",
    "gate_thresholds",
    "normalize_label",
    "read_manifest",
    "sha256_file",
    "verify_files",
    "write_package",
]


@dataclass(frozen=True)
class ModelPackage:
    """A loaded, verified package: its folder and manifest."""

    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        return self.path / name

    def exemplars(self) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 [M, D], label index int64 [M]) of the exemplar memory."""
        return read_exemplars(
            self.file(EXEMPLARS_FILE), len(self.manifest.labels), self.manifest.embedding_dim
        )


def verify_files(path: Path, manifest: Manifest) -> dict[str, bool]:
    """Check each listed file: inside the package, a regular file, right size and hash."""
    results: dict[str, bool] = {}
    root = path.resolve()
    for name, entry in manifest.files.items():
        file = path / name
        try:
            if file.is_symlink() or not file.resolve().is_relative_to(root):
                raise ModelError(f"{file}: is a link or lies outside the package")
            size = file.stat().st_size
        except FileNotFoundError as exc:
            raise ModelError(f"{file}: listed in {MANIFEST} but missing") from exc
        except OSError as exc:
            raise ModelError(f"{file}: cannot be read ({exc.strerror or exc})") from exc
        ok = size == entry.bytes and sha256_file(file) == entry.sha256
        results[name] = ok
    return results


def load_package(path: Path, verify: bool = True) -> ModelPackage:
    """Read and check a package; with ``verify`` every file's hash must match its manifest entry."""
    manifest = read_manifest(path)
    if verify:
        for name, ok in verify_files(path, manifest).items():
            if not ok:
                raise ModelError(
                    f"{path / name}: contents do not match the SHA-256 in {MANIFEST} "
                    "(file changed or corrupt)"
                )
        check_external_data(path, manifest)
    return ModelPackage(path, manifest)


def check_external_data(path: Path, manifest: Manifest) -> None:
    """ModelError unless every tensor's external data is a listed, plain file of the package.

    ONNX Runtime opens whatever path a tensor's ``location`` names (``../../etc/passwd``, an
    absolute path, a link), so this runs before any session is created.
    """
    import posixpath

    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    for name in sorted(n for n in manifest.files if n.endswith(".onnx")):
        try:
            model = onnx.load(str(path / name), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise ModelError(f"{path / name} is not an ONNX model ({type(exc).__name__})") from exc
        for tensor in _get_all_tensors(model):
            if not uses_external_data(tensor):
                continue
            location = ExternalDataInfo(tensor).location or ""
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), location))
            bad = not location or "\\" in location or "\x00" in location or location.startswith("/")
            if bad or ".." in Path(location).parts or joined not in manifest.files:
                raise ModelError(
                    f"{path / name}: tensor {tensor.name!r} keeps its external data at {location!r}, "
                    "not a file listed in the package; refused (it lies outside the package)"
                )
            data = path / joined
            if data.is_symlink() or os.stat(data, follow_symlinks=False).st_nlink != 1:
                raise ModelError(f"{data}: external data of {name} is a symbolic or hard link; refused")


def read_exemplars(path: Path, n_labels: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            emb = np.asarray(data["embeddings"])
            idx = np.asarray(data["labels"])
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise ModelError(f"{path}: unreadable exemplar memory ({exc})") from exc
    if emb.ndim != 2 or emb.shape[1] != dim or idx.shape != (emb.shape[0],):
        raise ModelError(f"{path}: exemplar shapes {emb.shape} / {idx.shape} do not fit embedding size {dim}")
    if idx.size and (idx.min() < 0 or idx.max() >= n_labels):
        raise ModelError(f"{path}: exemplar label index out of range")
    return emb.astype(np.float32), idx.astype(np.int64)


def exemplars_bytes(embeddings: np.ndarray, label_index: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, embeddings=embeddings.astype(np.float16), labels=label_index.astype(np.int32))
    return buffer.getvalue()


def producer() -> dict[str, str]:
    import onnx

    from . import _ort

    return {
        "name": "mlpersonalize",
        "version": __version__,
        "onnxruntime": _ort.ORT_VERSION,
        "onnx": onnx.__version__,
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def write_package(directory: Path, manifest: Manifest, contents: dict[str, bytes]) -> Manifest:
    """Write ``contents`` (relative name -> bytes) and the manifest into the empty ``directory``.

    Every file and folder is fsynced; the manifest (with the hashes of what was written) is last,
    so a folder without a valid manifest is never mistaken for a package.
    """
    from .fsio import fsync_dir, write_bytes_synced

    entries: dict[str, FileEntry] = {}
    folders = {directory}
    for name, data in sorted(contents.items()):
        check_relative(name, "package")
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        folders.add(target.parent)
        write_bytes_synced(target, data)
        entries[name] = FileEntry(hashlib.sha256(data).hexdigest(), len(data))
    final = _replace(manifest, files=entries)
    text = json.dumps(final.to_dict(), indent=2, ensure_ascii=False) + "\n"
    write_bytes_synced(directory / MANIFEST, text.encode("utf-8"))
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)
    return final


def _replace(manifest: Manifest, **changes: Any) -> Manifest:
    import dataclasses

    return dataclasses.replace(manifest, **changes)


def build_contents(
    backbone_bytes: bytes,
    weight: np.ndarray,
    logit_scale: float,
    labels: list[str],
    exemplar_embeddings: np.ndarray,
    exemplar_labels: np.ndarray,
    params: UpdateParams,
    head_kind: str = "cosine",
    frozen_labels: int = 0,
    gate_columns: int = 0,
    features: Any = None,
) -> dict[str, bytes]:
    """All package files except the manifest, from a backbone and head weights.

    For ``head_kind`` "linear", ``weight`` is ``[C, D + 1]`` (bias last) and its first
    ``frozen_labels`` rows are constants of the training artifacts, and so are the last
    ``gate_columns`` weights of the other rows (a brought model's margin gate). "branch" also
    takes the head's ``features`` part (branch_head.py) and fixes the ``e0`` block too.
    """
    import onnx

    from . import branch_head, linear_head
    from .head import build_head, build_inference_model, generate_artifacts

    backbone = onnx.load_from_string(backbone_bytes)
    linear = head_kind == "linear"
    fixed = gate_columns
    if head_kind == "branch":
        fixed = (weight.shape[1] - 1 - gate_columns) // 2 + gate_columns  # the e0 block and the gate
        head = branch_head.build_head(features, weight, frozen_labels, fixed)
    elif linear:
        head = linear_head.build_head(weight, frozen_labels, gate_columns)
    else:
        head = build_head(weight, logit_scale)
    model = build_inference_model(backbone, weight, logit_scale, labels, kind=head_kind, features=features)
    contents = {
        BACKBONE_FILE: backbone_bytes,
        HEAD_FILE: head.SerializeToString(),
        MODEL_FILE: model.SerializeToString(),
        EXEMPLARS_FILE: exemplars_bytes(exemplar_embeddings, exemplar_labels),
    }
    with tempfile.TemporaryDirectory(prefix="mlp-artifacts-") as tmp:
        if head_kind == "branch":
            branch_head.generate_artifacts(features, weight, frozen_labels, fixed, params, Path(tmp))
        elif linear:
            linear_head.generate_artifacts(weight, frozen_labels, params, Path(tmp), gate_columns)
        else:
            generate_artifacts(weight, logit_scale, params, Path(tmp))
        for name in TRAINING_FILES:
            contents[name] = (Path(tmp) / os.path.basename(name)).read_bytes()
    return contents


def create_package(
    directory: Path,
    *,
    backbone: Any,
    head_weight: np.ndarray,
    labels: list[str],
    constraint: ImageConstraint,
    logit_scale: float,
    exemplars: dict[str, np.ndarray],
    name: str,
    description: str,
    author: str,
    license: str,
    metrics: dict[str, float],
    training: dict[str, object],
    params: UpdateParams | None = None,
    unknown_threshold: float = 0.0,
    head_kind: str = "cosine",
    frozen_labels: int = 0,
    features: Any = None,
) -> Manifest:
    """Build a new package in ``directory`` (created; must not exist or be empty).

    ``head_kind`` "linear": ``head_weight`` is ``[C, D + 1]`` (bias last), see linear_head.py;
    "branch" also takes the head's ``features`` part and embeds the cut, see branch_head.py.
    """
    labels = check_labels(list(labels), "create_package")
    params = (params or UpdateParams()).validate()
    if head_weight.shape[0] != len(labels):
        raise ValueError(f"head_weight has {head_weight.shape[0]} rows for {len(labels)} labels")
    dim = int(head_weight.shape[1]) - (1 if head_kind == "linear" else 0)
    if head_kind == "branch":
        dim = int(backbone.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    per_label = max((len(v) for v in exemplars.values()), default=0)
    emb = [np.asarray(exemplars[label], np.float32) for label in labels if label in exemplars]
    idx = [np.full(len(exemplars[label]), labels.index(label)) for label in labels if label in exemplars]
    exemplar_embeddings = np.concatenate(emb) if emb else np.zeros((0, dim), np.float32)
    exemplar_labels = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    contents = build_contents(
        backbone.SerializeToString(),
        head_weight,
        logit_scale,
        labels,
        exemplar_embeddings,
        exemplar_labels,
        params,
        head_kind,
        frozen_labels,
        len(gate_thresholds(training)),
        features,
    )
    manifest = Manifest(
        name=name,
        description=description,
        author=author,
        license=license,
        input_name=backbone.graph.input[0].name,
        constraint=constraint,
        labels=tuple(labels),
        embedding_dim=dim,
        logit_scale=float(logit_scale),
        update_defaults=params,
        update_ranges={k: v for k, v in DEFAULT_RANGES.items()},
        files={},
        unknown_threshold=unknown_threshold,
        exemplars_per_label=per_label or 20,
        metrics=dict(metrics),
        training=dict(training),
        producer=producer(),
        model_id=hashlib.sha256(contents[BACKBONE_FILE]).hexdigest()[:16],  # stays across updates
        head_kind=head_kind,
        frozen_labels=frozen_labels,
    )
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise ValueError(f"{directory} is not empty")
    return write_package(directory, manifest, contents)


def describe(package: ModelPackage) -> dict[str, Any]:
    """What `inspect` shows: the manifest plus file sizes and whether each hash verifies."""
    manifest = package.manifest
    try:
        verified = verify_files(package.path, manifest)
    except ModelError:
        verified = {name: False for name in manifest.files}
    data = manifest.to_dict()
    data["path"] = str(package.path)
    data["files"] = [
        {"name": name, "bytes": entry.bytes, "sha256": entry.sha256, "verified": verified.get(name, False)}
        for name, entry in sorted(manifest.files.items())
    ]
    return data

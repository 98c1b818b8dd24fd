"""The model package: one folder with the models, training artifacts, exemplars and a manifest.

Layout (format version 1)::

    manifest.json              everything below, plus the SHA-256 and size of every other file
    model.onnx                 inference model: image -> label, probabilities, embedding
    backbone.onnx              the frozen part: image -> embedding (runs once per example)
    head.onnx                  the updatable part: embedding -> logits (forward only)
    training/                  the head's training files, one set per engine (manifest "engines")
      training_model.onnx  eval_model.onnx  optimizer_model.onnx  checkpoint   ("ort")
      portable/train_step.onnx                                                 ("portable")
    exemplars.npz              bounded memory of known labels' embeddings (for rehearsal)

Every package written here carries the portable train step (unless its head kind is one the
portable engine cannot train) and ONNX Runtime's artifacts where onnxruntime-training is
installed; where it is not, the manifest marks them "regenerate" and the next package written
on a machine that has it carries them again (never stale ones).

Loading checks the schema, that every listed file exists inside the folder and matches its hash,
and that labels, head shape, exemplars and the engines' files agree. Any mismatch is a
ModelError naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import posixpath
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._version import __version__
from .errors import ModelError
from .fsio import fsync_dir, write_bytes_synced
from .heads import StoredHead, kind_named, kind_of
from .images import ImageConstraint
from .manifest import (
    BACKBONE_FILE,
    CURRENT,
    EXEMPLARS_FILE,
    HEAD_FILE,
    MANIFEST,
    MODEL_FILE,
    PORTABLE_STEP_FILE,
    REGENERATE,
    TRAINING_FILES,
    UNSUPPORTED,
    FileEntry,
    Manifest,
    check_labels,
    check_relative,
    gate_columns,
    read_manifest,
)
from .params import DEFAULT_RANGES, UpdateParams

if TYPE_CHECKING:
    import onnx


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
    return {name: ok for name, (ok, _) in _scan_files(path, manifest).items()}


# The key an ONNX tensor names its external data file with (TensorProto.external_data). Protobuf
# stores it as plain bytes, and ONNX Runtime follows no other key: a model whose bytes never
# contain it keeps no tensor data outside itself.
_EXTERNAL_KEY = b"location"


def _scan_files(path: Path, manifest: Manifest) -> dict[str, tuple[bool, bool]]:
    """Each listed file: (size and SHA-256 match, an .onnx file whose bytes name external data),
    from one read of each file."""
    results: dict[str, tuple[bool, bool]] = {}
    root = path.resolve()
    for name, entry in manifest.files.items():
        file = path / name
        try:
            if file.is_symlink() or not file.resolve().is_relative_to(root):
                raise ModelError(f"{file}: is a link or lies outside the package")
            size = file.stat().st_size
            if size != entry.bytes:
                results[name] = (False, False)
                continue
            digest, external = _digest(file, name.endswith(".onnx"))
        except FileNotFoundError as exc:
            raise ModelError(f"{file}: listed in {MANIFEST} but missing") from exc
        except OSError as exc:
            raise ModelError(f"{file}: cannot be read ({exc.strerror or exc})") from exc
        results[name] = (digest == entry.sha256, external)
    return results


def _digest(file: Path, scan: bool) -> tuple[str, bool]:
    """The file's SHA-256 and, with ``scan``, whether its bytes contain ``_EXTERNAL_KEY``."""
    digest = hashlib.sha256()
    found, tail = False, b""
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            if scan and not found:
                found = _EXTERNAL_KEY in tail + chunk[: len(_EXTERNAL_KEY)] or _EXTERNAL_KEY in chunk
                tail = chunk[-len(_EXTERNAL_KEY) :]
    return digest.hexdigest(), found


def load_package(path: Path, verify: bool = True) -> ModelPackage:
    """Read and check a package; with ``verify`` every file's hash must match its manifest entry."""
    manifest = read_manifest(path)
    kind_of(manifest, str(path / MANIFEST))  # a kind this tool has, and what that kind needs
    if verify:
        scanned = _scan_files(path, manifest)
        for name, (ok, _) in scanned.items():
            if not ok:
                raise ModelError(
                    f"{path / name}: contents do not match the SHA-256 in {MANIFEST} "
                    "(file changed or corrupt)"
                )
        check_external_data(path, manifest, [name for name, (_, external) in scanned.items() if external])
    return ModelPackage(path, manifest)


def check_external_data(path: Path, manifest: Manifest, names: list[str] | None = None) -> None:
    """ModelError unless every tensor's external data is a listed, plain file of the package.

    ONNX Runtime opens whatever path a tensor's ``location`` names (``../../etc/passwd``, an
    absolute path, a link), so this runs before any session is created. ``names``: the .onnx
    files to parse (load_package gives those whose bytes contain the key, see ``_scan_files``);
    None: every .onnx file listed.
    """
    if names is not None and not names:
        return  # nothing to parse: onnx (~30 ms to import) is not needed
    # onnx takes ~30 ms to import: loaded when a package names external data, not otherwise.
    import onnx

    # lazy: onnx's external-data helpers, only for a model that uses external data
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    listed = sorted(n for n in manifest.files if n.endswith(".onnx"))
    for name in listed if names is None else sorted(set(names) & set(listed)):
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
    """exemplars.npz, stored: float16 embeddings barely compress (203 of 220 kB for the bundled
    model's 860), and deflating them took 5 ms of every update."""
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=embeddings.astype(np.float16), labels=label_index.astype(np.int32))
    return buffer.getvalue()


def producer() -> dict[str, str]:
    # onnx and onnxruntime: only a command that writes a package needs their versions
    import onnx

    from . import _ort  # lazy: onnxruntime (~0.1 s); inspect and predict of a loaded package skip it

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
    entries: dict[str, FileEntry] = {}
    folders = {directory}
    for name, data in sorted(contents.items()):
        check_relative(name, "package")
        target = directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        folders.update(p for p in target.parents if p.is_relative_to(directory))  # training/ too
        write_bytes_synced(target, data)
        entries[name] = FileEntry(hashlib.sha256(data).hexdigest(), len(data))
    final = _replace(manifest, files=entries)
    text = json.dumps(final.to_dict(), indent=2, ensure_ascii=False) + "\n"
    write_bytes_synced(directory / MANIFEST, text.encode("utf-8"))
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)
    return final


def write_version(
    temp: Path,
    base: ModelPackage,
    head: StoredHead,
    labels: tuple[str, ...],
    exemplars: tuple[np.ndarray, np.ndarray],
    params: UpdateParams,
    entry: dict[str, Any],
    unknown: dict[str, Any] | None = None,
) -> Manifest:
    """``base`` with a new head, labels, exemplar memory and history ``entry``, written into the
    empty folder ``temp`` (fsynced): what an update and a fleet adoption publish.

    ``unknown`` is the calibrated ``unknown`` of the new head; None calibrates it here from the
    exemplar memory (the head's kind decides; a kind without calibration gives {}), so it always
    has one threshold per label and never outlives the labels it was made for.
    """
    manifest = base.manifest
    kind = kind_named(manifest.head_kind)
    if unknown is None:
        unknown = kind.calibrate(head, exemplars[0], exemplars[1], len(labels))
    contents, engines = build_contents(
        (base.path / BACKBONE_FILE).read_bytes(),
        head,
        manifest.head_kind,
        list(labels),
        exemplars[0],
        exemplars[1],
        params,
    )
    new_manifest = _replace(
        manifest,
        labels=tuple(labels),
        updatable=tuple(kind.updatable(head)),
        history=(*manifest.history, entry),
        metrics={**manifest.metrics, "last_update": entry.get("accuracy", {})},
        producer=entry["producer"],
        row_labels=head.row_labels,
        unknown=unknown,
        engines=engines,
    )
    return write_package(temp, new_manifest, contents)


def _replace(manifest: Manifest, **changes: Any) -> Manifest:
    return dataclasses.replace(manifest, **changes)


def build_contents(
    backbone_bytes: bytes,
    head: StoredHead,
    head_kind: str,
    labels: list[str],
    exemplar_embeddings: np.ndarray,
    exemplar_labels: np.ndarray,
    params: UpdateParams,
) -> tuple[dict[str, bytes], dict[str, str]]:
    """All package files except the manifest, from a backbone and a head of kind ``head_kind``,
    and the manifest's ``engines`` (see :func:`engine_files`)."""
    # lazy: onnx (~30 ms) and the classifier graph builder: only when a package is written
    import onnx

    from .classifier import build_inference_model

    kind = kind_named(head_kind)
    backbone = onnx.load_from_string(backbone_bytes)
    classes = len(labels)  # a head may have more rows than labels (StoredHead.row_labels)
    model = build_inference_model(
        backbone,
        kind.classifier_parts(head, "embedding", "head.logits"),
        classes,
        kind.embedding_dim(head, backbone),
        labels,
        features=head.features,
    )
    graph = kind.graph(head)
    contents = {
        BACKBONE_FILE: backbone_bytes,
        HEAD_FILE: graph.SerializeToString(),
        MODEL_FILE: model.SerializeToString(),
        EXEMPLARS_FILE: exemplars_bytes(exemplar_embeddings, exemplar_labels),
    }
    files, engines = engine_files(graph, kind.trainable(head), params)
    return {**contents, **files}, engines


def engine_files(
    graph: onnx.ModelProto, trainable: list[str], params: UpdateParams
) -> tuple[dict[str, bytes], dict[str, str]]:
    """Each engine's training files for the head ``graph`` and ``params``, and each engine's state.

    * "portable": the whole train step (engines/portable.py), or UNSUPPORTED when the portable
      engine cannot differentiate the head (a branch head's convolutions, say).
    * "ort": ONNX Runtime's training artifacts (engines/ort.py) where its training modules are
      installed; elsewhere REGENERATE: none are written, rather than stale ones.
    """
    from . import _ort  # onnxruntime: only writing a package needs it here

    # lazy: the portable engine's graph builder, only when a package is written
    from .engines.portable import UnsupportedOpError, build_train_step

    files: dict[str, bytes] = {}
    engines: dict[str, str] = {}
    if _ort.has_training():
        from .engines.ort import artifact_files  # ONNX Runtime's training modules

        artifacts = artifact_files(graph, trainable, params)
        for name in TRAINING_FILES:
            files[name] = artifacts[os.path.basename(name)]
        engines["ort"] = CURRENT
    else:
        engines["ort"] = REGENERATE
    try:
        step = build_train_step(graph, trainable, params)
    except UnsupportedOpError:
        engines["portable"] = UNSUPPORTED
    else:
        files[PORTABLE_STEP_FILE] = step.SerializeToString()
        engines["portable"] = CURRENT
    return files, engines


def create_package(
    directory: Path,
    *,
    backbone: onnx.ModelProto,
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
    features: onnx.ModelProto | None = None,
) -> Manifest:
    """Build a new package in ``directory`` (created; must not exist or be empty).

    ``head_kind`` "linear": ``head_weight`` is ``[C, D + 1]`` (bias last), see heads/linear.py;
    "branch" also takes the head's ``features`` part and embeds the cut, see heads/branch.py.
    """
    labels = check_labels(list(labels), "create_package")
    params = (params or UpdateParams()).validate()
    if head_weight.shape[0] != len(labels):
        raise ValueError(f"head_weight has {head_weight.shape[0]} rows for {len(labels)} labels")
    head = StoredHead(
        np.asarray(head_weight, np.float32),
        float(logit_scale),
        frozen_labels,
        gate_columns(training),
        features,
    )
    kind = kind_named(head_kind)
    dim = kind.embedding_dim(head, backbone)
    per_label = max((len(v) for v in exemplars.values()), default=0)
    emb = [np.asarray(exemplars[label], np.float32) for label in labels if label in exemplars]
    idx = [np.full(len(exemplars[label]), labels.index(label)) for label in labels if label in exemplars]
    exemplar_embeddings = np.concatenate(emb) if emb else np.zeros((0, dim), np.float32)
    exemplar_labels = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    contents, engines = build_contents(
        backbone.SerializeToString(), head, head_kind, labels, exemplar_embeddings, exemplar_labels, params
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
        updatable=tuple(kind.updatable(head)),
        unknown=kind.calibrate(head, exemplar_embeddings, exemplar_labels, len(labels)),
        engines=engines,
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

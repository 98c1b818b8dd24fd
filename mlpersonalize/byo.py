"""Bring your own model: turn a plain ONNX image classifier into an updatable model package.

Like coremltools' ``make_updatable``: the last linear layer becomes a "linear" head (see
heads/linear.py) whose original rows are frozen, the rest of the model becomes backbone.onnx, and
the image constraint comes from the model's input shape plus the caller's preprocessing. The
package is written into a temp folder beside ``output`` and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import _ort, byo_graph, margin_gate
from .embedding import embed
from .errors import InputError, ModelError, UsageError
from .fsio import publish, read_bounded
from .heads import branch as branch_head
from .heads import linear as linear_head
from .images import ImageConstraint, to_model_input
from .manifest import MODEL_FILE, Manifest, check_labels, normalize_label
from .manifest import gate_columns as manifest_gate_columns
from .package import create_package
from .params import UpdateParams
from .store import copy_note, personalized_copy, update_hint  # noqa: F401 (moved: see store.py)

# Defaults for updates of a brought model, measured on the test architectures (tests/test_byo.py):
# the old rows are frozen, so a higher rate than the cosine head's only moves the new rows.
DEFAULTS = UpdateParams(epochs=20, learning_rate=0.01, batch_size=16)
MAX_LABEL_BYTES = 4 * 1024 * 1024
GATE_NOISE_IMAGES = 64  # noise images that scale the margin gate's thresholds to the model


@dataclass(frozen=True)
class ByoOptions:
    """What ``make-updatable`` was asked; None means "from the model" or the default."""

    labels: Path | None = None
    trainable: tuple[str, ...] = ()
    embedding: str | None = None
    size: tuple[int, int] | None = None  # (width, height)
    color: str | None = None
    layout: str | None = None
    scale: float | None = None
    bias: tuple[float, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    ink: str = "none"
    params: UpdateParams = field(default_factory=lambda: DEFAULTS)
    name: str | None = None
    examples: Path | None = None  # labelled folders of the model's own labels: the exemplar memory


@dataclass(frozen=True)
class ByoResult:
    """The package made and how its head was found."""

    path: Path
    manifest: Manifest
    head: dict[str, Any]


def read_labels(path: Path, classes: int) -> list[str]:
    """``classes`` labels (NFC) from a JSON list or a text file (one per line, blank lines skipped)."""
    try:
        with path.open("rb") as handle:
            raw = read_bounded(handle, MAX_LABEL_BYTES)
        text = raw.decode("utf-8-sig")
    except OSError as exc:
        raise InputError(f"cannot read labels file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"labels file {path} is not UTF-8 text") from exc
    if len(raw) > MAX_LABEL_BYTES:
        raise InputError(f"labels file {path} is larger than {MAX_LABEL_BYTES} bytes")
    if text.lstrip().startswith("["):
        try:
            labels = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"labels file {path} is not a valid JSON list ({exc})") from exc
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    try:
        labels = check_labels(labels, f"labels file {path}")
    except ModelError as exc:
        raise InputError(str(exc)) from exc
    if len(labels) != classes:
        raise InputError(f"labels file {path} has {len(labels)} labels but the model has {classes} outputs")
    return labels


def _dim(value: onnx.TensorShapeProto.Dimension) -> int | None:
    return int(value.dim_value) if value.HasField("dim_value") and value.dim_value > 0 else None


def image_constraint(image_input: onnx.ValueInfoProto, options: ByoOptions) -> ImageConstraint:
    """The constraint from the input's shape (NCHW or NHWC, 1 or 3 channels) and the flags."""
    dims = [_dim(d) for d in image_input.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ModelError(f"input {image_input.name!r} has {len(dims)} dimensions; an image input has 4")
    layout = options.layout
    if layout is None:
        layout = "nhwc" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "nchw"
    channels, height, width = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
    if channels is None:
        channels = {"gray": 1, "rgb": 3}.get(options.color or "", None)
    if channels not in (1, 3):
        raise UsageError(f"input {image_input.name!r} has {channels} channels; give --color and --layout")
    color = "gray" if channels == 1 else "rgb"
    if options.color is not None and options.color != color:
        raise UsageError(f"--color {options.color}: the model's input has {channels} channel(s)")
    if options.size is not None:
        w, h = options.size
        if (width not in (None, w)) or (height not in (None, h)):
            raise UsageError(f"--input-size {w}x{h}: the model's input is fixed at {width}x{height}")
        width, height = w, h
    if width is None or height is None:
        raise UsageError(f"input {image_input.name!r} has no fixed size; give --input-size WxH")
    scale, bias = _values(options, channels)
    try:
        return ImageConstraint(width, height, color, scale, bias, options.ink, layout)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _values(options: ByoOptions, channels: int) -> tuple[float, tuple[float, ...]]:
    """(scale, bias): model value = pixel × scale + bias; --mean/--std are in 0..1 pixel units."""
    if options.mean is None and options.std is None:
        return (1.0 / 255.0 if options.scale is None else options.scale), (options.bias or (0.0,))
    if options.scale is not None or options.bias is not None:
        raise UsageError("give either --scale/--bias or --mean/--std, not both")
    mean = options.mean or (0.0,)
    std = options.std or (1.0,)
    if len(set(std)) != 1:
        raise UsageError("--std must be one value for every channel (per-channel scales are not supported)")
    if len(mean) not in (1, channels) or any(s <= 0 for s in std):
        raise UsageError(f"--mean needs 1 or {channels} values and --std must be positive")
    return 1.0 / (255.0 * std[0]), tuple(-m / std[0] for m in mean)


def _check_split(model: onnx.ModelProto, package: Path, constraint: ImageConstraint) -> None:
    """The package must predict what the brought model predicts (a wrong cut is caught here)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, *constraint.shape), dtype=np.uint8)
    x = to_model_input(pixels, constraint)
    original = _ort.inference_session(model.SerializeToString())
    name = original.get_inputs()[0].name
    theirs = np.concatenate([original.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    ours_session = _ort.inference_session(package / MODEL_FILE)
    ours = ours_session.run(["probabilities"], {ours_session.get_inputs()[0].name: x})[0]
    if theirs.reshape(len(x), -1).shape != ours.shape or not np.array_equal(
        theirs.reshape(len(x), -1).argmax(1), ours.argmax(1)
    ):
        raise ModelError(
            "the updatable package does not predict what the model predicts; cannot split it here"
        )


def _gate(backbone: onnx.ModelProto, head: byo_graph.Head, constraint: ImageConstraint) -> tuple[float, ...]:
    """The margin gate's thresholds, scaled to the brought head's margins on noise images."""
    noise = linear_head.noise_images(constraint, GATE_NOISE_IMAGES, seed=1)
    return margin_gate.ladder(embed(backbone.SerializeToString(), noise, constraint), head.weight, head.bias)


def _with_gate_columns(weight: np.ndarray, columns: int, branch_columns: int = 0) -> np.ndarray:
    """The brought rows weigh every gate feature 0, and a branch's features too (``branch_columns``
    zeros first): their decision function stays the model's."""
    rows = weight.shape[0]
    zeros = np.zeros((rows, branch_columns), np.float32), np.zeros((rows, columns), np.float32)
    return np.concatenate([zeros[0], weight, zeros[1]], axis=1)


def _cut_shape(backbone: onnx.ModelProto, cut: str, constraint: ImageConstraint) -> tuple[int, ...]:
    """The cut tensor's shape without the batch dimension, measured on one blank image."""
    x = to_model_input(np.zeros((1, *constraint.shape), np.uint8), constraint)
    if cut == backbone.graph.input[0].name:
        return tuple(int(d) for d in x.shape[1:])
    probe = onnx.ModelProto.FromString(backbone.SerializeToString())
    probe.graph.output[0].CopyFrom(helper.make_tensor_value_info(cut, TensorProto.FLOAT, None))
    session = _ort.inference_session(probe.SerializeToString())
    return tuple(int(d) for d in session.run([cut], {session.get_inputs()[0].name: x})[0].shape[1:])


def _branch_parts(
    model: onnx.ModelProto,
    head: byo_graph.Head,
    branch: byo_graph.Branch,
    backbone: onnx.ModelProto,
    constraint: ImageConstraint,
) -> tuple[onnx.ModelProto, tuple[float, ...], dict[str, Any]]:
    """(feature part of the head, gate thresholds, manifest record) of a branch head."""
    cut_shape = _cut_shape(backbone, branch.cut, constraint)
    backbone.graph.output[0].type.tensor_type.shape.dim[1].dim_value = int(np.prod(cut_shape))
    thresholds = _gate(byo_graph.split_backbone(model, head), head, constraint)
    features = branch_head.build_features(model, branch, head, cut_shape, thresholds)
    const = byo_graph.constants(model)
    record = {
        "cut": branch.cut,
        "cut_shape": list(cut_shape),
        "features": int(head.weight.shape[1]),
        "trainable": {name: list(const[name].shape) for name in branch.params},
        "layers": [model.graph.node[i].name or model.graph.node[i].op_type for i in branch.nodes],
    }
    return features, thresholds, record


EXAMPLES_PER_LABEL = 20  # at most this many of --examples per label are kept (closest to its mean)


def _examples(
    folder: Path, labels: list[str], backbone: onnx.ModelProto, constraint: ImageConstraint
) -> dict[str, np.ndarray]:
    """``--examples DIR``: its ``<label>/`` folders' images through the package's backbone, per label
    (the exemplar memory updates rehearse and the guard measures). Every folder must name a label."""
    # lazy: predict imports this module for its which-model note; only --examples needs these
    from .prepare import collect
    from .update_algorithm import select_exemplars

    where = f"--examples {folder}"
    if not folder.is_dir():
        raise UsageError(f"{where}: no such folder")
    found = collect([folder], constraint)
    if found.problems:
        raise UsageError(f"{where}: {found.problems[0]}")
    position = {normalize_label(label): i for i, label in enumerate(labels)}
    strangers = sorted({label for label in found.labels if normalize_label(label) not in position})
    if strangers:
        raise UsageError(f"{where}: {strangers[0]!r} is not one of the model's labels")
    if not found.labels:
        raise UsageError(f"{where}: no images in <label>/ folders")
    idx = np.array([position[normalize_label(label)] for label in found.labels], np.int64)
    emb = embed(backbone.SerializeToString(), found.pixels, constraint)
    keep_emb, keep_idx = select_exemplars(emb, idx, EXAMPLES_PER_LABEL)
    return {labels[k]: keep_emb[keep_idx == k] for k in np.unique(keep_idx)}


def make_updatable(model_path: Path, output: Path, options: ByoOptions | None = None) -> ByoResult:
    """Build a package at ``output`` (new or empty folder) from the ONNX classifier at ``model_path``."""
    options = options or ByoOptions()
    options.params.validate()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UsageError(f"--output {output} exists and is not an empty folder")
    where = str(model_path)
    loaded = byo_graph.load_model(model_path)
    source_opset, source_ir = byo_graph.default_opset(loaded), loaded.ir_version
    model = byo_graph.make_compatible(loaded, where)
    head = byo_graph.find_head(model, options.trainable, options.embedding)
    branch = byo_graph.find_branch(model, head, options.trainable)
    backbone = byo_graph.split_backbone(model, head, branch)
    classes = int(head.weight.shape[0])
    if options.labels is not None:
        labels = read_labels(options.labels, classes)
    else:
        labels = [f"class_{i}" for i in range(classes)]
    constraint = image_constraint(backbone.graph.input[0], options)
    features, branch_columns, extra, distance = None, 0, {}, False
    if branch is None:
        thresholds = _gate(backbone, head, constraint)
        distance = bool(thresholds)  # the distance features come with the gate (one label has neither)
        plain = onnx.ModelProto()
        plain.CopyFrom(backbone)
        backbone = margin_gate.add_to_backbone(backbone, head.weight, head.bias, thresholds, distance)
    else:
        features, thresholds, extra["branch"] = _branch_parts(model, head, branch, backbone, constraint)
        branch_columns = int(head.weight.shape[1])
    exemplars = _examples(options.examples, labels, backbone, constraint) if options.examples else {}
    own = 0
    if exemplars:
        extra["examples"] = {label: len(rows) for label, rows in exemplars.items()}
        if branch is None and distance and len(exemplars) == classes:
            # Examples of every brought label: the backbone also measures how near an input lies
            # to the nearest of them, so added labels can be stopped where the own labels lie.
            dim = int(head.weight.shape[1])
            known = np.concatenate([rows[:, :dim] for rows in exemplars.values()])
            backbone = margin_gate.add_to_backbone(plain, head.weight, head.bias, thresholds, distance, known)
            exemplars = {
                label: np.concatenate(
                    [rows, margin_gate.own_distance(rows[:, :dim], known)[:, None]], axis=1
                ).astype(np.float32)
                for label, rows in exemplars.items()
            }
            own = len(known)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    record = {
        "source": model_path.name,
        "source_sha256": digest,
        "source_opset": source_opset,
        "source_ir_version": source_ir,
        "head": {"op": head.op, "nodes": list(head.nodes), "params": list(head.params)},
        "embedding": head.embedding,
        "gate": margin_gate.record(thresholds, distance, own),
        **extra,
    }

    gate_columns = manifest_gate_columns({"brought": record})  # as a package's reader counts them

    def write(temp: Path) -> Manifest:
        manifest = create_package(
            temp,
            backbone=backbone,
            head_weight=linear_head.join(
                _with_gate_columns(head.weight, gate_columns, branch_columns), head.bias
            ),
            labels=labels,
            constraint=constraint,
            logit_scale=1.0,
            exemplars=exemplars,
            name=options.name or model_path.stem,
            description=f"{model_path.name}, made updatable by mlpersonalize (head: {head.op}"
            + (
                f"; the {len(branch.nodes)} nodes after {branch.cut!r} train for new labels)"
                if branch
                else ")"
            ),
            author="",
            license="",
            metrics={},
            training={"brought": record},
            params=options.params,
            head_kind=linear_head.KIND if branch is None else branch_head.KIND,
            frozen_labels=classes,
            features=features,
        )
        _check_split(model, temp, constraint)
        return manifest

    manifest = publish(output, write)
    return ByoResult(output, manifest, record)

"""Bring your own model: real architectures made updatable, updated, and the refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import byo_models as bm
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlpersonalize import updater
from mlpersonalize.batch import Batch, save_batch
from mlpersonalize.byo import ByoOptions, make_updatable
from mlpersonalize.errors import InputError, ModelError, UsageError
from mlpersonalize.linear_head import read_weight
from mlpersonalize.package import HEAD_FILE, MODEL_FILE, load_package

# Measured retention (share of held-out old-class predictions unchanged) and new-label accuracy
# with the defaults (docs/bring-your-own-model.md); the floors leave a margin for BLAS round-off.
FLOORS = {"mobilenet": (0.88, 0.45), "resnet": (0.95, 0.6), "mlp": (0.95, 0.35), "nhwc": (0.8, 0.75)}


def write_batch(
    path: Path, package: Path, classes: list[int], per_class: int, channels: int, jitter: float
) -> Path:
    manifest = load_package(package).manifest
    pixels, ids = bm.gratings(classes, per_class, channels, seed=7, jitter=jitter)
    names = tuple(f"new{k}" for k in ids)
    save_batch(path, Batch.from_pixels(pixels, names, manifest), force=True)
    return path


@pytest.mark.parametrize("arch", list(bm.ARCHS))
def test_architecture_is_updatable_and_keeps_its_labels(arch: str, tmp_path: Path) -> None:
    _, channels, layout, _ = bm.ARCHS[arch]
    jitter = 0.3 if arch == "mlp" else np.pi
    model = bm.build(arch)
    onnx.save(model, tmp_path / "m.onnx")
    result = make_updatable(tmp_path / "m.onnx", tmp_path / "pkg")
    package = load_package(result.path)
    assert package.manifest.head_kind == "linear" and package.manifest.frozen_labels == 4
    assert package.manifest.constraint.layout == layout and package.manifest.constraint.channels == channels
    assert list(package.manifest.labels) == [f"class_{i}" for i in range(4)]

    old, old_ids = bm.gratings(bm.OLD, 30, channels, seed=99, jitter=jitter)
    new, new_ids = bm.gratings(bm.NEW, 30, channels, seed=98, jitter=jitter)
    original = bm.predict(model, old, layout)
    assert np.mean(original == old_ids) > 0.9  # the model really knows its labels
    assert np.array_equal(bm.predict(str(result.path / MODEL_FILE), old, layout, "probabilities"), original)

    batch = write_batch(tmp_path / "b.npz", result.path, bm.NEW, 5, channels, jitter)
    update = updater.update([batch], updater.UpdateOptions(model=result.path, output=tmp_path / "out"))
    assert update.labels_added == ("new4", "new5") and update.history["guard"]["passed"]
    out = load_package(tmp_path / "out")
    session = onnxruntime.InferenceSession(str(out.path / MODEL_FILE), providers=["CPUExecutionProvider"])
    x = bm.to_input(old, layout)
    label, probs, _ = session.run(None, {session.get_inputs()[0].name: x})
    retention = float(np.mean(probs.argmax(1) == original))
    after_new = bm.predict(str(out.path / MODEL_FILE), new, layout, "probabilities")
    learned = float(
        np.mean([out.manifest.labels[p] == f"new{k}" for p, k in zip(after_new, new_ids, strict=True)])
    )
    floor_keep, floor_new = FLOORS[arch]
    print(f"{arch}: old predictions kept {retention:.3f}, new labels right {learned:.3f}")  # shown with -s
    assert retention >= floor_keep and learned >= floor_new, (arch, retention, learned)
    # The brought rows are frozen: bit for bit what the model had.
    head = read_weight(onnx.load(str(out.path / HEAD_FILE)))
    before = read_weight(onnx.load(str(result.path / HEAD_FILE)))
    assert np.array_equal(head[:4], before)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def test_labels_from_text_and_json(tmp_path: Path) -> None:
    path = _save(bm.build("mlp"), tmp_path / "m.onnx")
    (tmp_path / "l.txt").write_text("cafe\u0301\nb\n\nc\nd\n", encoding="utf-8")
    made = make_updatable(path, tmp_path / "a", ByoOptions(labels=tmp_path / "l.txt", name="mine"))
    assert made.manifest.labels == ("caf\u00e9", "b", "c", "d") and made.manifest.name == "mine"
    (tmp_path / "l.json").write_text(json.dumps(["w", "x", "y", "z"]))
    assert (
        make_updatable(path, tmp_path / "b", ByoOptions(labels=tmp_path / "l.json")).manifest.labels[0] == "w"
    )
    (tmp_path / "bad.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match="2 labels but the model has 4"):
        make_updatable(path, tmp_path / "c", ByoOptions(labels=tmp_path / "bad.txt"))


def test_opsets_and_ir_versions(tmp_path: Path) -> None:
    old = bm.build("resnet", opset=11)
    assert load_package(make_updatable(_save(old, tmp_path / "o11.onnx"), tmp_path / "p11").path)
    new = bm.build("resnet", opset=17)
    new.ir_version = 11  # newer than ONNX Runtime 1.19 reads, but nothing in it needs IR 11
    made = make_updatable(_save(new, tmp_path / "ir11.onnx"), tmp_path / "pir")
    assert onnx.load(str(made.path / MODEL_FILE)).ir_version <= 10
    too_new = bm.build("resnet", opset=17)
    too_new.opset_import[0].version = 22
    with pytest.raises(ModelError, match="opset 22; supported are 11 to 21"):
        make_updatable(_save(too_new, tmp_path / "o22.onnx"), tmp_path / "p22")
    assert not (tmp_path / "p22").exists()


def test_external_data_inside_is_inlined_outside_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    model = bm.build("mlp")
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    made = make_updatable(folder / "m.onnx", tmp_path / "pkg")
    assert sorted(p.name for p in made.path.iterdir() if p.is_file()) == sorted(
        ["manifest.json", "model.onnx", "backbone.onnx", "head.onnx", "exemplars.npz"]
    )
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    escaped = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    _point_external_data(escaped, "../outside.bin")
    onnx.save(escaped, folder / "escape.onnx")
    with pytest.raises(ModelError, match="outside the model's folder"):
        make_updatable(folder / "escape.onnx", tmp_path / "p2")
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    _point_external_data(escaped, "link.bin")
    onnx.save(escaped, folder / "link.onnx")
    with pytest.raises(ModelError, match="symbolic link"):
        make_updatable(folder / "link.onnx", tmp_path / "p3")


def _point_external_data(model: onnx.ModelProto, location: str) -> None:
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location


def test_no_head_and_bad_trainable_names_list_candidates(tmp_path: Path) -> None:
    conv = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "conv.weight")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "conv.weight"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["g"]),
            helper.make_node("Flatten", ["g"], ["y"]),
        ],
        "nohead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [conv],
    )
    nohead = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(
        ModelError, match="no updatable head found.*GlobalAveragePool.*parameters: conv.weight"
    ):
        make_updatable(_save(nohead, tmp_path / "n.onnx"), tmp_path / "p")
    path = _save(bm.build("mlp"), tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="no parameter named nope; candidates: fc.bias, fc.weight, hidden"):
        make_updatable(path, tmp_path / "p", ByoOptions(trainable=("nope",)))
    with pytest.raises(UsageError, match="only the last linear layer"):
        make_updatable(path, tmp_path / "p", ByoOptions(trainable=("fc.weight", "hidden.weight")))
    assert make_updatable(path, tmp_path / "p", ByoOptions(trainable=("fc.weight", "fc.bias"))).manifest

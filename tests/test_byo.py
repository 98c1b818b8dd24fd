"""Bring your own model: real architectures made updatable, updated, and the refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import byo_models as bm
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlpersonalize import _ort, margin_gate, updater
from mlpersonalize.batch import Batch, save_batch
from mlpersonalize.byo import ByoOptions, make_updatable
from mlpersonalize.embedding import embed
from mlpersonalize.errors import InputError, ModelError, UsageError
from mlpersonalize.heads.linear import read_weight
from mlpersonalize.manifest import BACKBONE_FILE, HEAD_FILE, MODEL_FILE, gate_thresholds
from mlpersonalize.package import load_package

# Measured retention (share of held-out old-class predictions unchanged) and new-label accuracy
# with the defaults (docs/bring-your-own-model.md): 1.000/0.92, 0.992/0.88, 1.000/0.60, 1.000/0.75
# with this batch. Over five batch seeds (tests/byo_models.py) the worst are 0.925 kept (MLP) and
# 0.53 new (MLP); the floors hold the goal of 0.95 kept here and leave room for round-off.
FLOORS = {"mobilenet": (0.95, 0.75), "resnet": (0.95, 0.7), "mlp": (0.95, 0.5), "nhwc": (0.95, 0.65)}


@pytest.mark.parametrize("arch", list(bm.ARCHS))
def test_architecture_is_updatable_and_keeps_its_labels(arch: str, tmp_path: Path) -> None:
    _, channels, layout, _ = bm.ARCHS[arch]
    m = bm.measure(arch, tmp_path)
    package = load_package(m.made)
    assert package.manifest.head_kind == "linear" and package.manifest.frozen_labels == 4
    assert package.manifest.constraint.layout == layout and package.manifest.constraint.channels == channels
    assert list(package.manifest.labels) == [f"class_{i}" for i in range(4)]
    old, old_ids = bm.gratings(bm.OLD, 30, channels, seed=99, jitter=0.3 if arch == "mlp" else np.pi)
    assert np.mean(m.original == old_ids) > 0.9  # the model really knows its labels
    assert np.array_equal(bm.predict(str(m.made / MODEL_FILE), old, layout, "probabilities"), m.original)
    assert m.update.labels_added == ("new4", "new5") and m.update.history["guard"]["passed"]

    floor_keep, floor_new = FLOORS[arch]
    print(f"{arch}: old predictions kept {m.retention:.3f}, new labels right {m.learned:.3f}")  # -s shows it
    assert m.retention >= floor_keep and m.learned >= floor_new, (arch, m.retention, m.learned)
    # The brought rows are frozen: bit for bit what the model had.
    head = read_weight(onnx.load(str(m.out / HEAD_FILE)))
    before = read_weight(onnx.load(str(m.made / HEAD_FILE)))
    assert np.array_equal(head[:4], before)
    # The gate's promise: an old input the model is surer of than the gate's rung keeps its answer.
    thresholds = np.array(package.manifest.training["brought"]["gate"]["thresholds"], np.float32)
    gates = head[4:, -1 - len(thresholds) : -1]
    rung = np.flatnonzero(gates[0])
    assert len(rung) == 1 and np.all(gates[:, rung[0]] == -margin_gate.STEEPNESS)
    sure = margin_gate.margins(m.embedding, before[:, :-1], before[:, -1]) > thresholds[rung[0]]
    assert sure.any() and np.array_equal(m.probabilities.argmax(1)[sure], m.original[sure])


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
    made = make_updatable(path, tmp_path / "p", ByoOptions(trainable=("fc.weight", "fc.bias")))
    assert made.manifest.head_kind == "linear"  # the last layer's own parameters: no branch


def test_gate_features_are_the_brought_heads_margin_over_each_threshold(tmp_path: Path) -> None:
    made = make_updatable(_save(bm.build("mlp"), tmp_path / "m.onnx"), tmp_path / "pkg")
    thresholds = np.array(made.head["gate"]["thresholds"], np.float32)
    assert len(thresholds) == len(margin_gate.LADDER) and np.all(np.diff(thresholds) > 0)
    package = load_package(made.path)
    assert package.manifest.embedding_dim == 128 + len(thresholds)
    pixels, _ = bm.gratings(bm.OLD + bm.NEW, 4, 1, seed=5, jitter=0.3)
    emb = embed(made.path / BACKBONE_FILE, pixels, package.manifest.constraint)
    weight = read_weight(onnx.load(str(made.path / HEAD_FILE)))
    assert not weight[:, 128:-1].any()  # the brought rows ignore the gate
    margin = margin_gate.margins(emb[:, :128], weight[:, :128], weight[:, -1])
    np.testing.assert_allclose(emb[:, 128:], np.maximum(margin[:, None] - thresholds, 0), atol=1e-4)


def test_gate_rung_and_rows() -> None:
    frozen = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)  # two brought rows, D = 2
    emb = np.array([[0.2, 0.1], [0.3, 0.1], [0.1, 0.2], [5.0, 0.0]], np.float32)
    idx = np.array([2, 2, 2, 0])  # margins 0.1, 0.2, 0.1 for the added label; the brought one is ignored
    thresholds = (0.05, 0.1, 0.2, 0.4)
    # 80% quantile of 0.1, 0.1, 0.2 is 0.16: rung 0.2 for row 2; row 3 (not taught now) keeps rung 0
    assert margin_gate.rungs(emb, idx, frozen, thresholds, {2}, [None, 0]) == [2, 0]
    assert margin_gate.rungs(emb, idx, frozen, (0.01, 0.02), {2}, [3]) == [None]  # nothing above
    assert margin_gate.rungs(emb, idx, frozen, (), {2}, [None]) == [None]
    original = np.array([[1, 0, 0, 0, 0.5], [0, 1, 0, 0, -0.5]], np.float32)  # [F, D + J + 1], J = 2
    trained = np.array([[9, 9, 9], [9, 9, 9], [1, 2, 3], [4, 5, 6]], np.float32)  # [C, D + 1]
    rows = margin_gate.attach(trained, original, [1, None], 2)
    assert np.array_equal(rows[:2], original)
    assert np.array_equal(rows[2:], [[1, 2, 0, -margin_gate.STEEPNESS, 3], [4, 5, 0, 0, 6]])
    assert margin_gate.rungs_of(rows, 2, 2, 2) == [1, None]
    assert gate_thresholds({}) == () and gate_thresholds({"brought": {}}) == ()


def test_labels_added_one_update_at_a_time_keep_each_other(tmp_path: Path) -> None:
    """A later update re-gates only the labels it teaches; earlier ones keep their rung."""
    made = make_updatable(_save(bm.build("mlp"), tmp_path / "m.onnx"), tmp_path / "p0").path
    current = made
    for step, k in enumerate(bm.NEW):
        pixels, ids = bm.gratings([k], 5, 1, seed=20 + step, jitter=0.3)
        batch = Batch.from_pixels(pixels, tuple(f"new{i}" for i in ids), load_package(current).manifest)
        save_batch(tmp_path / f"b{step}.npz", batch, force=True)
        options = updater.UpdateOptions(model=current, output=tmp_path / f"p{step + 1}")
        assert updater.update([tmp_path / f"b{step}.npz"], options).history["guard"]["passed"]
        current = tmp_path / f"p{step + 1}"
    old, _ = bm.gratings(bm.OLD, 30, 1, seed=99, jitter=0.3)
    new, new_ids = bm.gratings(bm.NEW, 30, 1, seed=98, jitter=0.3)
    assert (
        np.mean(
            bm.predict(str(current / MODEL_FILE), old, "nchw", "probabilities")
            == bm.predict(bm.build("mlp"), old, "nchw")
        )
        >= 0.95
    )
    labels = load_package(current).manifest.labels
    after = bm.predict(str(current / MODEL_FILE), new, "nchw", "probabilities")
    assert np.mean([labels[p] == f"new{k}" for p, k in zip(after, new_ids, strict=True)]) >= 0.5


@pytest.mark.skipif(
    not _ort.has_training(),
    reason="needs the ort engine: onnxruntime-training-cpu is not installed for this Python",
)
def test_stored_training_artifacts_train_only_the_added_rows_own_weights(tmp_path: Path) -> None:
    """An outside runtime training the package's artifacts must not move the brought rows or
    the margin gate's weights of added rows; head.onnx still holds the whole head."""
    from mlpersonalize import _ort

    made = make_updatable(_save(bm.build("mlp"), tmp_path / "m.onnx"), tmp_path / "p0").path
    pixels, ids = bm.gratings([bm.NEW[0]], 5, 1, seed=20, jitter=0.3)
    batch = Batch.from_pixels(pixels, tuple(f"new{i}" for i in ids), load_package(made).manifest)
    save_batch(tmp_path / "b.npz", batch)
    updater.update([tmp_path / "b.npz"], updater.UpdateOptions(model=made, output=tmp_path / "p1"))
    package = load_package(tmp_path / "p1")
    manifest = package.manifest
    dim, gate = manifest.embedding_dim, len(gate_thresholds(manifest.training))
    assert gate > 0
    weight = read_weight(onnx.load(str(package.file(HEAD_FILE))))  # every column, the gate's too
    assert weight.shape == (len(manifest.labels), dim + 1)
    assert np.all(weight[:-1, dim - gate : dim] == 0)  # brought rows ignore the gate
    assert list(weight[-1, dim - gate : dim]).count(-margin_gate.STEEPNESS) == 1  # the added row's rung
    api = _ort.training_api()
    state = api.CheckpointState.load_checkpoint(str(package.file("training/checkpoint")))
    trainable = {name: list(p.data.shape) for name, p in state.parameters if p.requires_grad}
    assert trainable == {p["name"]: p["shape"] for p in manifest.updatable}
    assert trainable["head.weight"] == [1, manifest.embedding_dim - gate]


# --- --trainable naming earlier layers: a trainable branch for the added labels -------------

# Measured with the defaults (docs/bring-your-own-model.md; .venv/bin/python tests/byo_models.py 5 branch):
# old predictions kept / new labels right on this batch: 1.000/1.00 (MobileNet), 1.000/0.88 (ResNet),
# 1.000/0.67 (MLP), 1.000/0.78 (NHWC).
BRANCH_FLOORS = {"mobilenet": (0.95, 0.8), "resnet": (0.95, 0.7), "mlp": (0.95, 0.55), "nhwc": (0.95, 0.7)}


@pytest.mark.slow  # 33 s for the four (make test-all); test_heads.py runs the branch kind in 3 s
@pytest.mark.parametrize("arch", list(bm.ARCHS))
def test_earlier_layers_train_in_a_branch_that_serves_only_added_labels(arch: str, tmp_path: Path) -> None:
    from mlpersonalize.heads.branch import FROZEN_PREFIX, TRAINABLE_PREFIX

    _, channels, layout, _ = bm.ARCHS[arch]
    m = bm.measure(arch, tmp_path, trainable=bm.BRANCH[arch])
    made = load_package(m.made)
    assert made.manifest.head_kind == "branch" and made.manifest.frozen_labels == 4
    layers = [name for name in bm.BRANCH[arch] if not name.startswith("fc.")]
    assert [p["name"] for p in made.manifest.updatable] == ["head.weight", "head.bias"] + [
        TRAINABLE_PREFIX + name for name in layers
    ]
    # Made updatable, the package answers what the model answers, to round-off.
    session = onnx.load(str(m.made / MODEL_FILE))
    from mlpersonalize import _ort

    ours = _ort.inference_session(session.SerializeToString()).run(["probabilities"], {"input": m.old_input})[
        0
    ]
    theirs = _ort.inference_session(m.model.SerializeToString()).run(None, {"input": m.old_input})[0]
    if arch == "nhwc":  # no Softmax in this model: compare its logits' softmax
        theirs = np.exp(theirs - theirs.max(1, keepdims=True))
        theirs /= theirs.sum(1, keepdims=True)
    assert np.allclose(ours, theirs, atol=1e-4)

    floor_keep, floor_new = BRANCH_FLOORS[arch]
    print(f"{arch} branch: old predictions kept {m.retention:.3f}, new labels right {m.learned:.3f}")
    assert m.update.history["guard"]["passed"]
    assert m.retention >= floor_keep and m.learned >= floor_new, (arch, m.retention, m.learned)
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(m.made / HEAD_FILE)).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(m.out / HEAD_FILE)).graph.initializer}
    for name in layers:  # the branch trained; the brought layers and rows did not move
        assert not np.array_equal(after[TRAINABLE_PREFIX + name], before[TRAINABLE_PREFIX + name])
    brought = [name for name in before if name.startswith(FROZEN_PREFIX) or "frozen" in name]
    assert brought and all(np.array_equal(after[name], before[name]) for name in brought)


def test_a_layer_inside_a_residual_block_cuts_at_the_block_input(tmp_path: Path) -> None:
    """The skip path joins after conv7: training conv7 must start the branch where the skip starts."""
    from mlpersonalize import byo_graph

    model = bm.build("resnet")
    head = byo_graph.find_head(model, ("conv7.weight",))
    branch = byo_graph.find_branch(model, head, ("conv7.weight",))
    assert branch is not None and branch.params == ("conv7.weight",)
    stem = next(node.output[0] for node in model.graph.node if node.op_type == "Relu")  # the block's input
    assert branch.cut == stem
    ops = [model.graph.node[i].op_type for i in branch.nodes]
    assert ops == ["Conv", "BatchNormalization", "Relu", "Conv", "BatchNormalization", "Add", "Relu",
                   "GlobalAveragePool", "Flatten"]  # fmt: skip
    assert byo_graph.find_branch(model, head, ("fc.weight",)) is None  # the last layer: no branch


def test_branch_refusals_name_the_problem(tmp_path: Path) -> None:
    model = bm.build("mlp")
    shape = numpy_helper.from_array(np.array([-1, 128], np.int64), "unused.shape")
    model.graph.initializer.append(shape)
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "unused.weight"))
    path = _save(model, tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="unused.shape: not a float32 weight"):
        make_updatable(path, tmp_path / "p", ByoOptions(trainable=("unused.shape",)))
    with pytest.raises(UsageError, match="unused.weight: not used to compute .* candidates: fc.bias"):
        make_updatable(path, tmp_path / "p", ByoOptions(trainable=("unused.weight",)))
    assert not (tmp_path / "p").exists()


@pytest.mark.slow  # 10 s (make test-all)
def test_branch_package_updates_twice_and_keeps_earlier_labels(tmp_path: Path) -> None:
    """The second update starts from the branch the first one trained and keeps its label."""
    made = make_updatable(
        _save(bm.build("mobilenet"), tmp_path / "m.onnx"),
        tmp_path / "p0",
        ByoOptions(trainable=bm.BRANCH["mobilenet"]),
    ).path
    current = made
    for step, k in enumerate(bm.NEW):
        pixels, ids = bm.gratings([k], 5, 3, seed=20 + step)
        batch = Batch.from_pixels(pixels, tuple(f"new{i}" for i in ids), load_package(current).manifest)
        save_batch(tmp_path / f"b{step}.npz", batch, force=True)
        options = updater.UpdateOptions(model=current, output=tmp_path / f"p{step + 1}")
        assert updater.update([tmp_path / f"b{step}.npz"], options).history["guard"]["passed"]
        current = tmp_path / f"p{step + 1}"
    package = load_package(current)
    assert package.manifest.labels[4:] == ("new4", "new5") and package.manifest.head_kind == "branch"
    old, _ = bm.gratings(bm.OLD, 30, 3, seed=99)
    new, new_ids = bm.gratings(bm.NEW, 30, 3, seed=98)
    kept = bm.predict(str(current / MODEL_FILE), old, "nchw", "probabilities") == bm.predict(
        bm.build("mobilenet"), old, "nchw"
    )
    assert np.mean(kept) >= 0.95
    after = bm.predict(str(current / MODEL_FILE), new, "nchw", "probabilities")
    right = np.array([package.manifest.labels[p] == f"new{k}" for p, k in zip(after, new_ids, strict=True)])
    assert right[new_ids == 4].mean() >= 0.7 and right[new_ids == 5].mean() >= 0.7
    # The stored artifacts train what the manifest lists, and nothing else.
    from mlpersonalize import _ort

    state = _ort.training_api().CheckpointState.load_checkpoint(str(package.file("training/checkpoint")))
    listed = {p["name"]: p["shape"] for p in package.manifest.updatable}
    assert listed == {name: list(p.data.shape) for name, p in state.parameters if p.requires_grad}


def test_branch_of_a_model_exported_with_batch_one_answers_batches(tmp_path: Path) -> None:
    """Reshape([1, -1]) inside the branch would fold the batch; it is made to copy dim 0."""
    from mlpersonalize import _ort

    model = bm.build("resnet")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    for node in model.graph.node:
        if node.op_type == "Flatten":  # as torch.onnx exports x.view(1, -1)
            node.op_type = "Reshape"
            del node.attribute[:]
            node.input.append("batch_one")
    model.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "batch_one"))
    made = make_updatable(
        _save(model, tmp_path / "m.onnx"), tmp_path / "p", ByoOptions(trainable=("conv7.weight",))
    )
    x = bm.to_input(bm.gratings(bm.OLD, 3, 1, seed=5)[0])
    ours = _ort.inference_session(str(made.path / MODEL_FILE)).run(["probabilities"], {"input": x})[0]
    theirs = _ort.inference_session(model.SerializeToString())
    one_by_one = np.concatenate([theirs.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    assert ours.shape == (12, 4) and np.allclose(ours, one_by_one, atol=1e-4)

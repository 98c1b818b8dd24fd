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

from mlpersonalize import _ort, byo, margin_gate, updater
from mlpersonalize.batch import Batch, save_batch
from mlpersonalize.byo import ByoOptions, make_updatable
from mlpersonalize.embedding import embed
from mlpersonalize.errors import InputError, ModelError, UsageError
from mlpersonalize.heads.linear import read_weight
from mlpersonalize.manifest import BACKBONE_FILE, HEAD_FILE, MODEL_FILE, gate_columns, gate_thresholds
from mlpersonalize.package import load_package

# Measured retention (share of held-out old-class predictions unchanged) and new-label accuracy
# with the defaults (docs/bring-your-own-model.md): 1.000/0.92, 0.992/0.88, 1.000/0.60, 1.000/0.75
# with this batch. Over five batch seeds (tests/byo_models.py) the worst are 0.925 kept (MLP) and
# 0.53 new (MLP); the floors hold the goal of 0.95 kept here and leave room for round-off.
# (old predictions kept, new labels right). Added rows win only inside a small ball around their
# examples (heads/linear.py), which keeps every old prediction on these nets and costs the new
# labels: measured 0.533 / 0.300 / 0.467 / 0.117 (nhwc: its gratings' features are spread wide).
FLOORS = {"mobilenet": (0.95, 0.45), "resnet": (0.95, 0.25), "mlp": (0.95, 0.4), "nhwc": (0.99, 0.1)}


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
    last = -1 - margin_gate.DISTANCE_COLUMNS  # the distance features follow the rungs
    gates = head[4:, last - len(thresholds) : last]
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


def test_a_new_package_sets_aside_every_gate_column_a_reader_counts(tmp_path: Path) -> None:
    """The head make-updatable writes keeps the gate's rungs AND the distance features out of what
    trains (head.weight_gate), the same count LinearHead.read gives the package; it had left the
    distance features among the trainable weights."""
    from mlpersonalize.heads.linear import GATE_WEIGHT, WEIGHT

    made = make_updatable(_save(bm.build("mlp"), tmp_path / "m.onnx"), tmp_path / "pkg")
    manifest = load_package(made.path).manifest
    inits = {i.name: i for i in onnx.load(str(made.path / HEAD_FILE)).graph.initializer}
    gate = gate_columns(manifest.training)
    assert gate == len(margin_gate.LADDER) + margin_gate.DISTANCE_COLUMNS
    assert inits[GATE_WEIGHT].dims[1] == gate
    assert inits[WEIGHT].dims[1] == manifest.embedding_dim - gate


def test_gate_features_are_the_brought_heads_margin_over_each_threshold(tmp_path: Path) -> None:
    made = make_updatable(_save(bm.build("mlp"), tmp_path / "m.onnx"), tmp_path / "pkg")
    thresholds = np.array(made.head["gate"]["thresholds"], np.float32)
    assert len(thresholds) == len(margin_gate.LADDER) and np.all(np.diff(thresholds) > 0)
    package = load_package(made.path)
    j = len(thresholds)
    assert package.manifest.embedding_dim == 128 + j + margin_gate.DISTANCE_COLUMNS
    pixels, _ = bm.gratings(bm.OLD + bm.NEW, 4, 1, seed=5, jitter=0.3)
    emb = embed(made.path / BACKBONE_FILE, pixels, package.manifest.constraint)
    weight = read_weight(onnx.load(str(made.path / HEAD_FILE)))
    assert not weight[:, 128:-1].any()  # the brought rows ignore the gate
    margin = margin_gate.margins(emb[:, :128], weight[:, :128], weight[:, -1])
    np.testing.assert_allclose(emb[:, 128 : 128 + j], np.maximum(margin[:, None] - thresholds, 0), atol=1e-4)
    # then the distance features: the brought head's best logit and the embedding's squared length
    best = (emb[:, :128] @ weight[:, :128].T + weight[:, -1]).max(axis=1)
    np.testing.assert_allclose(emb[:, -2], best, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(emb[:, -1], (emb[:, :128].astype(np.float64) ** 2).sum(axis=1), rtol=1e-4)


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


def test_labels_added_one_update_at_a_time_keep_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later update re-gates only the labels it teaches; earlier ones keep their rung."""
    from mlpersonalize.heads import linear

    # On this random-weight net new4's drawings lie farther from their mean than class_2's inputs
    # do, and the default ball (scaled to the examples' squared length) takes none of them; a
    # wider one, so that both rows answer something and the test can tell them apart.
    monkeypatch.setattr(linear, "RADIUS", 0.3)
    made = make_updatable(_save(bm.build("mlp"), tmp_path / "m.onnx"), tmp_path / "p0").path
    current = made
    for step, k in enumerate(bm.NEW):
        pixels, ids = bm.gratings([k], 5, 1, seed=20 + step, jitter=0.3)
        batch = Batch.from_pixels(pixels, tuple(f"new{i}" for i in ids), load_package(current).manifest)
        save_batch(tmp_path / f"b{step}.npz", batch, force=True)
        # forced: on this net new4 takes inputs of class_2, and the guard refuses (its stand-ins)
        options = updater.UpdateOptions(model=current, output=tmp_path / f"p{step + 1}", force=True)
        updater.update([tmp_path / f"b{step}.npz"], options)
        current = tmp_path / f"p{step + 1}"
    old, _ = bm.gratings(bm.OLD, 30, 1, seed=99, jitter=0.3)
    new, _ = bm.gratings(bm.NEW, 30, 1, seed=98, jitter=0.3)
    pixels = np.concatenate([old, new])
    first = bm.predict(str(tmp_path / "p1" / MODEL_FILE), pixels, "nchw", "probabilities")
    second = bm.predict(str(current / MODEL_FILE), pixels, "nchw", "probabilities")
    labels = load_package(current).manifest.labels
    # The second update changes answers only to its own label: the first one's row is as it was.
    assert np.all((first == second) | (second == labels.index("new5")))
    rows = [read_weight(onnx.load(str(tmp_path / p / HEAD_FILE))) for p in ("p1", "p2")]
    assert np.array_equal(rows[0], rows[1][:-1])
    assert labels.index("new4") in second and labels.index("new5") in second


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
    updater.update(
        [tmp_path / "b.npz"], updater.UpdateOptions(model=made, output=tmp_path / "p1", force=True)
    )
    package = load_package(tmp_path / "p1")
    manifest = package.manifest
    gate = gate_columns(manifest.training)
    dim = manifest.embedding_dim
    assert gate > margin_gate.DISTANCE_COLUMNS
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
# A branch with a trainable convolution needs the ort engine (the portable one says so: README).
CONV_NEEDS_ORT = pytest.mark.skipif(
    not _ort.has_training(), reason="a trainable convolution needs the ort engine (onnxruntime-training-cpu)"
)


@pytest.mark.slow  # 33 s for the four (make test-all); test_heads.py runs the branch kind in 3 s
@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=() if a == "mlp" else CONV_NEEDS_ORT) for a in bm.ARCHS]
)
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
@CONV_NEEDS_ORT  # mobilenet's branch
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
        # forced: on this net new4 takes inputs of class_2, and the guard refuses (its stand-ins)
        options = updater.UpdateOptions(model=current, output=tmp_path / f"p{step + 1}", force=True)
        updater.update([tmp_path / f"b{step}.npz"], options)
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


def test_which_model_answers_after_updating_an_original(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`update --model PKG` says how to name the copy; `predict`/`inspect --model PKG` use PKG as
    given and say on stderr that its personalized copy answers with `--model NAME`."""
    from clirun import main_cli
    from PIL import Image

    pkg = tmp_path / "pkg"
    make_updatable(_save(bm.build("mlp"), tmp_path / "m.onnx"), pkg)
    pixels, ids = bm.gratings([bm.NEW[0]], 4, 1, seed=3, jitter=0.3)
    (tmp_path / "data" / "new4").mkdir(parents=True)
    for i, img in enumerate(pixels):
        Image.fromarray(img[:, :, 0]).save(tmp_path / "data" / "new4" / f"{i}.png")
    batch = tmp_path / "b.npz"
    assert (
        main_cli(["prepare", str(tmp_path / "data"), "-o", str(batch), "--model", str(pkg)], capsys)[0] == 0
    )
    code, _, err = main_cli(["predict", str(tmp_path / "data"), "--model", str(pkg)], capsys)
    assert code == 0 and "note:" not in err  # no copy yet: nothing to say
    assert main_cli(["update", str(batch), "--model", str(pkg), "--force"], capsys)[0] == 0
    assert byo.update_hint(pkg, tmp_path / "home" / "models" / "m" / "versions" / "v1", "v1") == (
        "; use it with --model m"
    )
    assert byo.update_hint(None, tmp_path / "x", "v1") == ""  # the copy is what commands use anyway

    def labels(command: list[str], out: str) -> set[str]:
        if command[0] == "inspect":
            return set(json.loads(out)["labels"])
        return {label["label"] for line in out.splitlines() for label in json.loads(line)["top"]}

    for command in (["predict", str(tmp_path / "data")], ["inspect"]):
        code, out, err = main_cli([*command, "--model", str(pkg), "--json", "--verbose"], capsys)
        assert code == 0 and f"note: {pkg} is the original" in err and "--model m" in err, err
        assert (
            "note:" not in main_cli([*command, "--model", str(pkg), "--json"], capsys)[2]
        )  # quiet off a terminal
        assert "new4" not in labels(command, out)
        code, out, err = main_cli([*command, "--model", "m", "--json"], capsys)
        assert code == 0 and "note:" not in err and "new4" in labels(command, out)


def _examples_dir(folder: Path, ks: list[int], per_label: int, seed: int, prefix: str) -> Path:
    from PIL import Image

    pixels, ids = bm.gratings(ks, per_label, 1, seed=seed, jitter=0.3)
    for i, (img, k) in enumerate(zip(pixels, ids, strict=True)):
        (folder / f"{prefix}{k}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[:, :, 0]).save(folder / f"{prefix}{k}" / f"{i}.png")
    return folder


def _update_new_label(pkg: Path, tmp_path: Path) -> updater.UpdateResult:
    tmp_path.mkdir(parents=True, exist_ok=True)
    pixels, ids = bm.gratings(bm.NEW, 5, 1, seed=7, jitter=0.3)  # the batch test_heads.py uses
    batch = Batch.from_pixels(pixels, tuple(f"new{i}" for i in ids), load_package(pkg).manifest)
    save_batch(tmp_path / "b.npz", batch, force=True)
    return updater.update([tmp_path / "b.npz"], updater.UpdateOptions(model=pkg, output=tmp_path / "out"))


def test_make_updatable_examples_seed_the_exemplar_memory(tmp_path: Path) -> None:
    folder = _examples_dir(tmp_path / "ex", bm.OLD, 3, seed=5, prefix="class_")
    made = make_updatable(
        _save(bm.build("mlp"), tmp_path / "m.onnx"), tmp_path / "p", ByoOptions(examples=folder)
    )
    package = load_package(made.path)
    emb, idx = package.exemplars()
    assert sorted(np.bincount(idx).tolist()) == [3, 3, 3, 3] and made.head["examples"] == {
        f"class_{k}": 3 for k in bm.OLD
    }
    pixels, ids = bm.gratings(bm.OLD, 3, 1, seed=5, jitter=0.3)  # the same drawings (stored as float16)
    order = np.argsort(ids, kind="stable")
    np.testing.assert_allclose(
        np.sort(emb, axis=0),
        np.sort(embed(made.path / BACKBONE_FILE, pixels[order], package.manifest.constraint), axis=0),
        rtol=5e-3,
        atol=5e-3,
    )
    with pytest.raises(UsageError, match="'zebra0' is not one of the model's labels"):
        make_updatable(
            _save(bm.build("mlp"), tmp_path / "m.onnx"),
            tmp_path / "q",
            ByoOptions(examples=_examples_dir(tmp_path / "bad", [0], 1, 1, "zebra")),
        )


def test_guard_refuses_an_update_that_takes_the_brought_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows that would win everywhere (a ball as large as the space) are refused: judged on the
    exemplars when there are some, else on the model's own answers for its stand-ins."""
    from mlpersonalize.errors import RejectedError
    from mlpersonalize.heads import linear

    folder = _examples_dir(tmp_path / "ex", bm.OLD, 3, seed=5, prefix="class_")
    plain = make_updatable(_save(bm.build("mlp"), tmp_path / "m.onnx"), tmp_path / "p0").path
    seeded = make_updatable(tmp_path / "m.onnx", tmp_path / "p1", ByoOptions(examples=folder)).path
    assert _update_new_label(plain, tmp_path / "ok").history["guard"]["passed"]
    for name in ("RADIUS", "LOO_CAP", "SHRINK", "STAND_IN_SHRINK"):
        monkeypatch.setattr(linear, name, 1e6)
    with pytest.raises(RejectedError, match="stand-in inputs"):
        _update_new_label(plain, tmp_path / "a")
    with pytest.raises(RejectedError, match="accuracy would fall"):
        _update_new_label(seeded, tmp_path / "b")


def test_brought_guard_needs_more_than_one_example_of_evidence() -> None:
    """Judged on 8 known examples, losing one (12.5 points) is no evidence of a 2-point fall;
    losing two is refused; without known examples the stand-ins decide."""
    from mlpersonalize.heads import FitResult
    from mlpersonalize.update_algorithm import brought_reason

    idx = np.arange(8) % 4

    class Head:
        def __init__(self, lost: int) -> None:
            self.lost = lost

        def predict(self, emb: np.ndarray, result: FitResult | None = None) -> np.ndarray:
            out = idx[: len(emb)].copy()
            if result is not None:
                out[: self.lost] = 9
            return out

        def stand_in_embeddings(self) -> np.ndarray:
            return np.zeros((50, 3), np.float32)

    result = FitResult(np.zeros((1, 1), np.float32))
    emb = np.zeros((8, 3), np.float32)
    assert brought_reason(Head(1), result, result, emb, idx, 0.02) == ""  # type: ignore[arg-type]
    assert "2 of 8 examples" in brought_reason(Head(2), result, result, emb, idx, 0.02)  # type: ignore[arg-type]
    none = np.zeros(0, np.int64)
    assert "stand-in" in brought_reason(Head(2), result, result, emb[:0], none, 0.02)  # type: ignore[arg-type]


def test_distance_rows_ball_scale_cap_stops_and_confidence() -> None:
    """An added row beats the brought head's best logit inside a ball whose squared radius is
    RADIUS x the new examples' median squared length, capped by LOO_CAP x their leave-one-out
    spread, stopped before all but STAND_IN_SHARE of the stand-ins, and it gives way by
    CONFIDENCE ball-widths per standard deviation the brought head is surer than of them."""
    from mlpersonalize.heads import linear

    rng = np.random.default_rng(0)
    dim = 8
    centre = np.zeros(dim)
    centre[0] = 10.0
    emb = (centre + rng.normal(0, 1.0, (6, dim))).astype(np.float32)  # two labels, 3 examples each
    emb[3:, 1] += 4.0
    idx = np.array([5, 5, 5, 6, 6, 6])
    none = np.zeros((0, dim), np.float32)

    def score(rows: dict, e: np.ndarray, best: float, row: int) -> float:
        """The row's logit minus the brought head's best logit ``best``."""
        core, distance = rows[row]
        return float(core[:-1] @ e + core[-1] + distance[0] * best + distance[1] * (e @ e) - best)

    rows = linear.distance_rows(emb, idx, [5, 6], none, dim)
    mean = emb[:3].astype(np.float64).mean(axis=0)
    r2 = linear.RADIUS * float(np.median((emb.astype(np.float64) ** 2).sum(axis=1)))
    step = np.zeros(dim)
    step[2] = 1.0
    assert score(rows, mean, 0.0, 5) == pytest.approx(linear.SHARPNESS, rel=1e-3)
    assert score(rows, mean + 0.99 * np.sqrt(r2) * step, 0.0, 5) > 0  # inside the ball
    assert score(rows, mean + 1.01 * np.sqrt(r2) * step, 0.0, 5) < 0  # outside it

    # the same examples far from the origin: the ball is capped by their leave-one-out spread
    far = emb + np.float32(100.0)
    rows = linear.distance_rows(far, idx, [5, 6], none, dim)
    members = [far[idx == k].astype(np.float64) for k in (5, 6)]
    loo = [((m[i] - np.delete(m, i, axis=0).mean(axis=0)) ** 2).sum() for m in members for i in range(3)]
    capped = linear.LOO_CAP * float(np.median(loo))
    at = far[:3].astype(np.float64).mean(axis=0)
    assert score(rows, at + 0.99 * np.sqrt(capped) * step, 0.0, 5) > 0
    assert score(rows, at + 1.01 * np.sqrt(capped) * step, 0.0, 5) < 0

    # stand-ins spread around the label's mean: its ball holds at most STAND_IN_SHARE of them
    stand = (mean + rng.normal(0, 0.3 * np.sqrt(r2), (400, dim))).astype(np.float32)
    rows = linear.distance_rows(emb, idx, [5, 6], none, dim, stand_ins=stand)
    inside = np.mean([score(rows, s.astype(np.float64), 0.0, 5) > 0 for s in stand])
    assert 0 < inside <= linear.STAND_IN_SHARE

    # the confidence term: at its mean a row leads by SHARPNESS where the brought head is as sure
    # as of the new examples (their median best logit), and gives way where it is much surer
    best = np.array([1.0, 2.0, 3.0, 1.5, 2.5, 2.0], np.float32)
    rows = linear.distance_rows(emb, idx, [5, 6], none, dim, best)
    median, sd = float(np.median(best)), float(np.std(best))
    assert score(rows, mean, median, 5) == pytest.approx(linear.SHARPNESS, rel=1e-3)
    surer = median + sd / linear.CONFIDENCE * 1.01  # more than one ball-width's worth
    assert score(rows, mean, surer, 5) < 0 < score(rows, mean, median + sd, 5)


def test_distance_rows_with_the_own_distance_feature() -> None:
    """With the squared distance ``o`` to the nearest example of the brought labels (make-updatable
    --examples), an added row wins where the squared distance to its mean is below OWN_SHARE x o,
    not on one of those examples (o = 0) unless the brought head is much less sure of it, and
    gives way by OWN_CONFIDENCE ball-widths per standard deviation the brought head is surer than
    of the new examples."""
    from mlpersonalize import margin_gate
    from mlpersonalize.heads import linear

    rng = np.random.default_rng(0)
    dim = 8
    emb = rng.normal(0, 1.0, (6, dim)).astype(np.float32)
    emb[:, 0] += 10.0
    emb[3:, 1] += 4.0
    idx = np.array([5, 5, 5, 6, 6, 6])
    own = (rng.normal(0, 1.0, (10, dim)) - np.eye(dim)[0] * 10.0).astype(np.float32)  # far side
    best = np.array([1.0, 2.0, 3.0, 1.5, 2.5, 2.0], np.float32)
    rows = linear.distance_rows(emb, idx, [5, 6], own, dim, best, own=True)
    median, sd = float(np.median(best)), float(np.std(best))

    def score(e: np.ndarray, brought_best: float, row: int = 5) -> float:
        core, distance = rows[row]
        assert len(distance) == 3
        o = float(margin_gate.own_distance(e[None], own)[0])
        features = (brought_best, float(e @ e), o)
        return float(core[:-1] @ e + core[-1] + np.dot(distance, features) - brought_best)

    mean = emb[:3].astype(np.float64).mean(axis=0)
    assert score(mean, median) > 0  # at its mean, far from the own examples
    for example in own.astype(np.float64):  # never on an example of the brought labels
        assert score(example, median) < 0 and score(example, median - 10 * sd) < 0
    # on the way from its mean to the nearest own example the row wins up to a point, then no more
    target = own[np.argmin(((own - mean) ** 2).sum(axis=1))].astype(np.float64)
    path = [score(mean + t * (target - mean), median) > 0 for t in np.linspace(0, 1, 101)]
    assert path[0] and not path[-1] and path == sorted(path, reverse=True)
    # the confidence term: a brought head much surer than of the new examples takes the input back
    assert score(mean, median + 100 * sd) < 0 < score(mean, median)


def test_own_distance_rows_stop_before_known_examples_the_feature_lacks() -> None:
    """Old labels in a later batch (or labels of earlier updates) are not in the own-distance
    feature: a row's share is lowered so that such a known example lies at most OWN_STOP of the
    way into its region, and is not won."""
    from mlpersonalize import margin_gate
    from mlpersonalize.heads import linear

    rng = np.random.default_rng(1)
    dim = 8
    emb = rng.normal(0, 1.0, (3, dim)).astype(np.float32)
    emb[:, 0] += 10.0
    idx = np.array([5, 5, 5])
    own = (rng.normal(0, 1.0, (10, dim)) - np.eye(dim)[0] * 10.0).astype(np.float32)
    mean = emb.astype(np.float64).mean(axis=0)
    stranger = (mean + np.eye(dim)[1] * 2.0).astype(np.float32)  # near the new mean, not in ``own``
    o = margin_gate.own_distance(stranger[None], own)
    free = linear.distance_rows(emb, idx, [5], stranger[None], dim, own=True)
    stopped = linear.distance_rows(emb, idx, [5], stranger[None], dim, own=True, own_known=(o, np.zeros(1)))

    def lead(rows: dict, e: np.ndarray) -> float:
        core, distance = rows[5]
        features = (0.0, float(e @ e), float(margin_gate.own_distance(e[None], own)[0]))
        return float(core[:-1] @ e + core[-1] + np.dot(distance, features))

    assert lead(free, stranger.astype(np.float64)) > 0  # without the stop the row takes it
    assert lead(stopped, stranger.astype(np.float64)) < 0 < lead(stopped, mean)
    assert stopped[5][1][2] < free[5][1][2]  # by a lower share, same ball
    held = linear.distance_rows(emb, idx, [5], own[:1], dim, own=True, own_known=(np.zeros(1), np.zeros(1)))
    assert np.array_equal(held[5][1], free[5][1])  # an example the feature holds stops nothing


# --- the branch kind's guard without old data (heads/branch.py, own_labels_reason) ----------

# Measured in-process (batch seeds 7-11, the layers of BRANCH): these updates kept 99.2-100% of the
# original predictions but their added rows answered 11-36% of the scrambled probes, which alone
# refused them; the brought model's answers on the inputs it is surest of changed on 5-23%.
GOOD_BUT_PROBED = [
    pytest.param("mobilenet", 10, marks=pytest.mark.skipif(not _ort.has_training(), reason="needs ort")),
    pytest.param("resnet", 8, marks=[pytest.mark.slow, CONV_NEEDS_ORT]),
    pytest.param("resnet", 9, marks=[pytest.mark.slow, CONV_NEEDS_ORT]),
]


@pytest.mark.parametrize(("arch", "batch_seed"), GOOD_BUT_PROBED)
def test_branch_update_that_keeps_the_model_s_answers_is_not_refused(
    arch: str, batch_seed: int, tmp_path: Path
) -> None:
    """The scrambled probes answered by added labels are no refusal while the brought model's
    answers on the inputs it is surest of stay (``surest_changed``)."""
    m = bm.measure(arch, tmp_path, 0, batch_seed, trainable=bm.BRANCH[arch])
    assert m.update.history["guard"]["passed"], m.update.history["guard"]["reason"]
    assert m.retention >= 0.99, m.retention


def test_surest_changed_judges_each_label_s_widest_margins() -> None:
    """Per brought label the SUREST inputs it answers with the widest margin; a changed answer
    elsewhere (a narrow margin, or an input of an added label) does not count."""
    from mlpersonalize.heads.branch import SUREST, surest_changed

    n = 2 * SUREST + 20
    before = np.zeros((n, 3), np.float32)
    before[:SUREST, 0] = 10.0  # label 0, sure
    before[SUREST : 2 * SUREST, 1] = 10.0  # label 1, sure
    before[2 * SUREST :, 0] = 0.5  # label 0, barely
    before[:, 2] = 99.0  # an added row's logit is not the brought model's answer
    answers = np.concatenate([np.zeros(SUREST), np.ones(SUREST), np.zeros(20)]).astype(np.int64)
    assert surest_changed(before, answers, 2) == 0.0
    answers[2 * SUREST :] = 2  # the narrow-margin inputs change: not among the surest
    assert surest_changed(before, answers, 2) == 0.0
    answers[: SUREST // 2] = 2  # half of label 0's surest change
    assert surest_changed(before, answers, 2) == pytest.approx(0.25)

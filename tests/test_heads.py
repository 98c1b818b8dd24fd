"""Head kinds behind one interface: the registry, the margin gate, the linear and branch kinds.

The kinds run here through their interface (grow and train through an engine, predict, the
stored head's graph) on small brought models from byo_models.py: a 4-label MLP, made updatable
as a "linear" head and, with its hidden layer trainable, as a "branch" head.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import byo_models as bm
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mlpersonalize import _ort, engines, margin_gate
from mlpersonalize.byo import ByoOptions, make_updatable
from mlpersonalize.embedding import embed
from mlpersonalize.errors import ModelError
from mlpersonalize.heads import KINDS, StoredHead, kind_named, kind_of, linear
from mlpersonalize.heads import branch as branch_kind
from mlpersonalize.heads.branch import BranchHead
from mlpersonalize.heads.cosine import CosineHead
from mlpersonalize.heads.linear import LinearHead
from mlpersonalize.manifest import BACKBONE_FILE
from mlpersonalize.package import ModelPackage, load_package
from mlpersonalize.params import UpdateParams

LABELS = tuple(f"class_{i}" for i in bm.OLD) + ("new4", "new5")


def _made(folder: Path, trainable: tuple[str, ...] = ()) -> ModelPackage:
    onnx.save(bm.build("mlp"), folder / "m.onnx")
    return load_package(
        make_updatable(folder / "m.onnx", folder / "pkg", ByoOptions(trainable=trainable)).path
    )


@pytest.fixture(scope="module")
def linear_package(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    return _made(tmp_path_factory.mktemp("linear"))


@pytest.fixture(scope="module")
def branch_package(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    return _made(tmp_path_factory.mktemp("branch"), bm.BRANCH["mlp"])


def _embed(
    package: ModelPackage, classes: list[int], per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    pixels, ids = bm.gratings(classes, per_class, 1, seed=seed, jitter=0.3)
    return embed(package.path / BACKBONE_FILE, pixels, package.manifest.constraint), ids


def _head_logits(stored: StoredHead, kind: type, emb: np.ndarray) -> np.ndarray:
    session = _ort.inference_session(kind.graph(stored).SerializeToString())
    return session.run(["logits"], {"embedding": np.ascontiguousarray(emb, np.float32)})[0]


# --- the registry ------------------------------------------------------------------------------


def test_registry_maps_every_manifest_kind_to_its_class(linear_package: ModelPackage) -> None:
    assert {name: kind_named(name) for name in KINDS} == {
        "cosine": CosineHead,
        "linear": LinearHead,
        "branch": BranchHead,
    }
    assert all(kind_named(name).kind == name for name in KINDS)
    assert kind_of(linear_package.manifest) is LinearHead
    with pytest.raises(ModelError, match="m.json: head.kind 'conv' is not one of cosine, linear, branch"):
        kind_named("conv", "m.json")
    # A kind checks what it needs of a manifest: a branch head without its branch record is refused.
    bare = dataclasses.replace(linear_package.manifest, head_kind="branch")
    with pytest.raises(ModelError, match="a branch head needs training.brought.branch.features"):
        kind_of(bare, "m.json")


# --- the margin gate -----------------------------------------------------------------------------


def test_margin_is_best_minus_second_best_logit() -> None:
    weight = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    bias = np.array([0.0, 0.5, 0.0], np.float32)
    emb = np.array([[2.0, 0.0], [0.0, 0.0]], np.float32)  # logits (2, .5, -2) and (0, .5, 0)
    np.testing.assert_allclose(margin_gate.margins(emb, weight, bias), [1.5, 0.5])


def test_ladder_scales_with_the_heads_margin_on_noise() -> None:
    weight = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    noise = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]], np.float32)  # margins 1, 3, 2: median 2
    steps = margin_gate.ladder(noise, weight, np.zeros(2, np.float32))
    np.testing.assert_allclose(steps, [2.0 * s for s in margin_gate.LADDER], rtol=1e-6)
    assert margin_gate.ladder(noise, weight[:1], np.zeros(1, np.float32)) == ()  # one label: no margin


def test_gate_graph_computes_relu_of_margin_minus_each_threshold() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, 4)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    thresholds = (0.25, 1.0, 2.0)
    nodes, inits = margin_gate.gate_parts("embedding", "logits", weight, bias, thresholds)
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            nodes,
            "gate",
            [onnx.helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["N", 4])],
            [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 3])],
            inits,
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    model.ir_version = 9
    emb = rng.standard_normal((20, 4)).astype(np.float32)
    out = _ort.inference_session(model.SerializeToString()).run(None, {"embedding": emb})[0]
    expected = np.maximum(margin_gate.margins(emb, weight, bias)[:, None] - np.array(thresholds), 0)
    np.testing.assert_allclose(out, expected, atol=1e-5)


# --- the linear kind -----------------------------------------------------------------------------


def test_standard_units_are_the_same_head() -> None:
    rng = np.random.default_rng(2)
    emb = (rng.standard_normal((30, 5)) * [1, 10, 100, 0.1, 5] + 3).astype(np.float32)
    aug = rng.standard_normal((4, 6)).astype(np.float32)
    centre, scale = linear.spread(emb)
    standard = linear.to_standard(aug, centre, scale)
    np.testing.assert_allclose(
        linear.logits((emb - centre) / scale, standard), linear.logits(emb, aug), rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(linear.from_standard(standard, centre, scale), aug, rtol=1e-4, atol=1e-4)


def test_linear_imprint_puts_a_new_row_one_logit_above_the_old_at_its_mean() -> None:
    rng = np.random.default_rng(3)
    old = linear.join(rng.standard_normal((3, 4)).astype(np.float32), np.zeros(3, np.float32))
    emb = rng.standard_normal((6, 4)).astype(np.float32) + 5
    rows = linear.imprint(emb, np.array([3] * 6), [3], old, rng.standard_normal((10, 4)).astype(np.float32))
    mean = emb.mean(axis=0, keepdims=True)
    assert linear.logits(mean, rows)[0, 0] == pytest.approx(linear.logits(mean, old).max() + 1.0, abs=1e-4)
    assert np.linalg.norm(rows[0, :-1]) == pytest.approx(
        float(np.median(np.linalg.norm(old[:, :-1], axis=1))), rel=1e-5
    )


def test_linear_kind_trains_only_added_rows_and_gates_them(linear_package: ModelPackage) -> None:
    params = UpdateParams(epochs=5, learning_rate=0.01, batch_size=16)
    head = LinearHead(linear_package, LABELS, params, engines.get(None))
    old_emb, old_ids = _embed(linear_package, bm.OLD, 10, seed=40)
    # Before an update the kind predicts what the brought model predicts.
    pixels, _ = bm.gratings(bm.OLD, 10, 1, seed=40, jitter=0.3)
    assert np.array_equal(head.predict(old_emb), bm.predict(bm.build("mlp"), pixels, "nchw"))
    new_emb, idx = _embed(linear_package, bm.NEW, 5, seed=7)  # the batch test_byo.py measures
    ex_emb, ex_idx = linear_package.exemplars()
    result = head.fit(new_emb, idx, [4, 5], head.rehearsal(ex_emb, ex_idx), (ex_emb, ex_idx), params)
    assert result.finite and len(result.losses) == 5
    frozen = linear_package.manifest.frozen_labels
    assert np.array_equal(result.weight[:frozen], head.old_weight)  # brought rows bit for bit
    gates = result.weight[frozen:, head.core : head.core + len(head.gate)]
    rung = np.flatnonzero(gates[0])  # both added rows, taught together, share one rung
    assert (
        len(rung) == 1
        and np.all(gates[:, rung[0]] == -margin_gate.STEEPNESS)
        and np.count_nonzero(gates) == 2
    )
    # ... and score the brought head's best logit minus their squared distance (heads/linear.py),
    # the best logit weighed below 1: they give way where the brought head is surer than of them
    distance = result.weight[frozen:, head.core + len(head.gate) : -1]
    assert np.all(distance[:, 0] == distance[0, 0]) and distance[0, 0] < 1 and np.all(distance[:, 1] < 0)
    # the new labels win on their examples, but for those the gate turns away (the brought model
    # is surer of them than the rung: measured 0.5 here, new4 looks like an old label to this net)
    assert np.mean(head.predict(new_emb, result) == idx) >= 0.45
    stored = head.stored(result)
    np.testing.assert_allclose(
        _head_logits(stored, LinearHead, new_emb), linear.logits(new_emb, result.weight), rtol=1e-4, atol=1e-3
    )
    # What the engine trains: the added row's own weights and bias, not the brought rows or the gate.
    graph = LinearHead.graph(stored)
    trained = {
        i.name: numpy_helper.to_array(i)
        for i in graph.graph.initializer
        if i.name in LinearHead.trainable(stored)
    }
    assert trained[linear.WEIGHT].shape == (2, head.core) and trained[linear.BIAS].shape == (2,)


# --- the branch kind -----------------------------------------------------------------------------


def test_branch_kind_trains_its_layers_for_added_rows_only(branch_package: ModelPackage) -> None:
    params = UpdateParams(epochs=3, learning_rate=0.01, batch_size=16)
    head = BranchHead(branch_package, LABELS, params, engines.get(None))
    stored_before = BranchHead.read(branch_package)
    width = stored_before.weight.shape[1] - 1
    assert branch_kind.fixed_columns(stored_before) == head.dim + len(head.gate)
    assert width == 2 * head.dim + len(head.gate)
    old_emb, _ = _embed(branch_package, bm.OLD, 10, seed=40)
    pixels, _ = bm.gratings(bm.OLD, 10, 1, seed=40, jitter=0.3)
    assert np.array_equal(head.predict(old_emb), bm.predict(bm.build("mlp"), pixels, "nchw"))
    new_emb, idx = _embed(branch_package, bm.NEW, 5, seed=7)
    ex_emb, ex_idx = branch_package.exemplars()
    result = head.fit(new_emb, idx, [4, 5], head.rehearsal(ex_emb, ex_idx), (ex_emb, ex_idx), params)
    assert result.finite and set(result.branch) == set(head.branch)
    assert any(not np.array_equal(result.branch[name], head.branch[name]) for name in head.branch)
    frozen = branch_package.manifest.frozen_labels
    assert np.array_equal(result.weight[:frozen], head.old_weight[:frozen])
    stored = head.stored(result)
    features = branch_kind.branch_params(stored.features)
    assert all(np.array_equal(features[name], result.branch[name]) for name in head.branch)
    brought = {
        i.name for i in stored.features.graph.initializer if i.name.startswith(branch_kind.FROZEN_PREFIX)
    }
    before = {
        i.name: numpy_helper.to_array(i) for i in head.features_graph.graph.initializer if i.name in brought
    }
    after = {i.name: numpy_helper.to_array(i) for i in stored.features.graph.initializer if i.name in brought}
    assert before.keys() == after.keys() and all(np.array_equal(before[n], after[n]) for n in before)
    # The stored head's graph answers what the kind predicts.
    logits = _head_logits(stored, BranchHead, new_emb)
    assert np.array_equal(np.argmax(logits, axis=1), head.predict(new_emb, result))

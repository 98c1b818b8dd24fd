"""The portable engine: one standard ONNX graph per training step, run by a stock onnxruntime.

It must train exactly as ONNX Runtime's on-device training does (same parameters to 1e-4 after
every step, same losses) on every head kind it supports, run where the training package is
absent, and refuse what it cannot differentiate with a message that says what would work.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from benchmarks.engines import OrtReference, bundled_data, ort_available
from mlpersonalize.classifier import head_model
from mlpersonalize.engines.portable import (
    PortableEngine,
    UnsupportedOpError,
    build_train_step,
)
from mlpersonalize.heads import StoredHead
from mlpersonalize.heads import linear as linear_head
from mlpersonalize.heads.cosine import WEIGHT, CosineHead, imprint
from mlpersonalize.params import UpdateParams


def build_head(weight: np.ndarray, scale: float) -> onnx.ModelProto:
    return CosineHead.graph(StoredHead(np.asarray(weight, np.float32), scale))


ROOT = Path(__file__).resolve().parents[1]
OLD = 43  # the bundled model's labels
needs_ort = pytest.mark.skipif(not ort_available(), reason="onnxruntime-training-cpu is not installed")

OPTIMIZERS = {
    "adamw": UpdateParams(),
    "adamw-decay": UpdateParams(learning_rate=0.01, weight_decay=0.05, beta1=0.8, beta2=0.99, eps=1e-6),
    "sgd": UpdateParams(optimizer="sgd", learning_rate=0.05),
}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bundled head's 43 rows and its exemplar memory (860 embeddings, 128-d)."""
    weight, emb, idx = bundled_data()
    return weight, emb.astype(np.float32), idx.astype(np.int64)


def _new_examples(emb: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Three new labels (rows 43-45) with three examples each, shifted off the old labels' ones."""
    rng = np.random.default_rng(1)
    new_emb = np.concatenate([emb[idx == k][:3] for k in range(3)])
    new_emb = new_emb + rng.normal(0, 0.3, new_emb.shape).astype(np.float32)
    return new_emb, np.repeat(np.arange(OLD, OLD + 3), 3)


def heads(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, tuple[onnx.ModelProto, list[str]]]:
    weight, emb, idx = data
    new_emb, new_idx = _new_examples(emb, idx)
    cosine = np.concatenate([weight, imprint(new_emb, new_idx, [OLD, OLD + 1, OLD + 2])])
    rng = np.random.default_rng(2)
    aug = np.concatenate([cosine * 3, rng.normal(0, 0.5, (len(cosine), 1)).astype(np.float32)], axis=1)
    return {
        "cosine": (build_head(cosine, 20.0), [WEIGHT]),
        "linear": (linear_head.build_head(aug, 0), [linear_head.WEIGHT, linear_head.BIAS]),
        "linear-frozen-gated": (
            linear_head.build_head(aug, OLD, gate_columns=2),
            [linear_head.WEIGHT, linear_head.BIAS],
        ),
    }


HEADS = ["cosine", "linear", "linear-frozen-gated"]


def _batches(data: tuple[np.ndarray, np.ndarray, np.ndarray], count: int = 20) -> list:
    _, emb, idx = data
    new_emb, new_idx = _new_examples(emb, idx)
    all_emb, all_idx = np.concatenate([emb, new_emb]), np.concatenate([idx, new_idx])
    rng = np.random.default_rng(3)
    picks = [rng.choice(len(all_idx), 16, replace=False) for _ in range(count - 1)]
    picks.append(rng.choice(len(all_idx), 5, replace=False))  # a short last batch
    return [(all_emb[p], all_idx[p]) for p in picks]


@needs_ort
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", HEADS)
def test_same_parameters_and_losses_as_ort_after_every_step(data, kind: str, optimizer: str) -> None:
    head, trainable = heads(data)[kind]
    params = OPTIMIZERS[optimizer]
    ort = OrtReference(head, trainable, params)
    portable = PortableEngine().open(head, trainable, params)
    try:
        for number, (x, y) in enumerate(_batches(data), 1):
            ort_loss, portable_loss = ort.step(x, y), portable.step(x, y)
            assert portable_loss == pytest.approx(ort_loss, abs=1e-4), f"step {number}"
            expected, got = ort.parameters(), portable.parameters()
            assert set(got) == set(trainable)
            for name in trainable:
                np.testing.assert_allclose(
                    got[name], expected[name], atol=1e-4, err_msg=f"{name} step {number}"
                )
    finally:
        ort.close()
        portable.close()


@needs_ort
def test_set_parameter_keeps_the_optimizer_state_as_ort_does(data) -> None:
    """The anchor between epochs overwrites rows mid-training; both engines carry on alike."""
    head, trainable = heads(data)["cosine"]
    params = OPTIMIZERS["adamw"]
    ort = OrtReference(head, trainable, params)
    portable = PortableEngine().open(head, trainable, params)
    batches = _batches(data, 12)
    for i, (x, y) in enumerate(batches):
        if i == 6:
            pulled = portable.parameters()[WEIGHT] * 0.5
            ort.set_parameter(WEIGHT, pulled)
            portable.set_parameter(WEIGHT, pulled)
        assert portable.step(x, y) == pytest.approx(ort.step(x, y), abs=1e-4)
    np.testing.assert_allclose(portable.parameters()[WEIGHT], ort.parameters()[WEIGHT], atol=1e-4)
    ort.close()


@needs_ort
@pytest.mark.parametrize("kind", ["cosine", "linear-frozen-gated"])
def test_an_update_s_epochs_end_with_the_same_head_and_predictions(data, kind: str) -> None:
    """Label-balanced epochs with the known rows pulled back after each (as HeadTrainer.fit does)."""
    from mlpersonalize.fitting import ANCHOR, balanced_order

    head, trainable = heads(data)[kind]
    _, emb, idx = data
    new_emb, new_idx = _new_examples(emb, idx)
    all_emb, all_idx = np.concatenate([emb, new_emb]), np.concatenate([idx, new_idx])
    params = UpdateParams()
    ort = OrtReference(head, trainable, params)
    portable = PortableEngine().open(head, trainable, params)
    start = portable.parameters()[trainable[0]]
    rng = np.random.default_rng(params.seed)
    try:
        for _ in range(3):
            order = balanced_order(all_idx, rng)
            for s in range(0, len(order), params.batch_size):
                batch = order[s : s + params.batch_size]
                assert portable.step(all_emb[batch], all_idx[batch]) == pytest.approx(
                    ort.step(all_emb[batch], all_idx[batch]), abs=1e-4
                )
            if kind == "cosine":
                pulled = portable.parameters()[WEIGHT]
                pulled[:OLD] = start[:OLD] + (1 - ANCHOR) * (pulled[:OLD] - start[:OLD])
                ort.set_parameter(WEIGHT, pulled)
                portable.set_parameter(WEIGHT, pulled)
        expected = ort.parameters()
        for name, value in portable.parameters().items():
            np.testing.assert_allclose(value, expected[name], atol=1e-4)
        ort_head = onnx.ModelProto()
        ort_head.CopyFrom(head)
        for init in ort_head.graph.initializer:
            if init.name in expected:
                init.CopyFrom(numpy_helper.from_array(expected[init.name], init.name))
        from mlpersonalize import _ort

        ort_logits = _ort.inference_session(ort_head.SerializeToString()).run(None, {"embedding": all_emb})[0]
        np.testing.assert_array_equal(portable.logits(all_emb).argmax(1), ort_logits.argmax(1))
    finally:
        ort.close()
        portable.close()


def _loss(head: onnx.ModelProto, trainable: str, value: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of ``head`` with ``trainable`` set to ``value``, in float64 numpy."""
    from onnx.reference import ReferenceEvaluator

    model = onnx.ModelProto()
    model.CopyFrom(head)
    for init in model.graph.initializer:
        if init.name == trainable:
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), trainable))
    logits = ReferenceEvaluator(model).run(None, {"embedding": x})[0].astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_prob = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_prob[np.arange(len(y)), y].mean())


@pytest.mark.parametrize("kind", HEADS)
def test_the_gradient_matches_finite_differences(data, kind: str) -> None:
    """SGD at rate 1 steps by exactly the gradient; it must be the loss's slope (no ORT needed)."""
    head, trainable = heads(data)[kind]
    x, y = _batches(data, 2)[0]
    session = PortableEngine().open(head, trainable, UpdateParams(optimizer="sgd", learning_rate=1.0))
    before = session.parameters()
    session.step(x, y)
    after = session.parameters()
    rng = np.random.default_rng(4)
    for name in trainable:
        gradient = before[name] - after[name]
        assert np.abs(gradient).max() > 0
        for _ in range(4):
            spot = tuple(int(rng.integers(0, n)) for n in before[name].shape)
            if kind != "cosine":  # trainable rows are the last ones: they carry the gradient
                spot = (before[name].shape[0] - 1 - spot[0] % 3, *spot[1:])
            h = 1e-2 * max(1.0, abs(float(before[name][spot])))
            up, down = before[name].copy(), before[name].copy()
            up[spot] += h
            down[spot] -= h
            slope = (_loss(head, name, up, x, y) - _loss(head, name, down, x, y)) / (2 * h)
            assert gradient[spot] == pytest.approx(slope, rel=2e-2, abs=2e-5), f"{name}{spot}"


def test_adamw_steps_as_onnx_runtime_defines_them() -> None:
    """Two AdamW steps on a tiny linear head against the update rule written out in numpy."""
    rng = np.random.default_rng(5)
    aug = rng.normal(size=(3, 5)).astype(np.float32)
    head = linear_head.build_head(aug, 0)
    params = UpdateParams(learning_rate=0.1, beta1=0.8, beta2=0.9, eps=1e-3, weight_decay=0.2)
    session = PortableEngine().open(head, [linear_head.WEIGHT, linear_head.BIAS], params)
    w, b = aug[:, :4].astype(np.float64), aug[:, 4].astype(np.float64)
    state = {"w": (np.zeros_like(w), np.zeros_like(w)), "b": (np.zeros_like(b), np.zeros_like(b))}
    for t in (1, 2):
        x = rng.normal(size=(6, 4)).astype(np.float32)
        y = rng.integers(0, 3, 6)
        logits = x @ w.T + b
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        dlogits = (prob - np.eye(3)[y]) / len(y)
        loss = float(-np.log(prob[np.arange(6), y]).mean())
        assert session.step(x, y) == pytest.approx(loss, abs=1e-5)
        new = {}
        for key, value, grad in (("w", w, dlogits.T @ x), ("b", b, dlogits.sum(0))):
            m, v = state[key]
            m = 0.8 * m + 0.2 * grad
            v = 0.9 * v + 0.1 * grad * grad
            state[key] = (m, v)
            stepped = value - 0.1 * np.sqrt(1 - 0.9**t) / (1 - 0.8**t) * m / (np.sqrt(v) + 1e-3)
            new[key] = stepped - 0.1 * 0.2 * stepped  # decay after the step (adam_mode 1)
        w, b = new["w"], new["b"]
        got = session.parameters()
        np.testing.assert_allclose(got[linear_head.WEIGHT], w, atol=1e-5)
        np.testing.assert_allclose(got[linear_head.BIAS], b, atol=1e-5)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", HEADS)
def test_the_step_graph_is_standard_onnx(data, kind: str, optimizer: str) -> None:
    head, trainable = heads(data)[kind]
    params = OPTIMIZERS[optimizer]
    step = build_train_step(head, trainable, params)
    onnx.checker.check_model(step, full_check=True)
    assert {n.domain for n in step.graph.node} <= {""}
    assert [o.domain for o in step.opset_import] == [""]
    names = [i.name for i in step.graph.input]
    state = [] if optimizer == "sgd" else [f"{n}.{m}" for n in trainable for m in ("exp_avg", "exp_avg_sq")]
    assert names == [*trainable, *state, *(["step"] if state else []), "learning_rate", "x", "y"]
    outputs = [o.name for o in step.graph.output]
    assert outputs == [f"{n}.next" for n in names[: len(names) - 3]] + ["loss"]


def test_logits_follow_the_trained_parameters(data) -> None:
    head, trainable = heads(data)["linear-frozen-gated"]
    session = PortableEngine().open(head, trainable, OPTIMIZERS["adamw"])
    x, y = _batches(data, 2)[0]
    before = session.logits(x)
    for _ in range(3):
        session.step(x, y)
    weight = linear_head.read_weight(head)
    trained = session.parameters()
    gate = weight[OLD:, -3:-1]  # the gate columns of added rows are constants of the graph
    added = linear_head.join(
        np.concatenate([trained[linear_head.WEIGHT], gate], axis=1), trained["head.bias"]
    )
    expected = linear_head.logits(x, np.concatenate([weight[:OLD], added]))
    np.testing.assert_allclose(session.logits(x), expected, rtol=1e-5, atol=1e-4)
    assert not np.allclose(session.logits(x), before)
    np.testing.assert_array_equal(session.logits(x)[:, :OLD], before[:, :OLD])  # frozen rows stay


def test_set_parameter_refuses_a_wrong_shape_or_name(data) -> None:
    head, trainable = heads(data)["cosine"]
    session = PortableEngine().open(head, trainable, OPTIMIZERS["sgd"])
    with pytest.raises(ValueError, match="does not match"):
        session.set_parameter(WEIGHT, np.zeros((2, 2), np.float32))
    with pytest.raises(KeyError):
        session.set_parameter("head.scale", np.zeros((), np.float32))


def test_an_op_without_a_gradient_is_refused_naming_it_and_the_ort_engine() -> None:
    rng = np.random.default_rng(6)
    nodes = [
        helper.make_node("Gemm", ["embedding", "w"], ["pre"], transB=1),
        helper.make_node("Tanh", ["pre"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "w")]
    head = head_model(nodes, inits, 4, 3)
    with pytest.raises(UnsupportedOpError, match=r"'Tanh'.*--engine ort.*onnxruntime-training-cpu"):
        build_train_step(head, ["w"], UpdateParams())


def test_a_trainable_the_logits_do_not_read_is_refused() -> None:
    head = build_head(np.eye(3, 4, dtype=np.float32), 10.0)
    head.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    with pytest.raises(UnsupportedOpError, match=r"does not depend on the trainable 'unused'.*--engine ort"):
        build_train_step(head, [WEIGHT, "unused"], UpdateParams())


def test_trains_where_the_training_package_is_absent(tmp_path: Path) -> None:
    """A fresh interpreter where ``onnxruntime.training`` cannot be imported still trains."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["onnxruntime.training"] = None  # as on a stock onnxruntime
        sys.modules["onnxruntime.training.ortmodule"] = None
        import numpy as np
        from mlpersonalize import _ort
        try:
            _ort.training_api()
        except ImportError:
            pass
        else:
            raise SystemExit("the training package was importable")
        from mlpersonalize.engines.portable import PortableEngine
        from mlpersonalize.heads import StoredHead
        from mlpersonalize.heads.cosine import CosineHead
        from mlpersonalize.params import UpdateParams
        rng = np.random.default_rng(0)
        x = rng.normal(size=(24, 8)).astype(np.float32)
        y = np.arange(24) % 3
        head = CosineHead.graph(StoredHead(rng.normal(size=(3, 8)).astype(np.float32), 10.0))
        session = PortableEngine().open(head, ["head.weight"],
                                        UpdateParams(learning_rate=0.05))
        losses = [session.step(x, y) for _ in range(60)]
        accuracy = float((session.logits(x).argmax(1) == y).mean())
        print(losses[0], losses[-1], accuracy)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    first, last, accuracy = (float(v) for v in out.stdout.split())
    assert last < first / 2
    assert accuracy > 0.9


def test_the_engine_benchmark_runs_and_reports_each_head_and_case(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import engines

    engines.main(["--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    timed = [line.split() for line in lines if line.startswith(("cosine", "linear"))]
    assert {(row[0], row[-4]) for row in timed} >= {("cosine", "portable"), ("linear", "portable")}
    # the seed's update (3 trainings x 10 epochs of EpochPlan's 29 steps, as its history lists); 1,000 x 10 epochs
    assert {int(row[-5]) for row in timed} == {870, 630}
    if ort_available():
        assert sum("portable/ort steps" in line for line in lines) == 4

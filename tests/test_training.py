"""Head training on cached embeddings: imprinting, balancing, hold-out, engine vs numpy."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from mlpersonalize import engines, fitting
from mlpersonalize.fitting import balanced_order
from mlpersonalize.heads import FitResult, StoredHead, cosine
from mlpersonalize.heads.cosine import WEIGHT, CosineHead, cosine_logits, imprint, normalize
from mlpersonalize.package import load_package
from mlpersonalize.params import UpdateParams
from mlpersonalize.update_algorithm import select_exemplars, split_holdout


def train_cosine(
    start: np.ndarray,
    scale: float,
    emb: np.ndarray,
    idx: np.ndarray,
    params: UpdateParams,
    anchor_rows: int = 0,
) -> FitResult:
    """A cosine head trained by the ORT engine through the shared loop."""
    head = StoredHead(start, scale)
    session = engines.get(None).open(CosineHead.graph(head), CosineHead.trainable(head), params)
    try:
        losses = fitting.train(session, emb, idx, params, {WEIGHT: anchor_rows})
        return FitResult(session.parameters()[WEIGHT], losses)
    finally:
        session.close()


def test_imprint_is_the_normalised_mean() -> None:
    emb = np.array([[1, 0], [0, 1], [3, 0]], np.float32)
    rows = imprint(emb, np.array([0, 0, 1]), [0, 1])
    np.testing.assert_allclose(rows, [[np.sqrt(0.5), np.sqrt(0.5)], [1, 0]], atol=1e-6)


def test_holdout_keeps_at_least_one_for_training() -> None:
    idx = np.array([0] * 1 + [1] * 2 + [2] * 3 + [3] * 8)
    train, held = split_holdout(idx, np.random.default_rng(0))
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(idx)))
    assert np.bincount(idx[held], minlength=4).tolist() == [0, 1, 1, 2]


def test_balanced_order_gives_every_label_equal_weight() -> None:
    idx = np.array([0] * 20 + [1] * 3)
    order = balanced_order(idx, np.random.default_rng(0))
    assert np.bincount(idx[order]).tolist() == [20, 20]
    assert set(order[idx[order] == 1].tolist()) == {20, 21, 22}


def test_select_exemplars_is_bounded_and_keeps_the_typical() -> None:
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [5, 5]], np.float32)
    kept, idx = select_exemplars(emb, np.array([0, 0, 0, 1]), per_label=2)
    assert idx.tolist() == [0, 0, 1] and kept[:2].tolist() == emb[:2].tolist()


def test_engine_eval_logits_match_the_head_formula() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 8)).astype(np.float32)
    emb = rng.standard_normal((10, 8)).astype(np.float32)
    head = StoredHead(weight, 10.0)
    session = engines.get(None).open(CosineHead.graph(head), CosineHead.trainable(head), UpdateParams())
    try:
        np.testing.assert_allclose(session.logits(emb), cosine_logits(emb, weight, 10.0), atol=1e-4)
    finally:
        session.close()


def test_training_fits_separable_classes_and_anchors_old_rows() -> None:
    rng = np.random.default_rng(1)
    centres = normalize(rng.standard_normal((3, 16)))
    idx = np.repeat(np.arange(3), 10)
    emb = centres[idx] + 0.3 * rng.standard_normal((30, 16)).astype(np.float32)
    start = rng.standard_normal((3, 16)).astype(np.float32)
    params = UpdateParams(epochs=15, learning_rate=0.05, batch_size=8)
    free = train_cosine(start, 16.0, emb, idx, params)
    anchored = train_cosine(start, 16.0, emb, idx, params, anchor_rows=2)
    assert free.finite and free.losses[-1] < free.losses[0]
    assert np.mean(np.argmax(cosine_logits(emb, free.weight, 16.0), 1) == idx) > 0.9
    moved_free = np.abs(free.weight[:2] - start[:2]).mean()
    assert np.abs(anchored.weight[:2] - start[:2]).mean() < moved_free


class _Stepper:
    """A TrainSession that moves every parameter by +1 per step and reports a scripted loss."""

    def __init__(self, losses: list[float]) -> None:
        self.values = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}
        self.losses = iter(losses)
        self.steps = 0

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        self.steps += 1
        for value in self.values.values():
            value += 1
        return next(self.losses)

    def parameters(self) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self.values.items()}

    def set_parameter(self, name: str, value: np.ndarray) -> None:
        self.values[name] = np.array(value, np.float32)

    def logits(self, x: np.ndarray) -> np.ndarray:
        raise AssertionError("the loop never asks for logits")

    def close(self) -> None:
        pass


def test_the_loop_anchors_known_rows_and_stops_on_nan_whatever_the_engine() -> None:
    emb = np.zeros((4, 2), np.float32)
    idx = np.array([0, 0, 1, 1])
    params = UpdateParams(epochs=3, batch_size=2, shuffle=False)
    session = _Stepper([1.0, 1.0, float("nan"), 1.0, 1.0, 1.0])  # two steps an epoch
    epochs: list[tuple[int, float]] = []
    losses = fitting.train(session, emb, idx, params, {"w": 2}, lambda e, loss: epochs.append((e, loss)))
    assert session.steps == 4 and len(losses) == 2 and np.isnan(losses[1])  # stopped after epoch 2
    assert [e for e, _ in epochs] == [1, 2]
    # Each epoch moves every parameter by 2; then the first 2 rows of "w" are pulled back by ANCHOR
    # towards their start (0): (0 + 2) * .5 = 1 after epoch 1, (1 + 2) * .5 = 1.5 after epoch 2.
    assert fitting.ANCHOR == 0.5
    np.testing.assert_array_equal(session.values["w"][:2], np.full((2, 2), 1.5))
    np.testing.assert_array_equal(session.values["w"][2:], np.full((1, 2), 4.0))
    np.testing.assert_array_equal(session.values["b"], np.full(3, 4.0))


class _StepEngine:
    """An engine whose sessions are _Stepper-like: every step moves each parameter by +1."""

    def open(self, head, trainable, params):  # type: ignore[no-untyped-def]
        weight = next(i for i in head.graph.initializer if i.name == WEIGHT)
        session = _Stepper([1.0] * 1000)
        session.values = {WEIGHT: numpy_helper.to_array(weight).astype(np.float32).copy()}
        return session


def test_a_new_labels_row_is_anchored_to_its_imprint(doodle_template) -> None:  # type: ignore[no-untyped-def]
    # Three drawings must not pull a new row far off its imprint (the update would then read the
    # new label worse than imprinting alone): it is pulled back, at NEW_ROW_ANCHOR of the known
    # rows' strength.
    package = load_package(doodle_template)
    labels = (*package.manifest.labels, "new")
    params = UpdateParams(epochs=2, batch_size=4, shuffle=False)
    head = CosineHead(package, labels, params, _StepEngine())  # type: ignore[arg-type]
    n_old, dim = head.old_weight.shape
    start = np.concatenate([head.old_weight, np.ones((1, dim), np.float32)])
    x = np.ones((4, dim), np.float32)
    moved = head.train(start, x, np.full(4, n_old), params, None).weight - start
    # one step an epoch (+1), then pulled back: known rows by ANCHOR (.5), the new row by .25:
    # known (0 + 1) * .5 = .5, (.5 + 1) * .5 = .75; new (0 + 1) * .75 = .75, (.75 + 1) * .75 = 1.3125
    assert cosine.NEW_ROW_ANCHOR == 0.5 and fitting.ANCHOR == 0.5
    np.testing.assert_allclose(moved[:n_old], 0.75)
    np.testing.assert_allclose(moved[n_old], 1.3125)


def test_the_loop_anchors_the_rows_a_mask_names() -> None:
    session = _Stepper([1.0] * 10)
    params = UpdateParams(epochs=2, batch_size=4, shuffle=False)
    fitting.train(
        session,
        np.zeros((4, 2), np.float32),
        np.array([0, 0, 1, 1]),
        params,
        {"w": np.array([True, False, True])},
    )
    # one step an epoch: masked rows (0 + 1) * .5 = .5, then (.5 + 1) * .5 = .75; the other row 2
    np.testing.assert_array_equal(session.values["w"][:, 0], [0.75, 2.0, 0.75])


def test_style_rows_for_known_labels_train_free_and_new_labels_rows_are_anchored(doodle_template) -> None:  # type: ignore[no-untyped-def]
    package = load_package(doodle_template)
    labels = (*package.manifest.labels, "new")
    head = CosineHead(package, labels, UpdateParams(), engines.get(None))
    n_old = len(head.old_weight)
    head.adopt(np.concatenate([head.old.row_label(), [0, len(labels) - 1]]))  # a style row of label 0
    assert head.anchored_rows(n_old + 2).tolist() == [1.0] * n_old + [0.0, cosine.NEW_ROW_ANCHOR]

"""Choosing between the imprinted and the trained head from the user's own held-out examples."""

from __future__ import annotations

import numpy as np

from mlpersonalize import selection
from mlpersonalize.calibration import normalize
from mlpersonalize.selection import choose_head, fold_of

D = 32


def pool(rng: np.random.Generator, shots: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Three old labels (10 exemplars each) and two new batch labels, clusters on a sphere."""
    c = normalize(rng.normal(size=(5, D)))
    counts = [shots, shots, 10, 10, 10]
    labels = np.repeat([3, 4, 0, 1, 2], counts)
    emb = normalize(c[labels] + rng.normal(0, 0.6 / np.sqrt(D), (len(labels), D)))
    in_batch = np.arange(len(labels)) < 2 * shots
    return emb, labels, in_batch, c


def imprinter(emb: np.ndarray, labels: np.ndarray, c: np.ndarray):  # type: ignore[no-untyped-def]
    def imprint(pos: np.ndarray) -> np.ndarray:
        new = [normalize(emb[pos][labels[pos] == lab].mean(axis=0)) for lab in (3, 4)]
        return np.concatenate([c[:3], np.stack(new)]).astype(np.float32)

    return imprint


def test_a_trainer_that_ruins_the_head_is_never_chosen() -> None:
    rng = np.random.default_rng(0)
    emb, labels, in_batch, c = pool(rng)
    imprint = imprinter(emb, labels, c)

    def ruin(pos: np.ndarray) -> np.ndarray:
        rows = imprint(pos).copy()
        rows[:] = rows[3]  # every row the same: label 0 wins every tie, the new labels are lost
        return rows

    choice = choose_head(emb, labels, in_batch, np.arange(5), 20.0, imprint, ruin, blends=(0.0, 0.5, 1.0))
    assert choice.name == "imprinted"
    np.testing.assert_allclose(choice.rows, imprint(np.arange(len(labels))))


def test_a_trainer_that_clearly_helps_is_chosen() -> None:
    rng = np.random.default_rng(1)
    emb, labels, in_batch, c = pool(rng)
    good = imprinter(emb, labels, c)

    def bad_imprint(pos: np.ndarray) -> np.ndarray:
        rows = good(pos).copy()
        rows[3], rows[4] = rows[4].copy(), rows[3].copy()  # the imprint gets the new labels backwards
        return rows

    choice = choose_head(emb, labels, in_batch, np.arange(5), 20.0, bad_imprint, good)
    assert choice.name == "trained"
    assert choice.batch_acc[1.0] > choice.batch_acc[0.0]
    assert choice.old_acc[1.0] >= choice.old_acc[0.0]
    assert choice.summary()["head"] == "trained"


def test_held_out_examples_are_never_trained_on_in_their_fold() -> None:
    rng = np.random.default_rng(2)
    emb, labels, in_batch, c = pool(rng, shots=3)
    imprint = imprinter(emb, labels, c)
    calls: list[np.ndarray] = []

    def train(pos: np.ndarray) -> np.ndarray:
        calls.append(np.asarray(pos))
        return imprint(pos)

    choice = choose_head(emb, labels, in_batch, np.arange(5), 20.0, imprint, train, folds=3)
    assert len(calls) == 3  # the tie goes to the imprinted head: no final training
    seen_held = set(choice.heldout.tolist())
    for kept in calls:
        assert len(set(kept.tolist())) == len(kept)
    # every batch drawing is held out exactly once, and absent from that fold's training
    assert set(np.flatnonzero(in_batch).tolist()) <= seen_held
    assert sum(len(np.setdiff1d(np.arange(len(labels)), k)) for k in calls) == len(choice.heldout)


def test_folds_spread_each_label_and_keep_a_single_drawing_for_training() -> None:
    labels = np.array([7, 7, 7, 8, 1, 1, 1, 1, 1, 1])
    in_batch = np.array([True] * 4 + [False] * 6)
    fold = fold_of(labels, in_batch, 3, np.random.default_rng(0))
    assert fold[3] == -1
    assert sorted(fold[:3].tolist()) == [0, 1, 2]
    assert np.bincount(fold[4:], minlength=3).tolist() == [2, 2, 2]


def test_many_drawings_of_every_batch_label_are_judged_on_one_fold_few_on_all() -> None:
    """Issue 17: with ONE_FOLD_FROM drawings of every batch label one held-out third decides (two
    trainings instead of four); a few-shot batch keeps every fold."""
    from mlpersonalize import selection

    rng = np.random.default_rng(3)
    for shots, trainings in ((3, 3), (selection.ONE_FOLD_FROM - 1, 3), (selection.ONE_FOLD_FROM, 1)):
        emb, labels, in_batch, c = pool(rng, shots=shots)
        imprint = imprinter(emb, labels, c)
        calls: list[np.ndarray] = []

        def train(pos: np.ndarray, calls: list[np.ndarray] = calls, imprint=imprint) -> np.ndarray:  # type: ignore[no-untyped-def]
            calls.append(np.asarray(pos))
            return imprint(pos)

        choice = choose_head(emb, labels, in_batch, np.arange(5), 20.0, imprint, train, folds=3)
        assert len(calls) == trainings  # ties keep the imprinted head: no final training
        batch_held = choice.heldout[in_batch[choice.heldout]]
        assert abs(len(batch_held) - (2 * shots if trainings == 3 else 2 * shots / 3)) <= 2


def test_a_win_on_the_old_labels_alone_keeps_the_taught_rows_imprinted() -> None:
    """Issue 12: the old labels' held-out exemplars speak for the model's own rows, not for the
    rows of labels taught from a few drawings; a trained head that wins there and ties on the batch
    is taken for the old rows only, the taught rows keep their imprints."""
    rng = np.random.default_rng(4)
    emb, labels, in_batch, c = pool(rng, shots=3)
    good = imprinter(emb, labels, c)

    def imprint(pos: np.ndarray) -> np.ndarray:
        rows = good(pos).copy()
        rows[0] = normalize(c[1] + 0.05 * c[0])  # an old row moved onto label 1: both lose exemplars
        return rows

    def train(pos: np.ndarray) -> np.ndarray:
        rows = good(pos).copy()  # the old rows right again
        rows[3:] = normalize(rows[3:] + rng.normal(0, 0.02, rows[3:].shape))  # the taught rows moved
        return rows

    taught = np.arange(5) >= 3
    choice = choose_head(emb, labels, in_batch, np.arange(5), 20.0, imprint, train, taught_rows=taught)
    assert choice.name == "trained, taught rows imprinted"
    everything = np.arange(len(labels))
    np.testing.assert_allclose(choice.rows[3:], imprint(everything)[3:], atol=1e-6)
    np.testing.assert_allclose(choice.rows[:3], good(everything)[:3], atol=1e-6)
    assert choice.old_acc[selection.PARTIAL] > choice.old_acc[0.0]
    # without a mask of taught rows the whole trained head is the candidate, as before
    whole = choose_head(emb, labels, in_batch, np.arange(5), 20.0, imprint, train)
    assert whole.name == "trained"


def test_when_only_moving_the_taught_rows_wins_the_batch_must_gain_too() -> None:
    """A taught row imprinted onto an old label's drawings: only the whole trained head (the row
    moved) wins on the old labels. It is taken when the batch's own held-out drawings gain from it
    too (MIN_NET_WINS), not when they merely tie."""
    results = {}
    for seed in (0, 4):
        rng = np.random.default_rng(seed)
        emb, labels, in_batch, c = pool(rng, shots=6)
        good = imprinter(emb, labels, c)

        def imprint(pos: np.ndarray, good=good, c=c) -> np.ndarray:  # type: ignore[no-untyped-def]
            rows = good(pos).copy()
            rows[3] = normalize(c[0] + 0.2 * c[3])  # new label 3's row on top of label 0
            return rows

        choice = choose_head(
            emb, labels, in_batch, np.arange(5), 20.0, imprint, good, taught_rows=np.arange(5) >= 3
        )
        assert choice.old_acc[1.0] > choice.old_acc[selection.PARTIAL] == choice.old_acc[0.0]
        results[seed] = (choice.name, choice.batch_acc[1.0] - choice.batch_acc[0.0])
    assert results[0] == ("imprinted", 0.0)  # the batch ties: its few drawings cannot vouch
    assert results[4][0] == "trained" and results[4][1] > 0  # 3 more of 12 batch drawings right

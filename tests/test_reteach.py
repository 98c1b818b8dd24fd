"""Conflicts, style rows and 'learned nothing' on synthetic embeddings with known structure."""

from __future__ import annotations

import numpy as np

from mlpersonalize.calibration import label_probabilities, normalize
from mlpersonalize.reteach import find_conflicts, judge_learning, plan_style_rows

D = 32
NAMES = ("circle", "star", "sun", "tree")


def scene(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Four known labels with tight exemplar clusters; a 'style' cluster halfway between sun and nowhere."""
    c = normalize(rng.normal(size=(6, D)))
    ex_label = np.repeat(np.arange(4), 20)
    ex = normalize(c[ex_label] + rng.normal(0, 0.5 / np.sqrt(D), (80, D)))

    def draw(centre: np.ndarray, n: int) -> np.ndarray:
        return normalize(centre + rng.normal(0, 0.5 / np.sqrt(D), (n, D)))

    # asterisk-like: nearer 'sun' than any other row, but far outside sun's exemplar territory
    style = normalize(0.45 * c[2] + 0.9 * c[5])
    return c[:4], ex, ex_label, draw, style


def test_a_conflict_cluster_is_named_with_the_label_it_is_read_as() -> None:
    rng = np.random.default_rng(0)
    rows, ex, ex_label, draw, _ = scene(rng)
    stars = draw(rows[1], 10)
    circles = draw(rows[0], 10)
    emb = np.concatenate([stars, circles])
    labels = np.repeat([0, 1], 10)  # swapped: stars labelled circle, circles labelled star
    conflicts, mask = find_conflicts(emb, labels, rows, np.arange(4), 20.0, ex, ex_label)
    assert mask.mean() >= 0.7  # territory = the label's exemplars above their 10th percentile
    named = {c.label: set(c.read_as) for c in conflicts}
    assert named == {0: {1}, 1: {0}}
    assert all(c.total == 10 and c.count == c.read_as[1 - c.label] for c in conflicts)


def test_a_new_way_of_drawing_is_a_style_not_a_conflict_and_gets_its_own_row() -> None:
    rng = np.random.default_rng(1)
    rows, ex, ex_label, draw, style = scene(rng)
    asterisks = draw(style, 5)
    labels = np.full(5, 1)  # the user calls them 'star'
    before = label_probabilities(asterisks, rows, np.arange(4), 20.0, 4).argmax(axis=1)
    assert np.all(before == 2)  # read as 'sun'
    conflicts, mask = find_conflicts(asterisks, labels, rows, np.arange(4), 20.0, ex, ex_label)
    assert conflicts == [] and not mask.any()
    plan = plan_style_rows(asterisks, labels, rows, np.arange(4), 20.0, skip=mask)
    assert plan.row_label.tolist() == [0, 1, 2, 3, 1]
    assert list(plan.added) == [4] and plan.added[4].tolist() == list(range(5))
    fresh = draw(style, 50)
    after = label_probabilities(fresh, plan.rows, plan.row_label, 20.0, 4).argmax(axis=1)
    assert np.mean(after == 1) >= 0.9
    stars = label_probabilities(draw(rows[1], 50), plan.rows, plan.row_label, 20.0, 4).argmax(axis=1)
    assert np.all(stars == 1)


def test_drawings_already_read_right_add_no_row_and_the_cap_merges() -> None:
    rng = np.random.default_rng(2)
    rows, _, _, draw, style = scene(rng)
    plain = plan_style_rows(draw(rows[1], 5), np.full(5, 1), rows, np.arange(4), 20.0)
    assert len(plain.rows) == 4 and not plain.added
    full_rows = np.concatenate([rows, rows[1:2], rows[1:2], rows[1:2]])
    row_label = np.array([0, 1, 2, 3, 1, 1, 1])
    tilted = full_rows.copy()
    tilted[5] = normalize(rows[1] + 0.6 * style)  # the style row nearest the new style
    plan = plan_style_rows(draw(style, 5), np.full(5, 1), tilted, row_label, 20.0, max_rows=4)
    assert len(plan.rows) == 7 and not plan.added
    assert list(plan.merged) == [5]
    assert float(plan.rows[5] @ style) > float(normalize(tilted[5]) @ style)


def test_an_update_that_did_not_raise_held_out_accuracy_says_why() -> None:
    labels = np.full(10, 0)
    same = np.arange(10) < 6
    verdict = judge_learning(same, same, labels, NAMES)
    assert not verdict.learned
    assert verdict.reason == (
        "held-out accuracy on the batch did not rise (60% before, 60% after): the model reads these drawings "
        "the same way as before"
    )
    up = np.ones(10, bool)
    assert judge_learning(same, up, labels, NAMES).learned


def test_a_conflict_is_the_reason_given_first() -> None:
    rng = np.random.default_rng(0)
    rows, ex, ex_label, draw, _ = scene(rng)
    stars = draw(rows[1], 10)
    conflicts, _ = find_conflicts(stars, np.zeros(10, np.int64), rows, np.arange(4), 20.0, ex, ex_label)
    n = conflicts[0].count
    verdict = judge_learning(np.zeros(10, bool), np.zeros(10, bool), np.zeros(10), NAMES, conflicts)
    assert (
        verdict.reason
        == f"the labels contradict what the model is sure of: {n} of 10 drawings of 'circle' look like 'star'"
    )


def test_a_label_that_stays_under_the_floor_is_named_with_the_label_it_looks_like() -> None:
    rng = np.random.default_rng(3)
    rows, _, _, draw, _ = scene(rng)
    emb = draw(rows[3], 6)  # a 'new' label 3 drawn just like 'tree'... compared with rows 0-2 only
    labels = np.full(6, 3)
    right = np.array([True, False, False, False, False, False])
    verdict = judge_learning(
        np.zeros(6, bool), right, labels, NAMES, emb=emb, rows=rows, row_label=np.array([0, 1, 2, 0])
    )
    assert not verdict.learned and verdict.weak_labels == [3]
    assert verdict.reason is not None and "'tree' looks like 'circle'" in verdict.reason


def test_one_misread_of_three_held_out_drawings_is_not_learning_nothing() -> None:
    """3 held-out drawings of a new label, 1 read right: a label the model learned, one drawing misread
    (the plain share, 33% < 50%, said "learned nothing" after 2 of 20 updates on real digits)."""
    before = np.zeros(6, bool)
    labels = np.repeat([4, 5], 3)
    one_of_three = np.array([True, True, True, True, False, False])
    assert judge_learning(before, one_of_three, labels, NAMES + ("a", "b")).learned
    none_of_three = np.array([True, True, True, False, False, False])
    verdict = judge_learning(before, none_of_three, labels, NAMES + ("a", "b"))
    assert not verdict.learned and verdict.weak_labels == [5]
    # with more drawings a share well under the floor still counts: 3 of 10 right
    assert not judge_learning(np.zeros(10, bool), np.arange(10) < 3, np.zeros(10), NAMES).learned

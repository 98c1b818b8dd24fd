"""Measure the calibrated ``unknown``, the never-worse-than-imprinting choice and style rows / conflicts.

    python -m benchmarks.calibration_study [--model DIR] [--seeds N] [--shots 3,5] [--per-digit N]
                                           [--part calib|scores|negatives|tta|select|style|all]

The study behind the constants of mlpersonalize/calibration.py, selection.py and reteach.py, run on
today's code: the cosine head's training is the update's own (heads/cosine.py's ``CosineHead.train``
over fitting.py, on the exemplar memory then the batch), and the update itself is
``update_algorithm.personalize_rows`` driven on embeddings as benchmarks/quality_rows.py drives it.

Embeddings come from the model's own backbone (``--model``, default: the bundled one):

* real handwriting: scikit-learn's 1,797 handwritten digits, rendered dark on a light or transparent
  canvas at 256x256 and preprocessed as ``prepare`` does (benchmarks/real_digits.py); ``--per-digit``
  keeps the first N of each digit;
* 20 generated standard drawings of each of the model's labels;
* 60 generated asterisk-drawn stars (benchmarks/styles.py; the bundled model reads them as ``sun``).

Parts (tables go to stdout, each cell the mean over seeds with [min-max]):

* ``calib``: the calibrated ``unknown``. Five digits taught next to the model's labels (their rows
  imprinted, or imprinted and then trained), the other five as unknowns; thresholds from the exemplar
  memory plus the batch. Right answers turned ``unknown`` (new digits; generated drawings of the
  model's labels), untaught digits rejected, beside an oracle threshold on the max cosine set on the
  held-out right answers themselves (and the same oracle on the max softmax probability: the
  comparison behind calibration.py's choice of score) and the fixed 0.5 probability threshold. Then generated
  drawings with 8 of the model's labels left out (their rows dropped) as the unknowns.
* ``scores``: open-set scores beyond the max cosine (calibration.py's module docstring cites it).
  Five digits imprinted next to the model's labels, the other five and never-seen generated doodles
  as unknowns; for each score (max cosine, the margin between the two best labels, Mahalanobis
  distance to the label's mean with one within-label covariance estimated from the exemplar memory
  under Ledoit-Wolf shrinkage, relative Mahalanobis, k-NN to the label's nearest example) the
  oracle rejection at 5% of right answers turned away; then fixed maps fitted on the memory
  (centring on its mean, whitening by the shrunk within-label covariance) baked in front of the
  cosine rows: closed-set top-1 (round 1, round 2, the model's labels) and the calibrated
  ``unknown`` in the mapped space.
* ``negatives``: the taught labels' thresholds with and without their negative side (calibration.py:
  each example's cosine to its nearest other label). quality_rows' two ``update`` rounds of five
  digits, seed for seed, each round's ``calibrate`` arguments recorded and calibrated again under
  each rule (the quantile, the own side's aim, the guard); per rule: round 1 / round 2 new / round
  1 after with ``unknown`` counted wrong, right answers turned ``unknown`` (and of the model's
  labels, generated), untaught digits and never-seen doodles rejected after round 1. Then the
  oracles at 4% of round 1's right answers turned away (one global threshold, one per label, set
  on the test drawings) and whether the batch shows where untaught digits crowd (per taught label,
  the correlation of the untaught digits it takes with the examples whose nearest other label it is).
* ``tta`` (not in ``all``): the score on several copies of each drawing (test-time augmentation:
  its embedding the mean of its own and k shifted / scaled copies', benchmarks/augment.py), the
  oracle rejection at 4% of right answers turned away and top-1, and the backbone time it costs.
* ``select``: never worse than imprinting. Two rounds of five digits through
  ``personalize_rows``: imprinting alone (the same update with 0 epochs), the trained head always
  (the cross-validated choice overridden), and the update as it ships (its choice); top-1 among all
  labels on the held-out digits, and which head each round chose.
* ``style``: conflicts (``find_conflicts`` on standard stars labelled ``circle``, circles labelled
  ``star``, asterisks and standard stars labelled ``star``, and real digits as new labels) and style
  rows (5 asterisks labelled ``star``, held-out = the other 55: the label's one row trained toward
  them vs a style row from ``plan_style_rows`` then trained), with ``judge_learning``'s verdict.

What no longer applies: the earlier study read embeddings saved by scripts outside the repository
(a folder argument) and also measured "filled star" drawings; no generator for those exists here,
so the style part measures asterisks only. The model needs ``star``, ``circle`` and ``sun`` labels
for the style part (the bundled one has them).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from mlpersonalize import calibration, engines, selection
from mlpersonalize._arrays import distinct
from mlpersonalize.calibration import calibrate, label_cosines, label_probabilities, normalize, predict_open
from mlpersonalize.embedding import embed
from mlpersonalize.heads.cosine import CosineHead
from mlpersonalize.manifest import BACKBONE_FILE
from mlpersonalize.params import UpdateParams
from mlpersonalize.reteach import find_conflicts, judge_learning, plan_style_rows
from mlpersonalize.sample.doodles import NOVEL_LABELS, make_dataset

from .quality_rows import View, base_view, digit_pixels, update_once
from .styles import style_drawings

DEFAULT_MODEL = Path(__file__).parent.parent / "sample_models" / "doodles"


class Data:
    """The model's head and memory, and the embeddings every part reads."""

    def __init__(self, model: Path, per_digit: int | None, parts: set[str]) -> None:
        self.view = base_view(model)
        manifest = self.view.manifest
        constraint = manifest.constraint
        backbone = model / BACKBONE_FILE
        head = CosineHead.read(self.view)
        self.W, self.rl, self.scale = head.weight.astype(np.float32), head.row_label(), head.logit_scale
        self.labels = list(manifest.labels)
        self.n = len(self.labels)
        ex, exi = self.view.memory
        self.ex, self.exi = np.asarray(ex, np.float32), np.asarray(exi, np.int64)
        pixels, y = digit_pixels(constraint)
        if per_digit is not None:
            keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_digit] for c in range(10)]))
            pixels, y = pixels[keep], y[keep]
        self.emb, self.y = embed(backbone, pixels, constraint).astype(np.float32), y
        self.pixels = pixels if "tta" in parts else pixels[:0]
        std_pix, self.std_y = make_dataset(self.labels, 20, seed=777, constraint=constraint)
        self.std = embed(backbone, std_pix, constraint).astype(np.float32)
        self.novel = np.zeros((0, self.emb.shape[1]), np.float32)
        # drawings of labels never in pretraining: the far side of the open set
        if parts & {"scores", "negatives"}:
            novel_pix, _ = make_dataset(list(NOVEL_LABELS), 30, seed=4242, constraint=constraint)
            self.novel = embed(backbone, novel_pix, constraint).astype(np.float32)
        self.styles: dict[str, np.ndarray] = {}
        if "style" in parts:
            asterisks = style_drawings("asterisk", 60, 1, constraint)
            self.styles["asterisk"] = embed(backbone, asterisks, constraint).astype(np.float32)


def imprint_rows(emb: np.ndarray) -> np.ndarray:
    return normalize(normalize(emb).mean(axis=0)).astype(np.float32)


def with_taught(d: Data, taught: np.ndarray, train: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The model's rows with one row imprinted from each taught digit's drawings after them, and
    the rows' labels (the taught digits are labels n, n + 1, …)."""
    rows = np.concatenate([d.W, np.stack([imprint_rows(d.emb[train[c]]) for c in taught])])
    return rows, np.concatenate([d.rl, np.arange(d.n, d.n + len(taught))])


def train_rows(
    d: Data, start: np.ndarray, row_label: np.ndarray, pool: np.ndarray, lab: np.ndarray, seed: int
) -> np.ndarray:
    """``start`` trained as the update trains a cosine head: the pool is the exemplar memory (its
    first ``len(d.ex)`` rows, rehearsed) then the batch; the model's rows are anchored, new
    labels' rows less, style rows not at all (CosineHead.anchored_rows)."""
    n_labels = int(max(int(row_label.max()) + 1, d.n))
    labels = (*d.labels, *(f"new {i}" for i in range(n_labels - d.n)))
    params = UpdateParams(seed=seed)
    head = CosineHead(d.view, labels, params, engines.get(None))
    head.adopt(row_label)
    head.rehearsed = len(d.ex)
    target = head.target_rows(start, pool, lab)
    result = head.train(start, pool, target, params, None)
    return np.asarray(result.weight, np.float32) if result.finite else start


def split(
    d: Data, seed: int, shots: int
) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(10)
    train = {c: rng.choice(np.flatnonzero(d.y == c), shots, replace=False) for c in range(10)}
    test = {c: np.setdiff1d(np.flatnonzero(d.y == c), train[c]) for c in range(10)}
    return perm[:5], perm[5:], train, test


def oracle_reject(score_known: np.ndarray, score_unknown: np.ndarray, frr: float = 0.05) -> float:
    """Rejection of unknowns by one global threshold set on the held-out right answers themselves."""
    return float(np.mean(score_unknown < np.quantile(score_known, frr))) if len(score_known) else float("nan")


def cell(values: list[float] | np.ndarray) -> str:
    v = np.asarray(values, np.float64)
    return f"{np.nanmean(v):.3f} [{np.nanmin(v):.2f}-{np.nanmax(v):.2f}]"


# --- 1. calibrated unknown --------------------------------------------------------------------


def study_calibration(d: Data, seeds: int, shots_list: list[int]) -> None:
    n = d.n
    print(f"\n## Calibrated unknown: real digits, round 1 (5 digits taught next to the {n} labels, 5 not)")
    print("thresholds from the exemplar memory + the batch (the new rows' imprint optimism removed)")
    print(
        f"head | target | shots | top-1 new | right->unknown new | right->unknown {n} (generated)"
        " | untaught digits rejected | oracle max-cos | oracle max-prob"
        " | fixed 0.5: rejected / right->unknown"
    )
    recs: dict[tuple[str, float, int], list[tuple[float, ...]]] = {}
    for shots in shots_list:
        for seed in range(seeds):
            a, b, tr, _ = split(d, seed, shots)
            xs = np.concatenate([tr[c] for c in a])
            imprinted, rl = with_taught(d, a, tr)
            cal_emb = np.concatenate([d.ex, d.emb[xs]])
            cal_lab = np.concatenate([d.exi, np.repeat(np.arange(n, n + 5), shots)])
            heads = {"imprinted": imprinted, "trained": train_rows(d, imprinted, rl, cal_emb, cal_lab, seed)}
            first = len(d.W)
            imp = {first + i: len(d.ex) + np.arange(i * shots, (i + 1) * shots) for i in range(5)}
            known = np.setdiff1d(np.flatnonzero(np.isin(d.y, a)), xs)
            truth = np.array([n + list(a).index(c) for c in d.y[known]])
            unknown = np.flatnonzero(np.isin(d.y, b))
            for head, rows in heads.items():
                raw = label_probabilities(d.emb[known], rows, rl, d.scale, n + 5)
                right = raw.argmax(1) == truth
                right_std = label_probabilities(d.std, rows, rl, d.scale, n + 5).argmax(1) == d.std_y
                pmax_u = label_probabilities(d.emb[unknown], rows, rl, d.scale, n + 5).max(1)
                prob_oracle = oracle_reject(raw.max(1)[right], pmax_u)
                for target in (0.05, 0.03, 0.01):
                    cal = calibrate(cal_emb, cal_lab, rows, rl, n + 5, imp, target_frr=target)
                    pk, _, sk = predict_open(d.emb[known], rows, rl, d.scale, cal.thresholds)
                    pu, _, su = predict_open(d.emb[unknown], rows, rl, d.scale, cal.thresholds)
                    ps, _, _ = predict_open(d.std, rows, rl, d.scale, cal.thresholds)
                    recs.setdefault((head, target, shots), []).append(
                        (
                            right.mean(),
                            np.mean(pk[right] == -1),
                            np.mean(ps[right_std] == -1),
                            np.mean(pu == -1),
                            oracle_reject(sk[right], su),
                            prob_oracle,
                            np.mean(pmax_u < 0.5),
                            np.mean(raw.max(1)[right] < 0.5),
                        )
                    )
    for (head, target, shots), rec in sorted(recs.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2])):
        r = np.array(rec)
        print(
            f"{head:9s} | {target:6.2f} | {shots:5d} | "
            + " | ".join(cell(r[:, i]) for i in range(6))
            + f" | {r[:, 6].mean():.3f} / {r[:, 7].mean():.3f}"
        )

    print(
        f"\n## Calibrated unknown: generated drawings, 8 of the {n} labels left out "
        "(rows dropped) as unknowns"
    )
    print(
        "target | top-1 kept | right->unknown kept | left-out labels rejected | oracle max-cos"
        " | fixed 0.5 rejected"
    )
    for target in (0.05, 0.03, 0.01):
        rec2 = []
        for seed in range(seeds):
            out = np.random.default_rng(100 + seed).choice(n, 8, replace=False)
            keep = np.setdiff1d(np.arange(n), out)
            remap = -np.ones(n, np.int64)
            remap[keep] = np.arange(len(keep))
            row_kept = np.isin(d.rl, keep)
            rows, rl = d.W[row_kept], remap[d.rl[row_kept]]
            ex_mask = np.isin(d.exi, keep)
            cal = calibrate(d.ex[ex_mask], remap[d.exi[ex_mask]], rows, rl, len(keep), target_frr=target)
            km, um = np.isin(d.std_y, keep), np.isin(d.std_y, out)
            truth = remap[d.std_y[km]]
            pk, _, sk = predict_open(d.std[km], rows, rl, d.scale, cal.thresholds)
            raw = label_probabilities(d.std[km], rows, rl, d.scale, len(keep))
            right = raw.argmax(1) == truth
            pu, _, su = predict_open(d.std[um], rows, rl, d.scale, cal.thresholds)
            pmax_u = label_probabilities(d.std[um], rows, rl, d.scale, len(keep)).max(1)
            rec2.append(
                (
                    right.mean(),
                    np.mean(pk[right] == -1),
                    np.mean(pu == -1),
                    oracle_reject(sk[right], su),
                    np.mean(pmax_u < 0.5),
                )
            )
        r = np.array(rec2)
        print(f"{target:6.2f} | " + " | ".join(cell(r[:, i]) for i in range(5)))


# --- 1b. open-set scores beyond the max cosine ---------------------------------------------------


class Space:
    """A fixed map of the embedding fitted on the exemplar memory, and cosine rows in it.

    ``none``: unit embeddings (the head as it is). ``centred``: unit embeddings minus the memory's
    mean. ``whitened``: centred, then multiplied by the inverse square root of the memory's shared
    within-label covariance (Ledoit-Wolf shrinkage toward a scaled identity: 256 dimensions, 20
    exemplars a label).
    """

    def __init__(self, kind: str, ex: np.ndarray, exi: np.ndarray) -> None:
        from sklearn.covariance import ledoit_wolf

        unit = normalize(ex)
        labels = np.unique(exi)
        self.means = np.stack([unit[exi == lab].mean(axis=0) for lab in labels])  # [labels, dim]
        self.mu = unit.mean(axis=0) if kind != "none" else np.zeros(unit.shape[1])
        self.P = np.eye(unit.shape[1])
        within, self.shrinkage = ledoit_wolf(
            unit - self.means[np.searchsorted(labels, exi)], assume_centered=True
        )
        total, _ = ledoit_wolf(unit - unit.mean(axis=0), assume_centered=True)
        self.white_within = np.linalg.cholesky(np.linalg.inv(within))
        self.white_total = np.linalg.cholesky(np.linalg.inv(total))
        self.centre = unit.mean(axis=0)
        if kind == "whitened":
            w, v = np.linalg.eigh(within)
            self.P = (v / np.sqrt(w)) @ v.T

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray((normalize(x) - self.mu) @ self.P)


def open_scores(
    x: np.ndarray,
    rows: np.ndarray,
    row_label: np.ndarray,
    n_labels: int,
    space: Space,
    means: np.ndarray,
    memory: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The cosine head's label per drawing and each candidate score for that label (higher: known).

    ``means`` [n_labels, dim]: each label's mean unit embedding (the memory's for the model's labels,
    the user's drawings' for taught ones); ``memory``: unit embeddings and labels of every example
    the package keeps (exemplars and the user's drawings) for the k-NN score.
    """
    cos = label_cosines(x, rows, row_label, n_labels)
    pred = cos.argmax(axis=1)
    at = np.arange(len(x))
    top2 = np.sort(cos, axis=1)[:, -2:]
    unit = normalize(x)
    # Squared Mahalanobis distances as squared Euclidean ones after whitening (L L^T = inverse).
    xw, mw = unit @ space.white_within, means @ space.white_within
    maha = (xw**2).sum(1)[:, None] - 2 * xw @ mw.T + (mw**2).sum(1)[None, :]
    maha0 = (((unit - space.centre) @ space.white_total) ** 2).sum(1)
    mem_unit, mem_label = memory
    near = unit @ mem_unit.T
    own = np.where(mem_label[None, :] == pred[:, None], near, -2.0).max(axis=1)
    return pred, {
        "max cosine": cos[at, pred],
        "top-2 margin": top2[:, 1] - top2[:, 0],
        "Mahalanobis": -maha[at, pred],
        "relative Mahalanobis": -(maha[at, pred] - maha0),
        "k-NN (own label)": own,
    }


def study_scores(d: Data, seeds: int, shots_list: list[int]) -> None:
    """Candidate open-set scores beside the max cosine, and the closed-set top-1 of fixed maps."""
    n = d.n
    print(
        f"\n## Open-set scores: real digits, round 1 (5 digits taught next to the {n} labels, imprinted), "
        "the other 5 as unknowns; never-seen generated doodles as far unknowns"
    )
    print(
        "oracle: one threshold set on the held-out right answers themselves (5% of them turned unknown;"
        f" for doodles, the taught digits' and the {n} labels' generated right answers)"
    )
    spaces = {kind: Space(kind, d.ex, d.exi) for kind in ("none", "centred", "whitened")}
    print(f"Ledoit-Wolf shrinkage of the within-label covariance: {spaces['none'].shrinkage:.3f}")
    oracle_rec: dict[tuple[str, int], list[tuple[float, float]]] = {}
    space_rec: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    for shots in shots_list:
        for seed in range(seeds):
            a, b, tr, te = split(d, seed, shots)
            xs = np.concatenate([tr[c] for c in a])
            known = np.concatenate([te[c] for c in a])
            truth = np.array([n + list(a).index(c) for c in d.y[known]])
            unknown = np.concatenate([te[c] for c in b])
            rows, rl = with_taught(d, a, tr)
            means = np.concatenate(
                [spaces["none"].means, np.stack([normalize(d.emb[tr[c]]).mean(0) for c in a])]
            )
            memory = (
                normalize(np.concatenate([d.ex, d.emb[xs]])),
                np.concatenate([d.exi, rl[len(d.W) :].repeat(shots)]),
            )
            parts = {
                name: open_scores(e, rows, rl, n + 5, spaces["none"], means, memory)
                for name, e in (
                    ("known", d.emb[known]),
                    ("untaught", d.emb[unknown]),
                    ("std", d.std),
                    ("novel", d.novel),
                )
            }
            right = parts["known"][0] == truth
            right_std = parts["std"][0] == d.std_y
            for score in parts["known"][1]:
                sk = parts["known"][1][score][right]
                both = np.concatenate([sk, parts["std"][1][score][right_std]])
                oracle_rec.setdefault((score, shots), []).append(
                    (
                        oracle_reject(sk, parts["untaught"][1][score]),
                        oracle_reject(both, parts["novel"][1][score]),
                    )
                )
            # The maps baked in front of the cosine rows: closed-set top-1 and the calibrated unknown.
            for kind, space in spaces.items():
                mapped_rows = np.concatenate(
                    [space(d.W), np.stack([imprint_rows(space(d.emb[tr[c]])) for c in a])]
                )
                both_rows = np.concatenate(
                    [mapped_rows, np.stack([imprint_rows(space(d.emb[tr[c]])) for c in b])]
                )
                rl2 = np.concatenate([rl, np.arange(n + 5, n + 10)])
                known2 = np.concatenate([te[c] for c in b])
                truth2 = np.array([n + 5 + list(b).index(c) for c in d.y[known2]])
                imp = {len(d.W) + i: len(d.ex) + np.arange(i * shots, (i + 1) * shots) for i in range(5)}
                cal = calibrate(
                    space(np.concatenate([d.ex, d.emb[xs]])),
                    np.concatenate([d.exi, np.repeat(np.arange(n, n + 5), shots)]),
                    mapped_rows,
                    rl,
                    n + 5,
                    imp,
                )
                pk, _, _ = predict_open(space(d.emb[known]), mapped_rows, rl, d.scale, cal.thresholds)
                pu, _, _ = predict_open(space(d.emb[unknown]), mapped_rows, rl, d.scale, cal.thresholds)
                ps, _, _ = predict_open(space(d.std), mapped_rows, rl, d.scale, cal.thresholds)
                pn, _, _ = predict_open(space(d.novel), mapped_rows, rl, d.scale, cal.thresholds)
                top_k = label_cosines(space(d.emb[known]), mapped_rows, rl, n + 5).argmax(1)
                top_s = label_cosines(space(d.std), mapped_rows, rl, n + 5).argmax(1)
                top_2 = label_cosines(space(d.emb[known2]), both_rows, rl2, n + 10).argmax(1)
                rk, rs = top_k == truth, top_s == d.std_y
                space_rec.setdefault((kind, shots), []).append(
                    (
                        rk.mean(),
                        np.mean(top_2 == truth2),
                        rs.mean(),
                        np.mean(pk[rk] == -1),
                        np.mean(ps[rs] == -1),
                        np.mean(pu == -1),
                        np.mean(pn == -1),
                    )
                )
    print("score | shots | oracle: untaught digits rejected | oracle: never-seen doodles rejected")
    for (score, shots), pairs in oracle_rec.items():
        r = np.array(pairs)
        print(f"{score:20s} | {shots:5d} | {cell(r[:, 0])} | {cell(r[:, 1])}")
    print(
        "\nmap in front of the cosine rows | shots | top-1 round 1 new | top-1 round 2 new (imprinted)"
        f" | top-1 {n} labels (generated) | calibrated: right->unknown new | right->unknown {n}"
        " | untaught rejected | doodles rejected"
    )
    for (kind, shots), rec in space_rec.items():
        r = np.array(rec)
        print(f"{kind:9s} | {shots:5d} | " + " | ".join(cell(r[:, i]) for i in range(r.shape[1])))


# --- 1c. the negative side of the taught labels' thresholds ---------------------------------------


NEGATIVE_RULES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("own side only (before)", {"negative_quantile": None}),
    ("own side only, target 5%", {"negative_quantile": None, "target_frr": 0.05}),
    *((f"negatives q={q:g}", {"negative_quantile": q}) for q in (0.6, 0.65, 0.7, 0.75, 0.8)),
    ("as shipped, own side at 1%", {"anchored_frr": 0.01}),
    ("as shipped, guard at 10%", {"guard_frr": 0.1}),
    ("as shipped, guard at 50%", {"guard_frr": 0.5}),
)


def two_round_calibrations(
    d: Data, seed: int, shots: int, names: list[str]
) -> tuple[dict[str, Any], list[tuple[View, tuple[Any, ...]]]]:
    """quality_rows' two rounds of five digits (its split, seed for seed): each round's updated
    view and the arguments ``personalize_rows`` passed to ``calibrate``."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(d.y))[:10]
    a, b = classes[:5], classes[5:]
    train = {c: rng.choice(np.flatnonzero(d.y == c), shots, replace=False) for c in classes}
    test = {c: np.setdiff1d(np.flatnonzero(d.y == c), train[c]) for c in classes}
    calls: list[tuple[Any, ...]] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[:6])
        return calibrate(*args, **kwargs)

    rounds, view = [], d.view
    for cs in (a, b):
        pos = np.concatenate([train[c] for c in cs])
        with mock.patch.object(calibration, "calibrate", record):
            view, _ = update_once(
                view, d.emb[pos], [names[int(c)] for c in d.y[pos]], UpdateParams(seed=seed)
            )
        rounds.append((view, calls[-1]))
    return {"a": a, "b": b, "train": train, "test": test}, rounds


def per_label_oracle(s_known: np.ndarray, p_known: np.ndarray, s_un: np.ndarray, p_un: np.ndarray) -> float:
    """Untaught drawings rejected by per-label thresholds set on the test drawings themselves, at
    most 4% of the right answers ``s_known`` (predicted ``p_known``) turned away: one Lagrange
    multiplier traded against the rejections, label by label."""
    grid = np.linspace(-1.0, 1.0, 401)
    best = 0.0
    for lam in np.logspace(-1, 2, 40):
        turned = rejected = 0
        for lab in distinct(np.concatenate([p_known, p_un])):
            k, u = s_known[p_known == lab], s_un[p_un == lab]
            gain = [(np.sum(u < t) - lam * np.sum(k < t), t) for t in grid]
            t = max(gain)[1]
            turned += int(np.sum(k < t))
            rejected += int(np.sum(u < t))
        if turned <= 0.04 * len(s_known):
            best = max(best, rejected / max(1, len(s_un)))
    return best


def study_negatives(d: Data, seeds: int, shots_list: list[int]) -> None:
    """The taught labels' thresholds with and without the negative side (calibration.py)."""
    n = d.n
    names = [f"digit {c}" for c in range(10)]
    print(
        "\n## Negative side: real digits, two `update` rounds of five (quality_rows' split), the "
        "other five digits and never-seen doodles as unknowns after round 1"
    )
    print(
        "rule | shots | round 1 / round 2 new / round 1 after (unknown wrong) | right->unknown: round 1 /"
        f" round 2 new / round 1 after / the {n} (generated) | untaught digits rejected | doodles rejected"
    )
    recs: dict[tuple[str, int], list[tuple[float, ...]]] = {}
    oracles: dict[int, list[tuple[float, float]]] = {}
    crowding: dict[int, list[tuple[int, int, int]]] = {}
    for shots in shots_list:
        for seed in range(seeds):
            split_, rounds = two_round_calibrations(d, seed, shots, names)
            heads = [CosineHead.read(v) for v, _ in rounds]
            labels = [v.manifest.labels for v, _ in rounds]

            def at(
                test_of: np.ndarray, r: int, tests: Any = split_["test"], labels: Any = labels
            ) -> tuple[np.ndarray, np.ndarray]:
                pos = np.concatenate([tests[c] for c in test_of])
                return pos, np.array([labels[r].index(names[int(c)]) for c in d.y[pos]])

            (pos_a, truth_a1), (pos_b, truth_b2) = at(split_["a"], 0), at(split_["b"], 1)
            truth_a2 = at(split_["a"], 1)[1]
            top = [
                lambda x, h=h, k=len(k): label_probabilities(
                    x, h.weight, h.row_label(), h.logit_scale, k
                ).argmax(1)
                for h, k in zip(heads, labels, strict=True)
            ]
            right_a1, right_b2 = top[0](d.emb[pos_a]) == truth_a1, top[1](d.emb[pos_b]) == truth_b2
            right_a2, right_std = top[1](d.emb[pos_a]) == truth_a2, top[0](d.std) == d.std_y
            h1 = heads[0]
            cos_a = label_cosines(d.emb[pos_a], h1.weight, h1.row_label(), len(labels[0]))
            cos_b = label_cosines(d.emb[pos_b], h1.weight, h1.row_label(), len(labels[0]))
            p_a, p_b = top[0](d.emb[pos_a]), top[0](d.emb[pos_b])
            s_a, s_b = cos_a[np.arange(len(p_a)), p_a], cos_b[np.arange(len(p_b)), p_b]
            oracles.setdefault(shots, []).append(
                (
                    oracle_reject(s_a[right_a1], s_b, 0.04),
                    per_label_oracle(s_a[right_a1], p_a[right_a1], s_b, p_b),
                )
            )
            # Does the batch show where untaught digits crowd? Per taught label: the batch's and
            # the memory's examples whose nearest other label it is, and the untaught digits it takes.
            cal_emb, cal_lab, cal_rows, cal_rl, cal_n, _ = rounds[0][1]
            near = label_cosines(cal_emb, cal_rows, cal_rl, cal_n)
            near[np.arange(len(cal_lab)), cal_lab] = -np.inf
            nearest, taught_ex = near.argmax(axis=1), cal_lab >= n
            for lab in range(n, len(labels[0])):
                crowding.setdefault(shots, []).append(
                    (
                        np.sum((nearest == lab) & taught_ex),
                        np.sum((nearest == lab) & ~taught_ex),
                        np.sum(p_b == lab),
                    )
                )
            for name, kwargs in NEGATIVE_RULES:
                pred = []
                for (_, args), h in zip(rounds, heads, strict=True):
                    thr = calibrate(*args, **kwargs).thresholds
                    pred.append(
                        lambda x, h=h, thr=thr: predict_open(x, h.weight, h.row_label(), h.logit_scale, thr)[
                            0
                        ]
                    )
                a1, b2, a2 = pred[0](d.emb[pos_a]), pred[1](d.emb[pos_b]), pred[1](d.emb[pos_a])
                recs.setdefault((name, shots), []).append(
                    (
                        np.mean(a1 == truth_a1),
                        np.mean(b2 == truth_b2),
                        np.mean(a2 == truth_a2),
                        np.mean(a1[right_a1] == -1),
                        np.mean(b2[right_b2] == -1),
                        np.mean(a2[right_a2] == -1),
                        np.mean(pred[0](d.std)[right_std] == -1),
                        np.mean(pred[0](d.emb[pos_b]) == -1),
                        np.mean(pred[0](d.novel) == -1),
                    )
                )
    for (name, shots), rec in recs.items():
        r = np.array(rec) * 100
        print(
            f"{name} | {shots} | "
            + " / ".join(f"{v:.1f}" for v in r[:, :3].mean(0))
            + " | "
            + " / ".join(f"{v:.1f}" for v in r[:, 3:7].mean(0))
            + f" | {cell(r[:, 7])} | {r[:, 8].mean():.1f}"
        )
    print(
        "\noracles on round 1 (thresholds set on the test drawings themselves, at most 4% of the new "
        "labels' right answers turned away): untaught digits rejected, one global threshold on the max "
        "cosine / one per label"
    )
    for shots, found in oracles.items():
        r = np.array(found) * 100
        print(f"{shots} drawings: {r[:, 0].mean():.1f}% / {r[:, 1].mean():.1f}%")
    print(
        "\nper taught label (round 1): correlation of the untaught digits it takes with the batch's /"
        " the memory's examples whose nearest other label it is"
    )
    for shots, counts in crowding.items():
        c = np.array(counts, np.float64)
        print(
            f"{shots} drawings ({len(c)} labels): {np.corrcoef(c[:, 0], c[:, 2])[0, 1]:.2f} / "
            f"{np.corrcoef(c[:, 1], c[:, 2])[0, 1]:.2f}"
        )


# --- 1d. the score on several copies of the drawing (test-time augmentation) ---------------------


def study_tta(d: Data, seeds: int, shots_list: list[int], copies: tuple[int, ...] = (2, 4, 8)) -> None:
    """Untaught digits rejected at 4% of right answers turned away (one threshold set on the test
    drawings: the most any calibration of the score could give) when each drawing's embedding is
    the mean of its own and ``k`` shifted / scaled copies' (benchmarks/augment.py with rotation,
    shear, elastic and pen changes off; and with them on), the taught rows as the update trained
    them or re-imprinted from the copies too; top-1 among all labels; and the backbone time."""
    from . import augment

    names = [f"digit {c}" for c in range(10)]
    mild = {"ROTATE": 0.0, "SHEAR": 0.0, "ELASTIC": 0.0, "PEN": False, "SHIFT": 1.5, "SCALE": (0.93, 1.07)}
    constraint = d.view.manifest.constraint
    backbone = d.view.path / BACKBONE_FILE
    pixels = d.pixels
    copied: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for style, patch in (("shift/scale", mild), ("augment.py's", {})):
        with contextlib.ExitStack() as stack:
            for name, value in patch.items():
                stack.enter_context(mock.patch.object(augment, name, value))
            many = augment.variants(pixels, max(copies), seed=0, ink=constraint.ink)
        started = time.perf_counter()
        copied[style] = embed(backbone, many, constraint).reshape(len(pixels), max(copies), -1)
        seconds[style] = time.perf_counter() - started
    started = time.perf_counter()
    embed(backbone, pixels, constraint)
    plain_seconds = time.perf_counter() - started
    print(
        "\n## Test-time augmentation: real digits, round 1 of quality_rows' split (five taught), the other"
        " five as unknowns; untaught digits rejected by the oracle threshold at 4% of right answers turned"
        " away, and top-1 of the taught digits"
    )
    print(
        f"backbone time: {1000 * plain_seconds / len(pixels):.3f} ms a drawing; k copies cost k + 1 runs"
        f" ({1000 * seconds['shift/scale'] / (len(pixels) * max(copies)):.3f} ms a copy)"
    )
    print("copies | shots | rows as trained: oracle rejected / top-1 | rows re-imprinted from the copies too")
    for shots in shots_list:
        rec: dict[tuple[str, int], list[tuple[float, ...]]] = {}
        for seed in range(seeds):
            split_, rounds = two_round_calibrations(d, seed, shots, names)
            view = rounds[0][0]
            head = CosineHead.read(view)
            labels = view.manifest.labels
            rl, n = head.row_label(), len(labels)
            pos_a = np.concatenate([split_["test"][c] for c in split_["a"]])
            pos_b = np.concatenate([split_["test"][c] for c in split_["b"]])
            truth = np.array([labels.index(names[int(c)]) for c in d.y[pos_a]])
            for style, k in [("none", 0)] + [(s, k) for s in copied for k in copies]:
                e = (
                    d.emb
                    if k == 0
                    else normalize(normalize(d.emb) + normalize(copied[style][:, :k]).sum(axis=1))
                )
                again = np.asarray(head.weight, np.float64).copy()
                for c in split_["a"]:
                    row = int(np.flatnonzero(rl == labels.index(names[int(c)]))[0])
                    again[row] = normalize(normalize(e[split_["train"][c]]).mean(axis=0, keepdims=True))[0]
                cells: list[float] = []
                for rows in (head.weight, again):
                    cos_a, cos_b = label_cosines(e[pos_a], rows, rl, n), label_cosines(e[pos_b], rows, rl, n)
                    p_a = label_probabilities(e[pos_a], rows, rl, head.logit_scale, n).argmax(1)
                    p_b = label_probabilities(e[pos_b], rows, rl, head.logit_scale, n).argmax(1)
                    right = p_a == truth
                    s_a, s_b = cos_a[np.arange(len(p_a)), p_a], cos_b[np.arange(len(p_b)), p_b]
                    cells += [oracle_reject(s_a[right], s_b, 0.04), float(np.mean(right))]
                rec.setdefault((style, k), []).append(tuple(cells))
        for (style, k), cells_ in rec.items():
            r = np.array(cells_) * 100
            label = "none" if k == 0 else f"{k} ({style})"
            print(
                f"{label} | {shots} | {r[:, 0].mean():.1f}% / {r[:, 1].mean():.1f}% | "
                f"{r[:, 2].mean():.1f}% / {r[:, 3].mean():.1f}%"
            )


# --- 2. never worse than imprinting -----------------------------------------------------------


@contextlib.contextmanager
def always_trained() -> Iterator[None]:
    """personalize_rows with its choice overridden: the head trained on the whole pool, always."""

    def choose(
        emb: np.ndarray,
        labels: np.ndarray,
        in_batch: np.ndarray,
        row_label: np.ndarray,
        scale: float,
        imprint: selection.RowsFn,
        train: selection.RowsFn,
        **_: Any,
    ) -> selection.HeadChoice:
        return selection.HeadChoice(1.0, train(np.arange(len(labels))))

    with mock.patch.object(selection, "choose_head", choose):
        yield


def update_round(
    view: View, d: Data, pos: np.ndarray, names: list[str], method: str, seed: int
) -> tuple[View, str]:
    """One ``update`` of the digits at ``pos`` (personalize_rows on their embeddings)."""
    params = UpdateParams(seed=seed, epochs=0) if method == "imprint" else UpdateParams(seed=seed)
    batch = [names[int(c)] for c in d.y[pos]]
    with always_trained() if method == "train" else contextlib.nullcontext():
        new_view, out = update_once(view, d.emb[pos], batch, params)
    head = str(out.history["selection"]["head"])
    return new_view, ("r" if out.history.get("refused") else "") + head[:1]


def top1(view: View, d: Data, pos: np.ndarray, names: list[str]) -> float:
    head = CosineHead.read(view)
    labels = view.manifest.labels
    truth = np.array([labels.index(names[int(c)]) for c in d.y[pos]])
    prob = label_probabilities(d.emb[pos], head.weight, head.row_label(), head.logit_scale, len(labels))
    return float(np.mean(prob.argmax(1) == truth))


def study_selection(d: Data, seeds: int, shots_list: list[int]) -> None:
    print(
        "\n## Never worse than imprinting: real digits, two `update` rounds of five labels, "
        "top-1 among all labels"
    )
    print("shots | method | round 1 new | round 2 new | round 1's labels after round 2 | heads (r1/r2)")
    names = [f"digit {c}" for c in range(10)]
    for shots in shots_list:
        res: dict[str, np.ndarray] = {}
        for method in ("imprint", "train", "chosen"):
            rec, chosen = [], []
            for seed in range(seeds):
                a, b, tr, te = split(d, seed, shots)
                v1, n1 = update_round(d.view, d, np.concatenate([tr[c] for c in a]), names, method, seed)
                v2, n2 = update_round(v1, d, np.concatenate([tr[c] for c in b]), names, method, seed)
                t1 = np.concatenate([te[c] for c in a])
                t2 = np.concatenate([te[c] for c in b])
                rec.append((top1(v1, d, t1, names), top1(v2, d, t2, names), top1(v2, d, t1, names)))
                chosen.append(f"{n1}/{n2}")
            res[method] = np.array(rec)
            print(
                f"{shots:5d} | {method:7s} | "
                + " | ".join(cell(res[method][:, i]) for i in range(3))
                + " | "
                + " ".join(chosen)
            )
        diff = res["chosen"] - res["imprint"]
        print(
            f"      | chosen - imprint, worst seed: {diff.min(0).round(3).tolist()}; "
            f"seeds worse by > 0.5 point: {int(np.sum(np.any(diff < -0.005, axis=1)))} of {seeds}"
        )
    print("heads: i = imprinted, t = trained (r: conflicts named, run again as with --force)")


# --- 3. style rows, conflicts, learned nothing --------------------------------------------------


def study_style(d: Data, seeds: int) -> None:
    if not {"star", "circle", "sun"} <= set(d.labels):
        print("\n## Style rows and conflicts: skipped (the model has no 'star', 'circle' and 'sun' labels)")
        return
    W, s, base_rl, n = d.W, d.scale, d.rl, d.n
    star, circle, sun = (d.labels.index(name) for name in ("star", "circle", "sun"))

    def reads(rows: np.ndarray, rl: np.ndarray, e: np.ndarray) -> np.ndarray:
        return label_probabilities(e, rows, rl, s, n).argmax(1)

    print(
        "\n## Conflicts: generated drawings labelled by a user (find_conflicts: read as another label "
        "with p >= 0.5 inside its 10th-percentile territory)"
    )
    cases: list[tuple[str, np.ndarray, int]] = [
        ("standard stars labelled circle", d.std[d.std_y == star], circle),
        ("standard circles labelled star", d.std[d.std_y == circle], star),
        ("asterisks labelled star", d.styles["asterisk"], star),
        ("standard stars labelled star", d.std[d.std_y == star], star),
    ]
    for name, e, lab in cases:
        conflicts, mask = find_conflicts(e, np.full(len(e), lab), W, base_rl, s, d.ex, d.exi)
        read = {d.labels[k]: v for c in conflicts for k, v in c.read_as.items()}
        print(f"{name:32s} conflicts {int(mask.sum()):2d} of {len(e)}  read as {read}")
    digit_flags = []
    for seed in range(seeds):
        a, _, tr, _ = split(d, seed, 5)
        xs = np.concatenate([tr[c] for c in a])
        _, mask = find_conflicts(
            d.emb[xs], np.repeat(np.arange(n, n + 5), 5), W, base_rl, s, d.ex, d.exi, new_from=n
        )
        digit_flags.append(mask.mean())
    print(
        f"{'real digits as new labels':32s} would-be conflicts "
        f"(read as a known label, sure, in its territory): {np.mean(digit_flags):.3f} of drawings"
    )

    print("\n## Style rows: 5 asterisks labelled 'star'; held-out = the other 55 (generated drawings)")
    print(
        f"method | held-out asterisks -> star (before) | standard stars -> star | all {n} labels (before)"
        " | learned?"
    )
    before_all = float(np.mean(reads(W, base_rl, d.std) == d.std_y))
    drawings = d.styles["asterisk"]
    for method in ("one row", "style row"):
        rec, verdicts = [], []
        for seed in range(seeds):
            perm = np.random.default_rng(seed).permutation(len(drawings))
            batch, held = drawings[perm[:5]], drawings[perm[5:]]
            taught = np.full(5, star)
            pool = np.concatenate([d.ex, batch])
            before = float(np.mean(reads(W, base_rl, held) == star))
            if method == "one row":
                rows = train_rows(d, W, base_rl, pool, np.concatenate([d.exi, taught]), seed)
                rl = base_rl
            else:
                _, mask = find_conflicts(batch, taught, W, base_rl, s, d.ex, d.exi)
                plan = plan_style_rows(batch, taught, W, base_rl, s, skip=mask)
                rl = plan.row_label
                rows = train_rows(d, plan.rows, rl, pool, np.concatenate([d.exi, taught]), seed)
            after_right = reads(rows, rl, held) == star
            rec.append(
                (
                    before,
                    after_right.mean(),
                    np.mean(reads(rows, rl, d.std[d.std_y == star]) == star),
                    np.mean(reads(rows, rl, d.std) == d.std_y),
                )
            )
            verdict = judge_learning(
                reads(W, base_rl, held) == star, after_right, np.full(len(held), star), d.labels
            )
            verdicts.append(verdict.learned)
        m = np.mean(rec, 0)
        print(
            f"{method:9s} | {m[1]:.3f} ({m[0]:.3f}) | {m[2]:.3f} | {m[3]:.3f} ({before_all:.3f}) | "
            f"{sum(verdicts)}/{len(verdicts)}"
        )
    swapped = d.std[d.std_y == star]
    circles = np.full(len(swapped), circle)
    rows = train_rows(d, W, base_rl, np.concatenate([d.ex, swapped]), np.concatenate([d.exi, circles]), 0)
    conflicts, _ = find_conflicts(swapped, circles, W, base_rl, s, d.ex, d.exi)
    verdict = judge_learning(
        reads(W, base_rl, swapped) == circle,
        reads(rows, base_rl, swapped) == circle,
        circles,
        d.labels,
        conflicts,
    )
    print(
        f"\nstars labelled circle, the one row trained: learned={verdict.learned}; reason: {verdict.reason}"
    )
    cos = label_cosines(d.styles["asterisk"], W, base_rl, n)
    print(
        f"asterisks: median cosine to the sun row {np.median(cos[:, sun]):.3f}, "
        f"to the star row {np.median(cos[:, star]):.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--shots", default="3,5", help="drawings per taught digit, comma-separated")
    parser.add_argument("--per-digit", type=int, default=None, help="keep the first N drawings of each digit")
    parser.add_argument(
        "--part", choices=("calib", "scores", "negatives", "tta", "select", "style", "all"), default="all"
    )
    args = parser.parse_args(argv)
    try:
        shots_list = [int(v) for v in args.shots.split(",")]
    except ValueError:
        print(f"Error: --shots must be comma-separated integers, got {args.shots!r}", file=sys.stderr)
        return 2
    if (
        args.seeds < 1
        or min(shots_list) < 1
        or (args.per_digit is not None and args.per_digit <= max(shots_list))
    ):
        print("Error: --seeds and --shots must be at least 1, --per-digit more than --shots", file=sys.stderr)
        return 2
    if not (args.model / BACKBONE_FILE).is_file():
        print(f"Error: no model package at {args.model}", file=sys.stderr)
        return 1
    parts = {"calib", "scores", "negatives", "select", "style"} if args.part == "all" else {args.part}
    started = time.perf_counter()
    try:
        d = Data(args.model, args.per_digit, parts)
    except RuntimeError as exc:  # scikit-learn missing (the bench extra)
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(
        f"# calibration study: {args.model.name}, {len(d.y)} real digits, {len(d.std)} generated drawings, "
        f"seeds {args.seeds}, shots {shots_list}"
    )
    if "calib" in parts:
        study_calibration(d, args.seeds, shots_list)
    if "scores" in parts:
        study_scores(d, args.seeds, shots_list)
    if "negatives" in parts:
        study_negatives(d, args.seeds, shots_list)
    if "tta" in parts:
        study_tta(d, args.seeds, shots_list)
    if "select" in parts:
        study_selection(d, args.seeds, shots_list)
    if "style" in parts:
        study_style(d, args.seeds)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Two more open-set levers for untaught digits, measured and not adopted (docs/unknown.md).

    python -m benchmarks.open_set_levers [--model DIR] [--seeds N] [--shots 3]
                                         [--part chimeras|background|all] [--rows ROWS.npy]

Both start from issue 12's miss: an untaught digit lands on a taught digit and scores like a right
answer. Real digits (scikit-learn's handwritten 8x8 digits rendered as benchmarks/real_digits.py
renders them), the model's own backbone, round 1 of quality_rows' two `update` rounds of five.

* ``chimeras``: the update could make its own "unknown" drawings out of the batch: pairs of the
  taught drawings of different labels joined top half to bottom half, left half to right half, or
  overlaid (the pixel-wise maximum of their ink). A taught label's threshold then also stands above
  a quantile of the chimeras landing on it (per label), or of all of them (global), never above its
  own side at calibration.GUARD_FRR. Per rule: top-1 with ``unknown`` counted wrong, right answers
  turned ``unknown``, untaught digits rejected, and one global threshold on the test drawings turned
  to the same share of right answers (an oracle): a rule that reads where unknowns crowd would beat
  the oracle's line.
* ``background``: every pretraining class's row (``--rows``, written by ``python -m
  mlpersonalize.sample.pretrain --rows FILE``), less the model's own labels, as a background: the
  score becomes ``cos(label) - lam * max cos(background row)`` (an untaught digit might sit closer
  to some glyph than to the taught digit it lands on). Five digits imprinted from the drawings, the
  other five and never-seen generated doodles as unknowns; one oracle threshold at 2% and 5% of
  right answers turned away, and the share of the model's own labels' right answers (generated)
  that threshold turns away.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mlpersonalize.calibration import (
    GUARD_FRR,
    PRIOR,
    _taught_thresholds,
    calibrate,
    calibration_scores,
    normalize,
    predict_open,
)
from mlpersonalize.embedding import embed
from mlpersonalize.heads.cosine import CosineHead
from mlpersonalize.manifest import BACKBONE_FILE

from .calibration_study import (
    DEFAULT_MODEL,
    Data,
    cell,
    oracle_reject,
    split,
    two_round_calibrations,
    with_taught,
)

QUANTILES = (0.1, 0.25, 0.5)


def top(
    x: np.ndarray, rows: np.ndarray, row_label: np.ndarray, scale: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each drawing's label before any ``unknown``, and its score (the cosine to that label), as
    ``predict`` reads them (calibration.predict_open with no threshold)."""
    label, _, score = predict_open(x, rows, row_label, scale, np.full(n, -np.inf))
    return label, score


def chimeras(pixels: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Drawings joined from two drawings of different labels: top/bottom, left/right, overlaid."""
    half = pixels.shape[1] // 2
    out = []
    for i in range(len(pixels)):
        for j in range(len(pixels)):
            if labels[i] == labels[j]:
                continue
            top = pixels[i].copy()
            top[half:] = pixels[j][half:]
            left = pixels[i].copy()
            left[:, half:] = pixels[j][:, half:]
            out += [top, left] + ([np.maximum(pixels[i], pixels[j])] if i < j else [])
    return np.stack(out)


def study_chimeras(d: Data, model: Path, seeds: int, shots: int) -> None:
    names = [f"digit {c}" for c in range(10)]
    constraint = d.view.manifest.constraint
    print(f"\n## Chimeras of the batch as unknowns: real digits, round 1, {shots} drawings, {seeds} seeds")
    print("rule | top-1 (unknown wrong) | right->unknown | untaught digits rejected | oracle, same share")
    recs: dict[str, list[tuple[float, ...]]] = {}
    for seed in range(seeds):
        sp, rounds = two_round_calibrations(d, seed, shots, names)
        view, args = rounds[0]
        head, labels = CosineHead.read(view), view.manifest.labels
        w, rl, scale, n = head.weight, head.row_label(), head.logit_scale, len(labels)
        taught_pos = np.concatenate([sp["train"][c] for c in sp["a"]])
        taught_lab = np.array([labels.index(names[int(c)]) for c in d.y[taught_pos]])
        emb = np.asarray(embed(model / BACKBONE_FILE, chimeras(d.pixels[taught_pos], taught_lab), constraint))
        landed, score = top(emb, w, rl, scale, n)
        shipped = calibrate(*args).thresholds
        guard = shipped.copy()  # the own side at GUARD_FRR: the cap calibrate puts on the negative side
        cal_emb, cal_lab, cal_rows, cal_rl, cal_n, imprinted = args
        own, trusted = calibration_scores(cal_emb, cal_lab, cal_rows, cal_rl, cal_n, imprinted)
        taught = sorted(set(taught_lab.tolist()))
        _taught_thresholds(guard, own, trusted, np.asarray(cal_lab), taught, GUARD_FRR, PRIOR)
        rules = {"shipped": shipped}
        for q in QUANTILES:
            per, glob = shipped.copy(), shipped.copy()
            on_taught = np.isin(landed, taught)
            for lab in taught:
                mine = score[landed == lab]
                if len(mine) >= 3:
                    per[lab] = max(per[lab], min(float(np.quantile(mine, q)), guard[lab]))
                if on_taught.any():
                    glob[lab] = max(glob[lab], min(float(np.quantile(score[on_taught], q)), guard[lab]))
            rules[f"per label, quantile {q}"], rules[f"global, quantile {q}"] = per, glob
        known = np.concatenate([sp["test"][c] for c in sp["a"]])
        truth = np.array([labels.index(names[int(c)]) for c in d.y[known]])
        untaught = np.flatnonzero(~np.isin(d.y, sp["a"]))
        best, s_known = top(d.emb[known], w, rl, scale, n)
        right = best == truth
        s_untaught = top(d.emb[untaught], w, rl, scale, n)[1]
        for name, thr in rules.items():
            pk = predict_open(d.emb[known], w, rl, scale, thr)[0]
            pu = predict_open(d.emb[untaught], w, rl, scale, thr)[0]
            turned = float(np.mean(pk[right] == -1))
            recs.setdefault(name, []).append(
                (
                    float(np.mean(pk == truth)),
                    turned,
                    float(np.mean(pu == -1)),
                    oracle_reject(s_known[right], s_untaught, max(turned, 1e-3)),
                )
            )
    for name, rows in recs.items():
        print(f"{name} | " + " | ".join(cell(np.array(rows)[:, i]) for i in range(4)))


def study_background(d: Data, rows_file: Path, seeds: int, shots_list: list[int]) -> None:
    rows = np.load(rows_file).astype(np.float64)
    if rows.shape[1] != d.emb.shape[1] or len(rows) <= d.n:
        raise ValueError(f"{rows_file}: {rows.shape} is not this model's pretraining rows")
    background = normalize(rows[d.n :])  # the named labels come first in pretraining
    n = d.n
    print(f"\n## Background rows: {len(background)} pretraining classes beside the {n} labels")
    print(
        "shots | lam | share turned away (oracle) | untaught digits rejected | doodles rejected"
        " | right->unknown of the labels (generated)"
    )
    recs: dict[tuple[int, float, float], list[tuple[float, ...]]] = {}
    for shots in shots_list:
        for seed in range(seeds):
            a, _, train, test = split(d, seed, shots)
            w, rl = with_taught(d, a, train)
            known = np.concatenate([test[c] for c in a])
            truth = np.concatenate([np.full(len(test[c]), n + i) for i, c in enumerate(a)])
            untaught = np.flatnonzero(~np.isin(d.y, a))

            def scores(
                x: np.ndarray, w: np.ndarray = w, rl: np.ndarray = rl
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                return (*top(x, w, rl, d.scale, n + 5), (normalize(x) @ background.T).max(1))

            pk, ck, bk = scores(d.emb[known])
            _, cu, bu = scores(d.emb[untaught])
            _, cn, bn = scores(d.novel)
            ps, cs, bs = scores(d.std)
            for lam in (0.0, 0.5, 1.0):
                sk = ck - lam * bk
                for frr in (0.02, 0.05):
                    t = np.quantile(sk[pk == truth], frr)
                    recs.setdefault((shots, lam, frr), []).append(
                        (
                            float(np.mean(cu - lam * bu < t)),
                            float(np.mean(cn - lam * bn < t)),
                            float(np.mean((cs - lam * bs)[ps == d.std_y] < t)),
                        )
                    )
    for (shots, lam, frr), v in sorted(recs.items()):
        print(f"{shots} | {lam} | {frr} | " + " | ".join(cell(np.array(v)[:, i]) for i in range(3)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--shots", default="3", help="drawings per taught digit, comma-separated")
    parser.add_argument("--part", choices=("chimeras", "background", "all"), default="all")
    parser.add_argument("--rows", type=Path, help="the model's pretraining rows (pretrain --rows)")
    args = parser.parse_args(argv)
    try:
        shots_list = [int(v) for v in args.shots.split(",")]
    except ValueError:
        print(f"Error: --shots must be comma-separated integers, got {args.shots!r}", file=sys.stderr)
        return 2
    if args.seeds < 1 or min(shots_list) < 1:
        print("Error: --seeds and --shots must be at least 1", file=sys.stderr)
        return 2
    parts = {"chimeras", "background"} if args.part == "all" else {args.part}
    if "background" in parts and (args.rows is None or not args.rows.is_file()):
        print("Error: the background part needs --rows FILE (pretrain --rows writes it)", file=sys.stderr)
        return 2
    if not (args.model / BACKBONE_FILE).is_file():
        print(f"Error: no model package at {args.model}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    try:
        d = Data(args.model, None, {"tta", "negatives"})  # the digits' pixels, never-seen doodles
    except RuntimeError as exc:  # scikit-learn missing (the bench extra)
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if "chimeras" in parts:
        for shots in shots_list:
            study_chimeras(d, args.model, args.seeds, shots)
    if "background" in parts:
        try:
            study_background(d, args.rows, args.seeds, shots_list)
        except ValueError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 2
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

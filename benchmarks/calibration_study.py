"""Measure the calibrated ``unknown``, the never-worse-than-imprinting choice and style rows / conflicts.

    python -m benchmarks.calibration_study DIR [--seeds N] [--part calib|select|style|all]

DIR holds the saved embeddings of the bundled backbone (written by the lead's ``emb.py`` / ``style.py``):
``digits_emb.npz`` (scikit-learn's 1,797 real handwritten digits rendered dark on light at 256x256
and preprocessed, plus the package's exemplars ``ex_emb``/``ex_idx``, head rows ``W`` and ``scale``),
``std_emb.npz`` (20 generated standard drawings of each of the 43 labels) and ``style_asterisk.npy`` /
``style_filledstar.npy`` (60 generated drawings of "star" drawn another way). Tables go to stdout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mlpersonalize.calibration import calibrate, label_cosines, label_probabilities, normalize, predict_open
from mlpersonalize.params import UpdateParams
from mlpersonalize.reteach import find_conflicts, judge_learning, plan_style_rows
from mlpersonalize.selection import choose_head

try:  # the trainer of the current update loop (numpy in, numpy out, ONNX Runtime training inside)
    from mlpersonalize.training import select_exemplars, train_head
except ImportError:  # after the restructure
    from mlpersonalize.update_algorithm import select_exemplars, train_head  # type: ignore[no-redef]

N_BASE = 43


class Data:
    def __init__(self, folder: Path) -> None:
        z = np.load(folder / "digits_emb.npz")
        self.emb, self.y = z["emb"].astype(np.float32), z["y"]
        self.W, self.scale = z["W"].astype(np.float32), float(z["scale"])
        self.ex, self.exi = z["ex_emb"].astype(np.float32), z["ex_idx"]
        std = np.load(folder / "std_emb.npz")
        self.labels = list(std.files)
        self.std = np.concatenate([std[name] for name in self.labels]).astype(np.float32)
        self.std_y = np.repeat(np.arange(N_BASE), [len(std[name]) for name in self.labels])
        self.styles = {
            n: np.load(folder / f"style_{n}.npy").astype(np.float32) for n in ("asterisk", "filledstar")
        }


def imprint_rows(emb: np.ndarray) -> np.ndarray:
    return normalize(normalize(emb).mean(axis=0)).astype(np.float32)


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


# --- 1. calibrated unknown --------------------------------------------------------------------


def study_calibration(d: Data, seeds: int) -> None:
    print(
        "\n## Calibrated unknown: real digits, round 1 (5 digits taught next to the 43 labels, 5 not taught)"
    )
    print("thresholds from the exemplar memory + the batch (the new rows' imprint optimism removed)")
    print(
        "head | target | shots | top-1 new | right->unknown new | right->unknown 43 (generated)"
        " | untaught digits rejected | oracle max-cos | fixed 0.5: rejected / right->unknown"
    )
    for head, target in (("imprinted", 0.05), ("imprinted", 0.03), ("trained", 0.05), ("trained", 0.03)):
        for shots in (3, 5):
            rec = []
            for seed in range(seeds):
                a, b, tr, _ = split(d, seed, shots)
                xs = np.concatenate([tr[c] for c in a])
                rows = np.concatenate([d.W, np.stack([imprint_rows(d.emb[tr[c]]) for c in a])])
                rl = np.arange(len(rows))
                cal_emb = np.concatenate([d.ex, d.emb[xs]])
                cal_lab = np.concatenate([d.exi, np.repeat(np.arange(N_BASE, N_BASE + 5), shots)])
                if head == "trained":
                    rows = np.asarray(
                        train_head(rows, d.scale, cal_emb, cal_lab, UpdateParams(seed=seed), N_BASE).weight
                    )
                imp = {N_BASE + i: len(d.ex) + np.arange(i * shots, (i + 1) * shots) for i in range(5)}
                cal = calibrate(cal_emb, cal_lab, rows, rl, len(rows), imp, target_frr=target)
                known = np.setdiff1d(np.flatnonzero(np.isin(d.y, a)), xs)
                truth = np.array([N_BASE + list(a).index(c) for c in d.y[known]])
                unknown = np.flatnonzero(np.isin(d.y, b))
                pk, _, sk = predict_open(d.emb[known], rows, rl, d.scale, cal.thresholds)
                raw = label_probabilities(d.emb[known], rows, rl, d.scale, len(rows))
                right = raw.argmax(1) == truth
                pu, _, su = predict_open(d.emb[unknown], rows, rl, d.scale, cal.thresholds)
                ps, _, _ = predict_open(d.std, rows, rl, d.scale, cal.thresholds)
                right_std = label_probabilities(d.std, rows, rl, d.scale, len(rows)).argmax(1) == d.std_y
                pmax_u = label_probabilities(d.emb[unknown], rows, rl, d.scale, len(rows)).max(1)
                rec.append(
                    (
                        right.mean(),
                        np.mean(pk[right] == -1),
                        np.mean(ps[right_std] == -1),
                        np.mean(pu == -1),
                        oracle_reject(sk[right], su),
                        np.mean(pmax_u < 0.5),
                        np.mean(raw.max(1)[right] < 0.5),
                    )
                )
            m, lo, hi = np.mean(rec, 0), np.min(rec, 0), np.max(rec, 0)
            print(
                f"{head:9s} | {target:6.2f} | {shots:5d} | "
                + " | ".join(f"{m[i]:.3f} [{lo[i]:.2f}-{hi[i]:.2f}]" for i in range(5))
                + f" | {m[5]:.3f} / {m[6]:.3f}"
            )
    print(
        "\n## Calibrated unknown: generated drawings, 8 of the 43 labels left out "
        "(their rows dropped) as unknowns"
    )
    print(
        "target | top-1 kept | right->unknown kept | left-out labels rejected"
        " | oracle max-cos | fixed 0.5 rejected"
    )
    for target in (0.05, 0.03):
        rec = []
        for seed in range(seeds):
            out = np.random.default_rng(100 + seed).choice(N_BASE, 8, replace=False)
            keep = np.setdiff1d(np.arange(N_BASE), out)
            remap = -np.ones(N_BASE, np.int64)
            remap[keep] = np.arange(len(keep))
            rows, rl = d.W[keep], np.arange(len(keep))
            ex_mask = np.isin(d.exi, keep)
            cal = calibrate(d.ex[ex_mask], remap[d.exi[ex_mask]], rows, rl, len(keep), target_frr=target)
            km, um = np.isin(d.std_y, keep), np.isin(d.std_y, out)
            truth = remap[d.std_y[km]]
            pk, _, sk = predict_open(d.std[km], rows, rl, d.scale, cal.thresholds)
            raw = label_probabilities(d.std[km], rows, rl, d.scale, len(keep))
            right = raw.argmax(1) == truth
            pu, _, su = predict_open(d.std[um], rows, rl, d.scale, cal.thresholds)
            pmax_u = label_probabilities(d.std[um], rows, rl, d.scale, len(keep)).max(1)
            rec.append(
                (
                    right.mean(),
                    np.mean(pk[right] == -1),
                    np.mean(pu == -1),
                    oracle_reject(sk[right], su),
                    np.mean(pmax_u < 0.5),
                )
            )
        m, lo, hi = np.mean(rec, 0), np.min(rec, 0), np.max(rec, 0)
        print(f"{target:6.2f} | " + " | ".join(f"{m[i]:.3f} [{lo[i]:.2f}-{hi[i]:.2f}]" for i in range(5)))


# --- 2. never worse than imprinting -----------------------------------------------------------


def update_round(
    d: Data,
    W: np.ndarray,
    ex: np.ndarray,
    exi: np.ndarray,
    xe: np.ndarray,
    xi: np.ndarray,
    method: str,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One update as the loop would run it; every user-taught label re-imprinted from its drawings."""
    n_old = len(W)
    new = sorted(set(xi.tolist()) - set(range(n_old)))
    pool = np.concatenate([xe, ex])
    lab = np.concatenate([xi, exi])
    in_batch = np.arange(len(lab)) < len(xi)

    def imprint(pos: np.ndarray) -> np.ndarray:
        taught = [*range(N_BASE, n_old), *new]
        rows = [imprint_rows(pool[pos][lab[pos] == r]) if np.any(lab[pos] == r) else W[r] for r in taught]
        return np.concatenate([W[:N_BASE], np.stack(rows)]).astype(np.float32)

    def train(pos: np.ndarray) -> np.ndarray:
        return train_head(imprint(pos), d.scale, pool[pos], lab[pos], UpdateParams(seed=seed), n_old).weight

    everything = np.arange(len(lab))
    name = method
    if method == "imprint":
        rows = imprint(everything)
    elif method == "train":
        rows = train(everything)
    else:
        choice = choose_head(
            pool, lab, in_batch, np.arange(n_old + len(new)), d.scale, imprint, train, seed=seed
        )
        rows, name = choice.rows, choice.name
    ex2, exi2 = select_exemplars(np.concatenate([ex, xe]), np.concatenate([exi, xi]), 20)
    return rows, ex2, exi2, name


def study_selection(d: Data, seeds: int) -> None:
    print("\n## Never worse than imprinting: real digits, two rounds of five labels, top-1 among all labels")
    print(
        "shots | method | round 1 new | round 2 new | round 1's labels after round 2 | chosen heads (r1/r2)"
    )

    def acc(rows: np.ndarray, idx: np.ndarray, truth: np.ndarray) -> float:
        p = label_probabilities(d.emb[idx], rows, np.arange(len(rows)), d.scale, len(rows))
        return float(np.mean(p.argmax(1) == truth))

    for shots in (3, 5):
        res: dict[str, np.ndarray] = {}
        for method in ("imprint", "train", "chosen"):
            rec, names = [], []
            for seed in range(seeds):
                a, b, tr, te = split(d, seed, shots)
                row = {c: N_BASE + i for i, c in enumerate([*a, *b])}
                x1 = np.concatenate([tr[c] for c in a])
                W1, ex1, exi1, n1 = update_round(
                    d, d.W, d.ex, d.exi, d.emb[x1], np.array([row[c] for c in d.y[x1]]), method, seed
                )
                x2 = np.concatenate([tr[c] for c in b])
                W2, _, _, n2 = update_round(
                    d, W1, ex1, exi1, d.emb[x2], np.array([row[c] for c in d.y[x2]]), method, seed
                )
                t1 = np.concatenate([te[c] for c in a])
                t2 = np.concatenate([te[c] for c in b])
                l1 = np.array([row[c] for c in d.y[t1]])
                l2 = np.array([row[c] for c in d.y[t2]])
                rec.append((acc(W1, t1, l1), acc(W2, t2, l2), acc(W2, t1, l1)))
                names.append(f"{n1[:1]}/{n2[:1]}")
            res[method] = np.array(rec)
            m, lo, hi = res[method].mean(0), res[method].min(0), res[method].max(0)
            print(
                f"{shots:5d} | {method:7s} | "
                + " | ".join(f"{m[i]:.3f} [{lo[i]:.2f}-{hi[i]:.2f}]" for i in range(3))
                + (" | " + " ".join(names) if method == "chosen" else "")
            )
        diff = res["chosen"] - res["imprint"]
        print(
            f"      | chosen - imprint, worst seed: {diff.min(0).round(3).tolist()}; "
            f"seeds worse by > 0.5 point: {int(np.sum(np.any(diff < -0.005, axis=1)))} of {seeds}"
        )


# --- 3. style rows, conflicts, learned nothing --------------------------------------------------


def study_style(d: Data, seeds: int) -> None:
    W, s = d.W, d.scale
    star, circle, sun = (d.labels.index(n) for n in ("star", "circle", "sun"))
    base_rl = np.arange(N_BASE)

    def reads(rows: np.ndarray, rl: np.ndarray, e: np.ndarray) -> np.ndarray:
        return label_probabilities(e, rows, rl, s, N_BASE).argmax(1)

    print(
        "\n## Conflicts: generated drawings labelled by a user (find_conflicts: read as another label "
        "with p >= 0.5 inside its 10th-percentile territory)"
    )
    cases: list[tuple[str, np.ndarray, int]] = [
        ("standard stars labelled circle", d.std[d.std_y == star], circle),
        ("standard circles labelled star", d.std[d.std_y == circle], star),
        ("asterisks labelled star", d.styles["asterisk"], star),
        ("filled stars labelled star", d.styles["filledstar"], star),
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
            d.emb[xs], np.repeat(np.arange(N_BASE, N_BASE + 5), 5), W, base_rl, s, d.ex, d.exi
        )
        digit_flags.append(mask.mean())
    print(
        f"{'real digits as new labels':32s} would-be conflicts "
        "(read as a known label, sure, in its territory): "
        f"{np.mean(digit_flags):.3f} of drawings"
    )

    print(
        "\n## Style rows: 5 drawings of a known label drawn another way, labelled with it; "
        "held-out = the other 55"
    )
    print(
        "style | method | held-out style -> label (before) | standard drawings of the label"
        " | all 43 labels (before) | learned?"
    )

    def train_fn(start: np.ndarray, e: np.ndarray, t: np.ndarray, seed: int, anchor: int) -> np.ndarray:
        return np.asarray(train_head(start, s, e, t, UpdateParams(seed=seed), anchor).weight)

    before_all = float(np.mean(reads(W, base_rl, d.std) == d.std_y))
    for style, drawings in d.styles.items():
        for method in ("one row", "style row"):
            rec, verdicts = [], []
            for seed in range(seeds):
                perm = np.random.default_rng(seed).permutation(len(drawings))
                batch, held = drawings[perm[:5]], drawings[perm[5:]]
                lab = np.full(5, star)
                before = float(np.mean(reads(W, base_rl, held) == star))
                if method == "one row":
                    rows, rl = (
                        train_fn(
                            W, np.concatenate([d.ex, batch]), np.concatenate([d.exi, lab]), seed, N_BASE
                        ),
                        base_rl,
                    )
                else:
                    _, mask = find_conflicts(batch, lab, W, base_rl, s, d.ex, d.exi)
                    plan = plan_style_rows(batch, lab, W, base_rl, s, skip=mask)
                    target = lab.copy()
                    for r, pos in plan.added.items():
                        target[pos] = r
                    rows = train_fn(
                        plan.rows,
                        np.concatenate([d.ex, batch]),
                        np.concatenate([d.exi, target]),
                        seed,
                        N_BASE,
                    )
                    rl = plan.row_label
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
                f"{style:10s} | {method:9s} | {m[1]:.3f} ({m[0]:.3f}) | {m[2]:.3f} | "
                f"{m[3]:.3f} ({before_all:.3f}) | "
                f"{sum(verdicts)}/{len(verdicts)}"
            )
    swapped = d.std[d.std_y == star]
    rows = train_fn(
        W, np.concatenate([d.ex, swapped]), np.concatenate([d.exi, np.full(len(swapped), circle)]), 0, N_BASE
    )
    conflicts, _ = find_conflicts(swapped, np.full(len(swapped), circle), W, base_rl, s, d.ex, d.exi)
    verdict = judge_learning(
        reads(W, base_rl, swapped) == circle,
        reads(rows, base_rl, swapped) == circle,
        np.full(len(swapped), circle),
        d.labels,
        conflicts,
    )
    print(f"\nstars labelled circle, trained as today: learned={verdict.learned}; reason: {verdict.reason}")
    cos = label_cosines(d.styles["asterisk"], W, base_rl, N_BASE)
    print(
        f"asterisks: median cosine to the sun row {np.median(cos[:, sun]):.3f}, "
        f"to the star row {np.median(cos[:, star]):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--part", choices=("calib", "select", "style", "all"), default="all")
    args = parser.parse_args()
    d = Data(args.folder)
    if args.part in ("calib", "all"):
        study_calibration(d, args.seeds)
    if args.part in ("select", "all"):
        study_selection(d, args.seeds)
    if args.part in ("style", "all"):
        study_style(d, args.seeds)


if __name__ == "__main__":
    main()

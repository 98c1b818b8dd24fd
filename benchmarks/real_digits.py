"""Real human drawings: scikit-learn's handwritten digits, taught through the CLI as a user would.

    python -m benchmarks.real_digits [--quick | --smoke | --full] [--model PATH] [--json OUT]

scikit-learn ships 1,797 handwritten digits by 43 writers (``sklearn.datasets.load_digits``,
8×8, 16 levels; inside the wheel, no network). Each is rendered as a user's drawing arrives:
upsampled smoothly to 256×256, sharpened into pen-like edges, dark strokes on a transparent
canvas (every other drawing) or on a light one, a PNG in a folder named by its label (emoji
keycaps ``0️⃣`` … ``9️⃣``). The bundled model's pretraining uses no digits of any kind, so
this is a family it never saw.

Protocol per seed (different drawings and test sets per seed) and per 1, 3 or 5 drawings per
label, all through the CLI with an isolated ``MLPERSONALIZE_HOME``: round 1 ``prepare`` +
``update`` five digits on the original package; round 2 ``update`` the personalized copy with the
other five; after each round ``predict --json`` every held-out drawing among ALL of the model's
labels. ``unknown`` counts wrong; its rate is reported. Open set: the share of drawings of labels
the model does not know that come out ``unknown`` (the five digits not yet taught, after round 1;
procedural classes that were never pretrained on nor taught, after both rounds).

Beside ``update``, on the same embeddings (``images.load``, the path ``predict`` takes):
``imprint`` (each new label's row = its normalised mean embedding next to the trained rows,
the model's logit scale and threshold), ``knn`` (k = 3 over the package's exemplars and the new
drawings), ``naive`` (random new rows, the head fine-tuned on the new drawings only, the
manifest's update parameters) and ``ncm10`` (nearest class mean among the ten digit labels
alone: the backbone's ceiling), with ``ncm10_pixels`` (the same on preprocessed pixels).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import BUNDLED, check, cli, mean_std, run_child, shown_path

KEYCAP = "\ufe0f\u20e3"
LABELS = tuple(f"{d}{KEYCAP}" for d in range(10))
CANVAS = 256
K = 3
ROUND = 5  # new labels per round
REFUSED = 6  # `update`'s exit code when its guard refuses the result (or conflicts)
LEARNED_NOTHING = 9  # `update` saved the model but learned nothing on the batch


@dataclass(frozen=True)
class Sizes:
    name: str
    seeds: int
    shots: tuple[int, ...]
    test_per_label: int
    open_set_procedural: int  # procedural drawings of never-seen classes (open-set side)


SMOKE = Sizes("smoke", seeds=1, shots=(1,), test_per_label=2, open_set_procedural=4)
QUICK = Sizes("quick", seeds=5, shots=(1, 3, 5), test_per_label=20, open_set_procedural=40)
FULL = Sizes("full", seeds=10, shots=(1, 3, 5), test_per_label=60, open_set_procedural=100)
MODES = {s.name: s for s in (SMOKE, QUICK, FULL)}


def log(message: str) -> None:
    sys.stderr.write(f"[real-digits {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def available() -> bool:
    """Whether scikit-learn (the bench extra) is importable."""
    import importlib.util

    return importlib.util.find_spec("sklearn") is not None


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, 8, 8) in [0, 1], digit int64 (N,)) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits as sk_load
    except ImportError as exc:  # the bench extra
        raise RuntimeError("scikit-learn is missing: pip install -e '.[bench]'") from exc
    data = sk_load()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


def render(digit_image: np.ndarray, transparent: bool, canvas: int = CANVAS):  # type: ignore[no-untyped-def]
    """An 8×8 digit as a user's drawing: smooth upsampling, pen-like edges, dark strokes.

    The 8×8 grid is bicubic-upsampled to 75% of the canvas, then a smooth step around mid ink
    turns the blur into strokes with soft edges; the strokes are dark (near black) on a
    transparent (RGBA) or a light gray canvas.
    """
    from PIL import Image

    side = int(canvas * 0.75)
    big = Image.fromarray(digit_image.astype(np.float32), mode="F").resize(
        (side, side), Image.Resampling.BICUBIC
    )
    ink = np.clip((np.asarray(big, np.float32) - 0.3) / 0.3, 0.0, 1.0)
    ink = ink * ink * (3 - 2 * ink)  # smoothstep: pen edges, not an 8x8 blur
    full = np.zeros((canvas, canvas), np.float32)
    margin = (canvas - side) // 2
    full[margin : margin + side, margin : margin + side] = ink
    alpha = (full * 255).round().astype(np.uint8)
    if transparent:
        rgba = np.zeros((canvas, canvas, 4), np.uint8)
        rgba[..., :3] = 20
        rgba[..., 3] = alpha
        return Image.fromarray(rgba, mode="RGBA")
    paper = 245 - (full * 225).round().astype(np.uint8)
    return Image.fromarray(paper, mode="L")


@dataclass
class Split:
    """One seed's drawings: indices into the data set per digit (train: up to 5; test)."""

    seed: int
    order: list[int]  # the ten digits: order[:5] taught in round 1, order[5:] in round 2
    train: dict[int, list[int]]
    test: dict[int, list[int]]


def split(digits: np.ndarray, seed: int, max_shots: int, test_per_label: int) -> Split:
    rng = np.random.default_rng(10_000 + seed)
    order = [int(d) for d in rng.permutation(10)]
    train, test = {}, {}
    for d in range(10):
        pool = rng.permutation(np.flatnonzero(digits == d))
        train[d] = [int(i) for i in pool[:max_shots]]
        test[d] = [int(i) for i in pool[max_shots : max_shots + test_per_label]]
    return Split(seed, order, train, test)


def write_drawings(folder: Path, images: np.ndarray, picks: dict[int, list[int]]) -> dict[str, int]:
    """PNG files ``folder/<keycap label>/<index>.png``; returns file path → digit."""
    truth: dict[str, int] = {}
    for d, indices in picks.items():
        sub = folder / LABELS[d]
        sub.mkdir(parents=True, exist_ok=True)
        for i in indices:
            path = sub / f"{i}.png"
            render(images[i], transparent=i % 2 == 0).save(path)
            truth[str(path)] = d
    return truth


def write_procedural(folder: Path, count: int, seed: int) -> list[str]:
    """Drawings of procedural classes never used in pretraining (ids far beyond its range)."""
    from mlpersonalize.sample.doodles import procedural_labels, render, sample_rng

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, label in enumerate(procedural_labels(count, start=1_000_000 + 1000 * seed)):
        path = folder / f"{n}.png"
        render(label, sample_rng(label, 0, seed), 112).save(path)
        out.append(str(path))
    return out


def predict(model: str, folder: Path, env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """``mlpersonalize predict --json`` over a folder: file → (label or "unknown", the top-1 label)."""
    run = check(run_child(cli("predict", str(folder), "--model", model, "--json"), env=env), "predict")
    out = {}
    for line in run.stdout.splitlines():
        if line.strip():
            entry = json.loads(line)
            top = entry.get("top") or [{"label": entry.get("label", "error")}]
            out[entry["file"]] = (entry.get("label", "error"), top[0]["label"])
    return out


def scores(pred: dict[str, tuple[str, str]], truth: dict[str, int]) -> dict[str, float]:
    """top-1 (unknown counts wrong), the unknown rate, the top-1 with no ``unknown`` at all, and the
    share of drawings whose top-1 is right that came out ``unknown`` (right answers turned away)."""
    labels = [pred[f][0] for f in truth]
    tops = [pred[f][1] for f in truth]
    right = [label == LABELS[d] for label, d in zip(labels, truth.values(), strict=True)]
    top_right = np.array([top == LABELS[d] for top, d in zip(tops, truth.values(), strict=True)])
    unknown = np.array([label == "unknown" for label in labels])
    return {
        "top1": float(np.mean(right)),
        "unknown": float(np.mean(unknown)),
        "top1_no_unknown": float(np.mean(top_right)),
        "right_to_unknown": float(np.mean(unknown[top_right])) if top_right.any() else float("nan"),
    }


def unknown_share(pred: dict[str, tuple[str, str]], files: Sequence[str]) -> float:
    return float(np.mean([pred[f][0] == "unknown" for f in files])) if files else float("nan")


# --- in-process baselines on the same embeddings ---------------------------------------------


def _softmax_predict(emb: np.ndarray, weight: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    w = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    logits = scale * (e @ w.T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return p.argmax(axis=1), p.max(axis=1)


def _score_rows(pred: np.ndarray, conf: np.ndarray, truth: np.ndarray, threshold: float) -> dict[str, float]:
    accepted = conf >= threshold
    return {
        "top1": float(np.mean((pred == truth) & accepted)),
        "top1_no_threshold": float(np.mean(pred == truth)),
        "unknown": float(np.mean(~accepted)),
    }


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ncm(train: np.ndarray, train_y: np.ndarray, test: np.ndarray, test_y: np.ndarray) -> float:
    """Nearest class mean (cosine) among the classes of ``train_y``."""
    classes = np.unique(train_y)
    means = _unit(np.stack([_unit(train[train_y == c]).mean(0) for c in classes]))
    return float(np.mean(classes[np.argmax(_unit(test) @ means.T, axis=1)] == test_y))


class Baselines:
    """Embeddings through the model's backbone and the package's trained head and exemplars."""

    def __init__(self, model: Path) -> None:
        import onnx

        from mlpersonalize.heads.cosine import head_weight
        from mlpersonalize.manifest import BACKBONE_FILE, HEAD_FILE
        from mlpersonalize.package import load_package

        package = load_package(model)
        self.manifest = package.manifest
        self.backbone = (package.path / BACKBONE_FILE).read_bytes()
        self.weight = head_weight(onnx.load(str(package.path / HEAD_FILE))).astype(np.float32)
        self.scale = float(self.manifest.logit_scale)
        self.threshold = float(self.manifest.unknown_threshold)
        self.exemplars, self.exemplar_idx = package.exemplars()
        self.n_old = len(self.manifest.labels)

    def pixels(self, files: Sequence[str]) -> np.ndarray:
        from mlpersonalize.images import load

        c = self.manifest.constraint
        return np.stack([load(f, c) for f in files]) if files else np.zeros((0, *c.shape), np.uint8)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        from mlpersonalize.embedding import embed

        return np.asarray(embed(self.backbone, pixels, self.manifest.constraint), np.float32)

    def naive_fit(self, weight0: np.ndarray, emb: np.ndarray, idx: np.ndarray) -> np.ndarray:
        from mlpersonalize import engines, fitting
        from mlpersonalize.heads.base import StoredHead
        from mlpersonalize.heads.cosine import WEIGHT, CosineHead
        from mlpersonalize.updater import UpdateOptions

        params = UpdateOptions().params(self.manifest.update_defaults, self.manifest.update_ranges)
        stored = StoredHead(np.asarray(weight0, np.float32), self.scale)
        session = engines.get().open(CosineHead.graph(stored), CosineHead.trainable(stored), params)
        try:
            fitting.train(session, emb, idx, params)  # no anchor, no rehearsal: the naive baseline
            return np.asarray(session.parameters()[WEIGHT], np.float32)
        finally:
            session.close()


def run_seed(
    model: Path, sizes: Sizes, seed: int, images: np.ndarray, digits: np.ndarray, work: Path
) -> list[dict[str, Any]]:
    """Every shots count for one seed: CLI rounds, baselines and the open-set shares."""
    base = Baselines(model)
    max_shots = max(sizes.shots)
    sp = split(digits, seed, max_shots, sizes.test_per_label)
    r1, r2 = sp.order[:ROUND], sp.order[ROUND:]
    test_dir = work / f"seed{seed}" / "test"
    truth = write_drawings(test_dir, images, sp.test)
    proc_files = write_procedural(work / f"seed{seed}" / "procedural", sizes.open_set_procedural, seed)
    test_files = list(truth)
    test_y = np.array([truth[f] for f in test_files])
    test_emb = base.embed(base.pixels(test_files))
    proc_emb = base.embed(base.pixels(proc_files))
    train_files_all = {d: [] for d in range(10)}  # type: dict[int, list[str]]
    train_dir = work / f"seed{seed}" / "train"
    for d in range(10):
        for n, i in enumerate(sp.train[d]):
            sub = train_dir / f"shot{n}" / LABELS[d]
            sub.mkdir(parents=True, exist_ok=True)
            path = sub / f"{i}.png"
            render(images[i], transparent=i % 2 == 0).save(path)
            train_files_all[d].append(str(path))
    train_px = {d: base.pixels(train_files_all[d]) for d in range(10)}  # each file decoded once
    train_emb = {d: base.embed(train_px[d]) for d in range(10)}
    records = []
    for shots in sizes.shots:
        rec: dict[str, Any] = {
            "seed": seed,
            "shots": shots,
            "round1": [LABELS[d] for d in r1],
            "update_refused": 0,
        }
        home = work / f"seed{seed}" / f"home{shots}"
        env = {"MLPERSONALIZE_HOME": str(home)}  # every command names its model with --model
        in_r1 = np.isin(test_y, r1)
        in_r2 = np.isin(test_y, r2)
        files_r1 = [f for f in test_files if truth[f] in r1]
        files_r2 = [f for f in test_files if truth[f] in r2]

        # --- the CLI: prepare + update, two rounds; predict after each ---
        name = base.manifest.name
        for rnd, taught in ((1, r1), (2, r2)):
            batch_dir = work / f"seed{seed}" / f"batch{shots}-{rnd}"
            for d in taught:
                (batch_dir / LABELS[d]).mkdir(parents=True, exist_ok=True)
                for f in train_files_all[d][:shots]:
                    os.link(f, batch_dir / LABELS[d] / Path(f).name)
            batch = batch_dir.with_suffix(".npz")
            target = str(model) if rnd == 1 else name
            prepare = cli("prepare", str(batch_dir), "-o", str(batch), "--force", "--model", target)
            check(run_child(prepare, env=env), "prepare")
            update = run_child(cli("update", str(batch), "--model", target), env=env)
            if update.returncode == REFUSED:  # the guard kept the model: counted, then forced so the
                rec["update_refused"] = rec.get("update_refused", 0) + 1  # protocol can go on
                update = run_child(cli("update", str(batch), "--model", target, "--force"), env=env)
            if update.returncode == LEARNED_NOTHING:  # saved, but judged to have learned nothing
                rec["update_learned_nothing"] = rec.get("update_learned_nothing", 0) + 1
            else:
                check(update, f"update round {rnd}")
            pred = predict(name, test_dir, env)
            pred.update(predict(name, Path(proc_files[0]).parent, env))
            if rnd == 1:
                rec["update_r1_new"] = scores(pred, {f: truth[f] for f in files_r1})
                rec["update_open_untaught_digits"] = unknown_share(pred, files_r2)
                rec["update_open_procedural_r1"] = unknown_share(pred, proc_files)
            else:
                rec["update_r2_new"] = scores(pred, {f: truth[f] for f in files_r2})
                rec["update_r2_old"] = scores(pred, {f: truth[f] for f in files_r1})
                given_r1 = [pred[f][0] in {LABELS[d] for d in r1} for f in files_r2]
                rec["update_r2_new_given_r1_label"] = float(np.mean(given_r1))
                rec["update_open_procedural_r2"] = unknown_share(pred, proc_files)

        # --- baselines over the same embeddings ---
        n_old = base.n_old
        emb1 = np.concatenate([train_emb[d][:shots] for d in r1])
        idx1 = np.repeat(np.arange(ROUND), shots) + n_old
        emb2 = np.concatenate([train_emb[d][:shots] for d in r2])
        idx2 = np.repeat(np.arange(ROUND), shots) + n_old + ROUND
        pos = {d: n_old + i for i, d in enumerate(r1 + r2)}
        t_idx = np.array([pos[d] for d in test_y])
        means1 = np.stack([_unit(_unit(train_emb[d][:shots]).mean(0)) for d in r1])
        means2 = np.stack([_unit(_unit(train_emb[d][:shots]).mean(0)) for d in r2])
        w_old = _unit(base.weight)
        w1 = np.concatenate([w_old, means1])
        w2 = np.concatenate([w1, means2])
        for tag, (wa, wb) in {"imprint": (w1, w2)}.items():
            p1, c1 = _softmax_predict(test_emb[in_r1], wa, base.scale)
            rec[f"{tag}_r1_new"] = _score_rows(p1, c1, t_idx[in_r1], base.threshold)
            p, c = _softmax_predict(test_emb[in_r2], wa, base.scale)
            rec[f"{tag}_open_untaught_digits"] = float(np.mean(c < base.threshold))
            p, c = _softmax_predict(proc_emb, wa, base.scale)
            rec[f"{tag}_open_procedural_r1"] = float(np.mean(c < base.threshold))
            p, c = _softmax_predict(test_emb[in_r2], wb, base.scale)
            rec[f"{tag}_r2_new"] = _score_rows(p, c, t_idx[in_r2], base.threshold)
            p, c = _softmax_predict(test_emb[in_r1], wb, base.scale)
            rec[f"{tag}_r2_old"] = _score_rows(p, c, t_idx[in_r1], base.threshold)
            p, c = _softmax_predict(proc_emb, wb, base.scale)
            rec[f"{tag}_open_procedural_r2"] = float(np.mean(c < base.threshold))

        from .quality import knn_predict

        mem1 = np.concatenate([base.exemplars, emb1])
        mi1 = np.concatenate([base.exemplar_idx, idx1])
        mem2, mi2 = np.concatenate([mem1, emb2]), np.concatenate([mi1, idx2])
        n1, n2 = n_old + ROUND, n_old + 2 * ROUND
        rec["knn_r1_new"] = {
            "top1": float(np.mean(knn_predict(mem1, mi1, test_emb[in_r1], n1) == t_idx[in_r1]))
        }
        rec["knn_r2_new"] = {
            "top1": float(np.mean(knn_predict(mem2, mi2, test_emb[in_r2], n2) == t_idx[in_r2]))
        }
        rec["knn_r2_old"] = {
            "top1": float(np.mean(knn_predict(mem2, mi2, test_emb[in_r1], n2) == t_idx[in_r1]))
        }

        rng = np.random.default_rng(seed)
        dim = base.weight.shape[1]
        naive1 = base.naive_fit(
            np.concatenate([base.weight, rng.standard_normal((ROUND, dim)).astype(np.float32)]), emb1, idx1
        )
        naive2 = base.naive_fit(
            np.concatenate([naive1, rng.standard_normal((ROUND, dim)).astype(np.float32)]), emb2, idx2
        )
        p, c = _softmax_predict(test_emb[in_r1], naive1, base.scale)
        rec["naive_r1_new"] = _score_rows(p, c, t_idx[in_r1], base.threshold)
        p, c = _softmax_predict(test_emb[in_r2], naive2, base.scale)
        rec["naive_r2_new"] = _score_rows(p, c, t_idx[in_r2], base.threshold)
        p, c = _softmax_predict(test_emb[in_r1], naive2, base.scale)
        rec["naive_r2_old"] = _score_rows(p, c, t_idx[in_r1], base.threshold)

        all_emb = np.concatenate([train_emb[d][:shots] for d in range(10)])
        all_y = np.repeat(np.arange(10), shots)
        rec["ncm10"] = ncm(all_emb, all_y, test_emb, test_y)
        test_px = base.pixels(test_files).reshape(len(test_files), -1).astype(np.float32)
        all_px = np.concatenate([train_px[d][:shots] for d in range(10)]).reshape(len(all_y), -1)
        rec["ncm10_pixels"] = ncm(all_px.astype(np.float32) - 0.5, all_y, test_px - 0.5, test_y)
        records.append(rec)
    return records


def _flatten(rec: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in rec.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                out[f"{key}.{sub}"] = v
        elif isinstance(value, float):
            out[key] = value
    return out


def summarize(records: list[dict[str, Any]], shots_list: Sequence[int]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of every measure, per shots count."""
    out = []
    for shots in shots_list:
        group = [r for r in records if r["shots"] == shots]
        flat = [_flatten(r) for r in group]
        if not flat:
            continue
        row: dict[str, Any] = {
            "shots": shots,
            "seeds": len(flat),
            "update_refused_rounds": sum(r["update_refused"] for r in group),
        }
        for key in flat[0]:
            row[key] = mean_std([f[key] for f in flat])
        out.append(row)
    return out


def run(model: Path, sizes: Sizes, logger: Callable[[str], None] = log) -> dict[str, Any]:
    """The whole benchmark on ``model``; a JSON-able dict (summary + per-seed runs)."""
    images, digits = load_digits()
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mlp-digits-") as tmp:
        for seed in range(sizes.seeds):
            records += run_seed(model, sizes, seed, images, digits, Path(tmp))
            logger(f"real digits: seed {seed + 1}/{sizes.seeds} done")
    from mlpersonalize.package import load_package

    manifest = load_package(model).manifest
    return {
        "sizes": asdict(sizes),
        "model": {"path": shown_path(model), "model_id": manifest.model_id, "labels": len(manifest.labels)},
        "knn_k": K,
        "summary": summarize(records, sizes.shots),
        "runs": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.real_digits", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group()
    for name in MODES:
        mode.add_argument(f"--{name}", dest="mode", action="store_const", const=name)
    parser.set_defaults(mode="quick")
    parser.add_argument("--model", type=Path, default=BUNDLED)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if not (args.model / "manifest.json").is_file():
        sys.stderr.write(f"Error: no model package at {args.model} (manifest.json missing)\n")
        return 1
    results = run(args.model.resolve(), MODES[args.mode])
    text = json.dumps(results, indent=1, default=float)
    if args.json:
        args.json.write_text(text + "\n")
    for row in results["summary"]:
        keys = [k for k in row if isinstance(row[k], dict)]
        print(f"{row['shots']} drawings per label ({row['seeds']} seeds):")
        for k in keys:
            print(f"  {k}: {row[k]['mean']:.3f} ± {row[k]['std']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --- BENCHMARKS.md -----------------------------------------------------------------------------

BEFORE = Path(__file__).with_name("real_digits_before.json")
_METHODS = (
    ("update", "`update` (CLI)"),
    ("imprint", "imprinting alone"),
    ("knn", "k-NN (k = 3)"),
    ("naive", "naive fine-tune"),
)


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not value:
        return "–"
    return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}"


def _with_unknown(row: dict[str, Any], key: str) -> str:
    top1 = _cell(row, f"{key}.top1")
    if f"{key}.unknown" not in row:
        return top1
    return f"{top1} ({_cell(row, f'{key}.unknown')} unk.)"


def markdown_section(results: dict[str, Any] | None, before: dict[str, Any] | None = None) -> list[str]:
    """The real-drawing section of BENCHMARKS.md (and the bundled model before, when recorded)."""
    if not results:
        return []
    if "skipped" in results:
        return ["## 0. Real human drawings", "", f"Not measured: {results['skipped']}.", ""]
    sizes = results["sizes"]
    lines = [
        "## 0. Real human drawings: scikit-learn's handwritten digits through the CLI",
        "",
        "`python -m benchmarks.real_digits` (also a section of `make bench`). scikit-learn's 1,797 "
        "handwritten 8×8 digits (43 writers), each upsampled smoothly to a 256×256 PNG of dark strokes "
        "on a transparent or light canvas, in folders named `0️⃣` … `9️⃣`. The bundled model's "
        "pretraining uses no digits of any kind. Per seed: other drawings and test sets, the ten digits "
        "in another order; round 1 `prepare` + `update` five digits on the original package, round 2 "
        "`update`s the personalized copy with the other five; after each round `predict --json` scores "
        f"{sizes['test_per_label']} held-out drawings per digit among all of the model's labels, "
        "`unknown` counted wrong (its rate in brackets). Baselines on the same embeddings: imprinting "
        "alone (normalised mean embeddings next to the trained rows, the model's logit scale and "
        "threshold), k-NN over the package exemplars and the new drawings, naive fine-tuning (random "
        "new rows, new drawings only, the manifest's update parameters). Mean ± std over "
        f"{sizes['seeds']} seeds; model id `{results['model']['model_id']}`.",
        "",
        "| drawings per label | method | round 1: new labels % | round 2: new labels % "
        "| round 2: round 1's labels % |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in results["summary"]:
        for key, name in _METHODS:
            lines.append(
                f"| {row['shots']} | {name} | {_with_unknown(row, f'{key}_r1_new')} "
                f"| {_with_unknown(row, f'{key}_r2_new')} | {_with_unknown(row, f'{key}_r2_old')} |"
            )
    refused = sum(row.get("update_refused_rounds", 0) for row in results["summary"])
    lines += [
        "",
        f"`update`'s guard refused {refused} of {2 * sum(r['seeds'] for r in results['summary'])} rounds "
        "(a refused round is counted, then run again with `--force` so the protocol can go on).",
        "",
        "The backbone's ceiling: nearest class mean among the ten digit labels alone (cosine, "
        "normalised embeddings), and the same on the preprocessed pixels. Open set: the share of "
        "drawings of labels the model does not know that `predict` calls `unknown` (after round 1: the "
        "five digits not yet taught; procedural classes never pretrained on nor taught, after rounds "
        "1 and 2; higher is better). The other side: `update`'s top-1 with no `unknown` at all (the "
        "label `predict --json` ranks first), and the share of those right answers that came out "
        "`unknown` (round 1's labels after round 1 / round 2's new labels / round 1's after round 2).",
        "",
        "| drawings per label | NCM, 10 digits, embedding % | NCM, pixels % | untaught digits → unknown % "
        "(update / imprint) | procedural → unknown %, round 1 / round 2 (update) "
        "| `update` top-1, no `unknown` % | right answers → `unknown` % |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    rounds = ("update_r1_new", "update_r2_new", "update_r2_old")
    for row in results["summary"]:
        lines.append(
            f"| {row['shots']} | {_cell(row, 'ncm10')} | {_cell(row, 'ncm10_pixels')} "
            f"| {_cell(row, 'update_open_untaught_digits')} / {_cell(row, 'imprint_open_untaught_digits')} "
            f"| {_cell(row, 'update_open_procedural_r1')} / {_cell(row, 'update_open_procedural_r2')} "
            f"| {' / '.join(_cell(row, f'{key}.top1_no_unknown') for key in rounds)} "
            f"| {' / '.join(_cell(row, f'{key}.right_to_unknown') for key in rounds)} |"
        )
    lines.append("")
    if before and before.get("summary"):
        lines += [
            "Before the glyph-pretrained backbone (the previously bundled model, id "
            f"`{before['model']['model_id']}`, same protocol and sizes, measured "
            f"{before.get('measured', '')}):",
            "",
            "| drawings per label | NCM 10 digits % | `update` round 1 % | round 2 new % "
            "| round 2 old % | imprinting round 1 % |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in before["summary"]:
            lines.append(
                f"| {row['shots']} | {_cell(row, 'ncm10')} | {_with_unknown(row, 'update_r1_new')} "
                f"| {_with_unknown(row, 'update_r2_new')} | {_with_unknown(row, 'update_r2_old')} "
                f"| {_with_unknown(row, 'imprint_r1_new')} |"
            )
        lines.append("")
    return lines

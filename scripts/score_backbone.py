"""Score a backbone on the real-digit check of docs/backbone-experiments.md (issue 12, item 4).

    python scripts/score_backbone.py PACKAGE_OR_BACKBONE [...] [--draws 100] [--against BASE] [--json OUT]
                                     [--layers]

Each argument is a package folder (its ``backbone.onnx``) or a backbone ONNX file. The 1,797
scikit-learn digits are rendered exactly as ``benchmarks/real_digits.py`` renders them (every
other one on a transparent canvas, the rest on a light one), preprocessed by ``images.preprocess``
(the path ``predict`` takes) and embedded once. Then, for NumPy seeds 0 … draws-1, 1, 3 or 5
random drawings per digit form each digit's mean embedding and every other drawing is classified
by the nearest class mean (cosine, normalised embeddings) among the ten digits. Printed: mean ±
std of that accuracy over the draws, the same draws for every backbone; with ``--against BASE``,
also each backbone's per-draw difference from BASE (mean ± std, and the share of draws it wins).

Open set, on the same seeds (``untaught-digit oracle``): five random digits are taught (the mean of
3 or 5 drawings each), the other five are unknowns; every drawing's score is its largest cosine to
a taught digit's mean; one threshold is set so that 5% of the right answers among the taught
digits' other drawings fall below it (an oracle: set on the test itself, ``oracle_reject`` of
``benchmarks/calibration_study.py``), and the share of the untaught digits' drawings below it is
printed. It measures how far the backbone separates digits it was never taught from taught ones;
``python -m benchmarks.calibration_study --part calib`` measures the same next to the model's labels.

``--layers`` scores the backbone's inner features the same way, in place of the embedding: each conv
block's output averaged over its positions (also square-rooted, a power transform), the flattened
last block, and the embedding joined with the third block's average (docs/unknown.md, "Three
more levers").

The digits are only ever a score: nothing here trains anything.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.calibration_study import oracle_reject
from benchmarks.real_digits import load_digits, render
from mlpersonalize import _ort
from mlpersonalize.images import ImageConstraint, preprocess, to_model_input

CONSTRAINT = ImageConstraint(width=28, height=28, color="gray", scale=1 / 255, bias=(0.0,), ink="light")
SHOTS = (1, 3, 5)
ORACLE_SHOTS = (3, 5)


def digit_pixels() -> tuple[np.ndarray, np.ndarray]:
    """All digits as the model's uint8 input (N, 28, 28, 1), and their digit."""
    from PIL import Image

    images, digits = load_digits()
    out = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        render(image, transparent=i % 2 == 0).save(buffer, format="PNG")  # as a user's file arrives
        buffer.seek(0)
        out.append(preprocess(Image.open(buffer), CONSTRAINT))
    return np.stack(out), digits


def embed(backbone: Path, pixels: np.ndarray) -> np.ndarray:
    session = _ort.inference_session(backbone.read_bytes(), threads=1)
    parts = [
        session.run(["embedding"], {"image": to_model_input(pixels[i : i + 512], CONSTRAINT)})[0]
        for i in range(0, len(pixels), 512)
    ]
    feats = np.concatenate(parts).astype(np.float64)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def ncm(feats: np.ndarray, digits: np.ndarray, shots: int, draws: int) -> np.ndarray:
    """The ten-digit nearest-class-mean accuracy of each of ``draws`` seeds."""
    accs = []
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        train = np.zeros(len(digits), bool)
        for d in range(10):
            train[rng.choice(np.flatnonzero(digits == d), size=shots, replace=False)] = True
        means = np.stack([feats[train & (digits == d)].mean(0) for d in range(10)])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        pred = np.argmax(feats[~train] @ means.T, axis=1)
        accs.append(float(np.mean(pred == digits[~train])))
    return np.array(accs)


def untaught_oracle(feats: np.ndarray, digits: np.ndarray, shots: int, draws: int) -> np.ndarray:
    """Per draw: the share of untaught digits' drawings an oracle max-cosine threshold rejects."""
    out = []
    for seed in range(draws):
        rng = np.random.default_rng([seed, 0x0DD])
        taught = rng.permutation(10)[:5]
        train = np.zeros(len(digits), bool)
        for d in taught:
            train[rng.choice(np.flatnonzero(digits == d), size=shots, replace=False)] = True
        means = np.stack([feats[train & (digits == d)].mean(0) for d in taught])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        known = ~train & np.isin(digits, taught)
        cos_known = feats[known] @ means.T
        right = taught[np.argmax(cos_known, axis=1)] == digits[known]
        score_unknown = (feats[~np.isin(digits, taught)] @ means.T).max(1)
        out.append(oracle_reject(cos_known.max(1)[right], score_unknown))
    return np.array(out)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def layer_features(backbone: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The backbone's inner features (``--layers``), each normalised, by name."""
    import onnx
    from onnx import TensorProto, helper

    graph = onnx.load(str(backbone))
    names = ["r2", "r3", "flat", "embedding"]  # network.build's names: block outputs, flattened, embedding
    made = {o for node in graph.graph.node for o in node.output}
    if not set(names) <= made:
        raise ValueError(f"{backbone} is not a network.build backbone (no {sorted(set(names) - made)})")
    for name in names[:-1]:
        graph.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = _ort.inference_session(graph.SerializeToString(), threads=1)
    runs = [
        session.run(names, {"image": to_model_input(pixels[i : i + 512], CONSTRAINT)})
        for i in range(0, len(pixels), 512)
    ]
    out = {name: np.concatenate([r[k] for r in runs]).astype(np.float64) for k, name in enumerate(names)}
    feats = {"embedding": unit(out["embedding"])}
    for name in ("r2", "r3"):
        pooled = out[name].mean(axis=(2, 3))
        feats[f"block {name[1]} average"] = unit(pooled)
        feats[f"block {name[1]} average, square root"] = unit(np.sqrt(pooled))
    feats["last block flattened"] = unit(out["flat"])
    joined = np.concatenate([feats["embedding"], feats["block 3 average"]], axis=1)
    feats["embedding + block 3 average"] = unit(joined)
    return feats


def backbone_of(model: Path) -> Path:
    return model / "backbone.onnx" if model.is_dir() else model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--against", type=Path, help="also print per-draw differences from this one")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    parser.add_argument("--layers", action="store_true", help="score the inner features instead")
    args = parser.parse_args(argv)
    for model in [*args.models, *([args.against] if args.against else [])]:
        if not backbone_of(model).is_file():
            print(f"Error: no backbone at {backbone_of(model)}", file=sys.stderr)
            return 2
    pixels, digits = digit_pixels()
    if args.layers:
        for model in args.models:
            try:
                layers = layer_features(backbone_of(model), pixels)
            except ValueError as exc:
                print(f"Error: {exc}", file=sys.stderr)
                return 2
            for name, feats in layers.items():
                closed = " / ".join(f"{ncm(feats, digits, k, args.draws).mean() * 100:.1f}" for k in SHOTS)
                open_ = " / ".join(
                    f"{untaught_oracle(feats, digits, k, args.draws).mean() * 100:.1f}" for k in ORACLE_SHOTS
                )
                dim = feats.shape[1]
                print(f"{model}: {name} ({dim}-d): NCM 1 / 3 / 5 % {closed}; oracle 3 / 5 % {open_}")
        return 0
    base = None
    if args.against:
        base_feats = embed(backbone_of(args.against), pixels)
        base = {shots: ncm(base_feats, digits, shots, args.draws) for shots in SHOTS}
        base_open = {shots: untaught_oracle(base_feats, digits, shots, args.draws) for shots in ORACLE_SHOTS}
    report: dict[str, dict[str, list[float]]] = {}
    for model in args.models:
        feats = embed(backbone_of(model), pixels)
        scores = {shots: ncm(feats, digits, shots, args.draws) for shots in SHOTS}
        row = {f"ncm_{k}": [round(a.mean() * 100, 2), round(a.std() * 100, 2)] for k, a in scores.items()}
        cells = " / ".join(f"{a.mean() * 100:.1f} ± {a.std() * 100:.1f}" for a in scores.values())
        print(f"{model}: NCM 1 / 3 / 5 drawings % {cells}")
        opens = {shots: untaught_oracle(feats, digits, shots, args.draws) for shots in ORACLE_SHOTS}
        row.update(
            {f"oracle_{k}": [round(a.mean() * 100, 2), round(a.std() * 100, 2)] for k, a in opens.items()}
        )
        cells = " / ".join(f"{a.mean() * 100:.1f} ± {a.std() * 100:.1f}" for a in opens.values())
        print(f"{model}: untaught-digit oracle, 3 / 5 drawings, % rejected {cells}")
        if base is not None:
            diffs = {k: (scores[k] - base[k]) * 100 for k in SHOTS}
            row.update({f"diff_{k}": [round(d.mean(), 2), round(d.std(), 2)] for k, d in diffs.items()})
            cells = " / ".join(
                f"{d.mean():+.1f} ± {d.std():.1f} (wins {np.mean(d > 0):.0%})" for d in diffs.values()
            )
            print(f"{model}: minus {args.against}, per draw, points: {cells}")
            odiffs = {k: (opens[k] - base_open[k]) * 100 for k in ORACLE_SHOTS}
            row.update(
                {f"oracle_diff_{k}": [round(d.mean(), 2), round(d.std(), 2)] for k, d in odiffs.items()}
            )
            cells = " / ".join(
                f"{d.mean():+.1f} ± {d.std():.1f} (wins {np.mean(d > 0):.0%})" for d in odiffs.values()
            )
            print(f"{model}: untaught-digit oracle minus {args.against}, per draw, 3 / 5 drawings: {cells}")
        report[str(model)] = row
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

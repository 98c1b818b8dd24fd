"""Pretrain the bundled doodle classifier and write its package.

    python -m mlpersonalize.sample.pretrain --out sample_models/doodles [--seed 0] [--quick]

The backbone learns a scaled-cosine softmax over thousands of classes: font glyphs of many
writing systems drawn like a pen would (``glyphs.py``), procedural stroke classes and the named
labels (never the novel ones). Class variety is what makes it transfer to drawings it has never
seen, and glyphs are what moves it toward human strokes. **Pretraining uses no digits of any
kind** (no digit glyph of any script, no number forms, no digit data set), so that handwritten
digits stay a family the model never saw and the real-drawing benchmark
(``benchmarks/real_digits.py``) stays honest. The package's head holds the named labels' trained
rows. Training runs in PyTorch on the CPU (``engine="torch"``, the ``sample`` extra; the same
network as ``network.py``, exported to ONNX) or in ONNX Runtime training (``engine="onnxruntime"``,
no PyTorch, much slower). Progress goes to stderr.
Experiments: ``--no-package`` only prints the metrics; ``--set FIELD=VALUE`` overrides a Config
field (e.g. ``--set procedural_classes=4000 --set per_procedural=10``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import _ort
from ..engines.ort import generate_artifacts
from ..images import ImageConstraint, to_model_input
from ..package import create_package
from . import doodles, evaluate, glyphs, network, torch_train

CONSTRAINT = ImageConstraint(width=28, height=28, color="gray", scale=1 / 255, bias=(0.0,), ink="light")


# The manifest's fallback ``unknown``: below this top probability a prediction is "unknown". The
# package also carries per-label thresholds on the max cosine (calibration.py, from the exemplars),
# and predict uses those instead whenever model.onnx gives scores (the bundled model does); this
# one serves ``predict`` on a model without them. Measured on the bundled model (id
# b3481fa5a92113fa) with 20 fresh generated drawings per label: 0.5 keeps 99.9% of correct
# predictions of the named labels and turns 40% of its mistakes and 49% of drawings of labels it
# never saw (NOVEL_LABELS) into "unknown" (python -m benchmarks.threshold).
UNKNOWN_THRESHOLD = 0.5


@dataclass(frozen=True)
class Config:
    """Everything that determines the pretrained model (recorded in the manifest)."""

    seed: int = 0
    procedural_classes: int = 1500
    per_procedural: int = 20
    per_named: int = 120
    glyph_classes: int = 3000  # font-glyph classes of many writing systems (glyphs.py; no digits)
    per_glyph: int = 20
    glyphs_per_font: int = 60
    pen_max: float = glyphs.PEN_MAX  # widest re-stroking pen of the glyphs, share of the canvas
    engine: str = "torch"  # the sample extra (same network, ~10x faster); or "onnxruntime"
    epochs: int = 9
    batch: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4  # torch engine
    label_smoothing: float = 0.0  # torch engine
    margin: float = 0.2  # torch engine: additive cosine margin (CosFace) on the true class
    logit_scale: float = 20.0
    shift: int = 2  # augmentation: random translation in pixels
    affine: float = 0.0  # torch engine, experiment: max rotation in degrees (scale, shear with it)
    rotation_aux: float = 0.0  # torch engine, experiment: weight of a 4-way rotation loss
    # a 256-d embedding: docs/backbone-experiments.md rows 19 and 25
    shape: network.Shape = field(default_factory=lambda: network.Shape(embedding=256))
    heldout_per_label: int = 30
    novel_per_label: int = 30
    episodes: int = 300
    # One thread: on shared cores a second one mostly waits at OpenMP barriers (measured under
    # load: 72 ms of CPU per training step with one thread, 485 ms with two).
    threads: int = 1
    workers: int = 2


QUICK = Config(  # ONNX Runtime only, no fonts: what the tests run without the sample extra
    procedural_classes=40,
    glyph_classes=0,
    engine="onnxruntime",
    per_procedural=4,
    per_named=4,
    epochs=1,
    batch=64,
    shape=network.Shape((8, 16, 16), 32),
    heldout_per_label=3,
    novel_per_label=6,
    episodes=20,
)


def log(message: str) -> None:
    print(f"[pretrain] {message}", file=sys.stderr, flush=True)


def shifted(x: np.ndarray, rng: np.random.Generator, limit: int) -> np.ndarray:
    """Each image translated by up to ``limit`` pixels (zero fill): cheap, label-preserving."""
    if limit <= 0:
        return x
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (limit, limit), (limit, limit)))
    dy, dx = rng.integers(0, 2 * limit + 1, size=(2, n))
    out = np.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


def train(cfg: Config, pixels: np.ndarray, ids: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """All-parameter AdamW training of backbone + cosine head; returns the trained weights."""
    rng = np.random.default_rng(cfg.seed)
    weights = network.init_weights(cfg.shape, num_classes, rng)
    api = _ort.training_api()
    with tempfile.TemporaryDirectory(prefix="mlp-pretrain-") as tmp:
        folder = Path(tmp)
        generate_artifacts(
            network.build(weights, with_head=True, logit_scale=cfg.logit_scale),
            network.trainable(weights),
            folder,
        )
        state = api.CheckpointState.load_checkpoint(str(folder / "checkpoint"))
        module = api.Module(
            str(folder / "training_model.onnx"),
            state,
            str(folder / "eval_model.onnx"),
            session_options=_ort.session_options(cfg.threads),
        )
        optimizer = api.Optimizer(str(folder / "optimizer_model.onnx"), module)
        module.train()
        steps_per_epoch = len(pixels) // cfg.batch
        total, warmup = steps_per_epoch * cfg.epochs, max(1, steps_per_epoch // 4)
        step, start = 0, time.perf_counter()
        for epoch in range(cfg.epochs):
            order = rng.permutation(len(pixels))
            losses = []
            for b in range(steps_per_epoch):
                # linear warm-up, then cosine decay: stable start with a 2,000-way softmax
                frac = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total))
                optimizer.set_learning_rate(cfg.lr * frac)
                batch = order[b * cfg.batch : (b + 1) * cfg.batch]
                x = shifted(to_model_input(pixels[batch], CONSTRAINT), rng, cfg.shift)
                losses.append(float(module(x, ids[batch])))
                optimizer.step()
                module.lazy_reset_grad()
                step += 1
            log(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {np.mean(losses):.3f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
        return {name: np.array(state.parameters[name].data, np.float32) for name in weights}


def _engine_version(engine: str) -> str:
    if engine == "torch":
        # lazy: torch is optional (the `sample` extra)
        import torch

        return f"torch {torch.__version__}"
    return f"onnxruntime {_ort.ORT_VERSION}"


def embedder(backbone: object, threads: int) -> evaluate.Embed:
    """A function from uint8 pixels to embeddings, through an inference session of the backbone."""
    session = _ort.inference_session(backbone.SerializeToString(), threads=threads)  # type: ignore[attr-defined]

    def embed(pixels: np.ndarray) -> np.ndarray:
        parts = [
            session.run(["embedding"], {"image": to_model_input(pixels[i : i + 512], CONSTRAINT)})[0]
            for i in range(0, len(pixels), 512)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)

    return embed


def build(cfg: Config, out: Path | None, rows: Path | None = None) -> dict[str, float]:
    """Generate data, pretrain, evaluate and (unless ``out`` is None) write the package; ``rows``:
    also save every pretraining class's row there (``.npy``, the named labels first)."""
    began = time.perf_counter()
    named = list(doodles.NAMED_LABELS)
    classes = named + doodles.procedural_labels(cfg.procedural_classes)
    log(
        f"rendering {len(named)}×{cfg.per_named} named + "
        f"{cfg.procedural_classes}×{cfg.per_procedural} procedural drawings"
    )
    px_named, id_named = doodles.make_dataset(named, cfg.per_named, cfg.seed, CONSTRAINT, workers=cfg.workers)
    px_proc, id_proc = doodles.make_dataset(
        classes[len(named) :], cfg.per_procedural, cfg.seed, CONSTRAINT, workers=cfg.workers
    )
    pixels = np.concatenate([px_named, px_proc])
    ids = np.concatenate([id_named, id_proc + len(named)])
    if cfg.glyph_classes:
        chosen = glyphs.glyph_classes(cfg.glyph_classes, cfg.seed, cfg.glyphs_per_font)
        log(f"rendering {len(chosen)}×{cfg.per_glyph} font glyphs ({len(glyphs.font_files())} fonts)")
        px_glyph, id_glyph = glyphs.make_dataset(
            chosen, cfg.per_glyph, cfg.seed, CONSTRAINT, workers=cfg.workers, pen_max=cfg.pen_max
        )
        pixels = np.concatenate([pixels, px_glyph])
        ids = np.concatenate([ids, id_glyph + len(classes)])
        classes = classes + [f"glyph-U+{ord(char):04X}" for char, _ in chosen]
    log(f"{len(pixels)} drawings of {len(classes)} classes ({time.perf_counter() - began:.0f} s); training")
    if cfg.engine == "torch":
        weights = torch_train.train(
            network.init_weights(cfg.shape, len(classes), np.random.default_rng(cfg.seed)),
            lambda idx, rng: shifted(to_model_input(pixels[idx], CONSTRAINT), rng, cfg.shift),
            ids,
            epochs=cfg.epochs,
            batch=cfg.batch,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            logit_scale=cfg.logit_scale,
            label_smoothing=cfg.label_smoothing,
            margin=cfg.margin,
            affine=cfg.affine,
            rotation_aux=cfg.rotation_aux,
            seed=cfg.seed,
            threads=cfg.threads,
            log=log,
        )
    else:
        weights = train(cfg, pixels, ids, len(classes))
    backbone = network.build({k: v for k, v in weights.items() if not k.startswith("head.")}, with_head=False)
    if rows is not None:  # every pretraining class's cosine row, for studies (benchmarks/open_set_levers.py)
        np.save(rows, weights["head.w"])
    embed = embedder(backbone, cfg.threads)

    log("evaluating on fresh drawings")
    eval_seed = cfg.seed + 1_000_003  # fresh drawings: never seen in training
    px_held, id_held = doodles.make_dataset(
        named, cfg.heldout_per_label, eval_seed, CONSTRAINT, workers=cfg.workers
    )
    px_novel, id_novel = doodles.make_dataset(
        list(doodles.NOVEL_LABELS), cfg.novel_per_label, eval_seed, CONSTRAINT, workers=cfg.workers
    )
    head_weight = evaluate.unit(weights["head.w"][: len(named)])
    held_feats = embed(px_held)
    metrics: dict[str, float] = {
        "heldout_accuracy": round(evaluate.accuracy(held_feats, id_held, head_weight), 4),
        "heldout_accuracy_pixels_ncm": round(
            evaluate.accuracy(
                evaluate.pixels_as_features(px_held),
                id_held,
                np.stack(
                    [evaluate.pixels_as_features(px_named)[id_named == c].mean(0) for c in range(len(named))]
                ),
            ),
            4,
        ),
    }
    imprinted = np.stack([embed(px_named[id_named == c]).mean(0) for c in range(len(named))])
    metrics["heldout_accuracy_imprinted_rows"] = round(evaluate.accuracy(held_feats, id_held, imprinted), 4)
    log("most confused: " + evaluate.confusions(held_feats, id_held, head_weight, named))
    metrics.update(evaluate.transfer_report(embed, px_novel, id_novel, cfg.seed, cfg.episodes))
    new, old = evaluate.learn_without_forgetting(
        (held_feats, id_held, head_weight), (embed(px_novel), id_novel), 5, 3, cfg.episodes // 3, cfg.seed
    )
    metrics["imprint_5new_3shot_new_accuracy"] = round(new, 4)
    metrics["imprint_5new_3shot_named_accuracy"] = round(old, 4)
    seconds = round(time.perf_counter() - began, 1)
    for key, value in metrics.items():
        log(f"{key}: {value}")
    log(f"built in {seconds} s")
    if out is not None:
        ex_px, ex_ids = doodles.make_dataset(named, 20, cfg.seed + 2_000_003, CONSTRAINT, workers=cfg.workers)
        ex_feats = embed(ex_px)
        exemplars = {label: ex_feats[ex_ids == i] for i, label in enumerate(named)}
        training = {
            **asdict(cfg),
            "classes": len(classes),
            "samples": len(pixels),
            "seconds": seconds,
            "novel_labels": list(doodles.NOVEL_LABELS),
            "engine": _engine_version(cfg.engine),
        }
        create_package(
            out,
            backbone=backbone,
            head_weight=head_weight,
            labels=named,
            constraint=CONSTRAINT,
            logit_scale=cfg.logit_scale,
            exemplars=exemplars,
            name="doodles",
            description=f"Hand-drawn doodle classifier ({len(named)} labels), pretrained on "
            f"{len(classes)} font-glyph (no digits), procedural and named stroke classes for few-shot "
            "personalization",
            author="mlpersonalize",
            license="MIT",
            metrics=metrics,
            training=training,
            unknown_threshold=UNKNOWN_THRESHOLD,
        )
        log(f"wrote {out}")
    return metrics


def _shape(parser: argparse.ArgumentParser, item: str, shape: network.Shape) -> network.Shape:
    """``shape=48,96,192,256`` (three conv widths, the embedding size) or ``convs=1,2,2``."""
    key, _, value = item.partition("=")
    try:
        numbers = [int(v) for v in value.split(",")]
    except ValueError:
        numbers = []
    want = 4 if key == "shape" else 3
    if len(numbers) != want or min(numbers) <= 0:
        parser.error(f"--set {item}: {key} is {want} positive integers (shape=48,96,192,256, convs=1,2,2)")
    if key == "shape":
        return replace(shape, channels=(numbers[0], numbers[1], numbers[2]), embedding=numbers[3])
    return replace(shape, convs=(numbers[0], numbers[1], numbers[2]))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: parse options, build, report."""
    parser = argparse.ArgumentParser(
        prog="python -m mlpersonalize.sample.pretrain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, help="package folder to create (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny configuration, for tests (seconds)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a Config field for an experiment, e.g. --set epochs=8, --set shape=48,96,192,256 "
        "(conv widths, embedding size), --set convs=1,2,2 (convolutions per block)",
    )
    parser.add_argument("--no-package", action="store_true", help="only train and print the metrics")
    parser.add_argument("--rows", type=Path, help="also save every pretraining class's row here (.npy)")
    args = parser.parse_args(argv)
    if args.out is None and not args.no_package:
        parser.error("--out is required (or --no-package)")
    cfg = replace(QUICK if args.quick else Config(), seed=args.seed)
    for item in args.set:
        key, _, value = item.partition("=")
        if key in ("shape", "convs"):
            cfg = replace(cfg, shape=_shape(parser, item, cfg.shape))
            continue
        if key not in Config.__dataclass_fields__:
            parser.error(f"--set {item}: no Config field {key!r}")
        cfg = replace(cfg, **{key: type(getattr(cfg, key))(value)})
    if cfg.engine != "torch" and (cfg.affine or cfg.rotation_aux):
        parser.error("affine and rotation_aux need the torch engine")
    build(cfg, None if args.no_package else args.out, args.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

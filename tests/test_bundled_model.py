"""The bundled doodle model: what it ships, how well it predicts, and the sample's whole story on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clirun import run_cli as cli

from mlpersonalize import _ort
from mlpersonalize.inference import Classifier
from mlpersonalize.package import load_package
from mlpersonalize.sample.doodles import NAMED_LABELS, NOVEL_LABELS, make_dataset, write_folder
from mlpersonalize.store import bundled_model_path


@pytest.fixture(scope="module")
def bundled():  # type: ignore[no-untyped-def]
    return load_package(bundled_model_path())


def folder_hashes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ships_a_verified_package_with_named_labels_and_its_measured_accuracy(bundled) -> None:  # type: ignore[no-untyped-def]
    manifest = bundled.manifest
    assert len(manifest.labels) >= 40 and set(manifest.labels) == set(NAMED_LABELS)
    assert not set(manifest.labels) & set(NOVEL_LABELS)
    assert manifest.metrics["heldout_accuracy"] >= 0.95
    assert (
        manifest.constraint.width == manifest.constraint.height == 28 and manifest.constraint.ink == "light"
    )
    size = sum(p.stat().st_size for p in bundled.path.rglob("*") if p.is_file())
    assert size <= 5 * 1024 * 1024


def test_predicts_fresh_drawings_of_its_labels(bundled) -> None:  # type: ignore[no-untyped-def]
    pixels, ids = make_dataset(NAMED_LABELS, 6, seed=2024, constraint=bundled.manifest.constraint)
    probs = Classifier(bundled).probabilities(pixels)
    assert (probs.argmax(axis=1) == ids).mean() >= 0.95


def test_predict_through_files_agrees_with_the_labels(bundled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    labels = ["circle", "star", "heart", "house", "fish", "arrow"]
    write_folder(tmp_path / "drawings", labels, 4, seed=99)
    results = list(Classifier(bundled).classify(sorted((tmp_path / "drawings").rglob("*.png"))))
    right = [r.label == Path(r.file).parent.name for r in results]
    assert len(results) == 24 and sum(right) >= 22


@pytest.mark.skipif(
    not _ort.has_training(),
    reason="needs the ort engine: onnxruntime-training-cpu is not installed for this Python",
)
def test_inference_model_matches_the_training_engine(bundled) -> None:  # type: ignore[no-untyped-def]
    """model.onnx (plain inference) and the head's eval model (training engine) give the same answer."""
    pixels, ids = make_dataset(NAMED_LABELS[:10], 3, seed=5, constraint=bundled.manifest.constraint)
    x = pixels.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    outputs = ["label", "probabilities", "embedding"]
    _, probs, embedding = _ort.inference_session(bundled.file("model.onnx")).run(outputs, {"image": x})

    api = _ort.training_api()
    state = api.CheckpointState.load_checkpoint(str(bundled.file("training/checkpoint")))
    module = api.Module(
        str(bundled.file("training/training_model.onnx")),
        state,
        str(bundled.file("training/eval_model.onnx")),
    )
    module.eval()
    outputs = module(embedding, ids.astype(np.int64))
    logits = outputs[-1]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert np.allclose(probs, expected, atol=1e-5)


def test_three_drawings_teach_new_emoji_and_the_original_is_untouched(tmp_path: Path) -> None:
    """The Core ML sample's flow on the bundled model: prepare -> update -> predict uses the copy."""
    home = tmp_path / "home"
    original = folder_hashes(bundled_model_path())
    stickers = {"☂️": "umbrella", "🔑": "key", "✉️": "envelope"}
    train, test = tmp_path / "drawings", tmp_path / "test"
    from mlpersonalize.sample.doodles import render, sample_rng

    for emoji, subject in stickers.items():
        (train / emoji).mkdir(parents=True)
        for n in range(3):
            render(subject, sample_rng(subject, n, 11)).save(train / emoji / f"{n}.png")
    for label, subject in [*stickers.items(), *((k, k) for k in ("star", "heart", "tree", "sun", "car"))]:
        (test / label).mkdir(parents=True)
        for n in range(8):
            render(subject, sample_rng(subject, 100 + n, 11)).save(test / label / f"{n}.png")

    assert cli("prepare", str(train), "-o", str(tmp_path / "b.npz"), home=home).returncode == 0
    before = cli("predict", str(test), "--json", home=home)
    update = cli("update", str(tmp_path / "b.npz"), "--json", home=home)
    assert update.returncode == 0, update.stderr
    events = [json.loads(line) for line in update.stdout.splitlines()]
    assert events[0]["event"] == "began" and events[-1]["event"] == "completed"
    assert sorted(events[-1]["labels_added"]) == sorted(stickers)
    after = cli("predict", str(test), "--json", home=home)

    def accuracy(output: str, new: bool) -> float:
        rows = [json.loads(line) for line in output.splitlines()]
        hits = [
            r["label"] == Path(r["file"]).parent.name
            for r in rows
            if (Path(r["file"]).parent.name in stickers) == new
        ]
        return sum(hits) / len(hits)

    assert accuracy(before.stdout, new=True) == 0.0
    # One draw of 3 labels x 8 drawings (umbrella is easily taken for the known mushroom); the
    # >= 90% target over many draws is measured in benchmarks/quality.py.
    # The calibrated unknown may turn a right answer or two of 24 into `unknown` (real digits: 3-6%
    # of answers, BENCHMARKS.md section 0); the top-ranked label is still right.
    assert accuracy(after.stdout, new=True) >= 0.75
    ranked = [json.loads(line) for line in after.stdout.splitlines()]
    new_rows = [r for r in ranked if Path(r["file"]).parent.name in stickers]
    assert np.mean([r["top"][0]["label"] == Path(r["file"]).parent.name for r in new_rows]) >= 0.8
    assert accuracy(after.stdout, new=False) >= accuracy(before.stdout, new=False) - 0.025
    inspect = json.loads(cli("inspect", "--json", home=home).stdout)
    assert inspect["source"] == "personalized" and len(inspect["history"]) == 1
    assert folder_hashes(bundled_model_path()) == original

    assert cli("reset", home=home).returncode == 0
    assert json.loads(cli("inspect", "--json", home=home).stdout)["source"] == "bundled"

"""Issue 19 and the calibrated unknown through the CLI: conflicts refused and forced, a known label
re-taught in the user's style (a style row), predict's calibrated ``unknown``, old packages
unchanged, and an update that learned nothing (exit 9)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from clirun import run_cli
from conftest import CONSTRAINT, OLD

from mlpersonalize.batch import Batch, save_batch
from mlpersonalize.errors import ExitCode
from mlpersonalize.inference import Classifier
from mlpersonalize.package import load_package
from mlpersonalize.sample.doodles import make_dataset
from mlpersonalize.store import bundled_model_path


def _batch(path: Path, model: Path, pixels: np.ndarray, names: list[str]) -> Path:
    save_batch(path, Batch.from_pixels(pixels, names, load_package(model).manifest), force=True)
    return path


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_swapped_labels_are_named_and_refused_then_forced(doodle_model: Path, tmp_path: Path) -> None:
    """Crosses labelled 'heart' and hearts labelled 'cross': exit 6 naming each label, how many of
    its drawings and what the model reads them as; nothing changed. With --force the user's labels
    win: the new model reads those drawings as the user labelled them."""
    pixels, ids = make_dataset(["cross", "heart"], 8, seed=21, constraint=CONSTRAINT)
    swapped = ["heart" if i == 0 else "cross" for i in ids]
    batch = _batch(tmp_path / "swap.npz", doodle_model, pixels, swapped)

    refused = run_cli("update", str(batch), "--model", str(doodle_model), "--json")
    assert refused.returncode == ExitCode.REJECTED, refused.stderr
    assert refused.stderr.count("\n") == 1 and "--force" in refused.stderr
    assert "labelled 'heart' look like 'cross'" in refused.stderr
    conflicts = next(e for e in _events(refused.stdout) if e["event"] == "conflicts")["conflicts"]
    by_label = {c["label"]: c for c in conflicts}
    assert by_label["heart"]["read_as"].get("cross", 0) >= 4 and by_label["heart"]["of"] == 8
    assert not (tmp_path / "out").exists()

    forced = run_cli(
        "update", str(batch), "--model", str(doodle_model), "--force", "--json", "-o", str(tmp_path / "out")
    )
    assert forced.returncode in (ExitCode.OK, ExitCode.LEARNED_NOTHING), forced.stderr
    completed = _events(forced.stdout)[-1]
    assert completed["event"] == "completed"
    history = load_package(tmp_path / "out").manifest.history[-1]
    assert {c["label"] for c in history["conflicts"]} >= {"heart"}
    probs = Classifier(load_package(tmp_path / "out")).probabilities(pixels)
    labels = load_package(tmp_path / "out").manifest.labels
    read = [labels[k] for k in probs.argmax(1)]
    assert np.mean([r == s for r, s in zip(read, swapped, strict=True)]) >= 0.75  # the user's labels win


def test_a_known_label_learns_the_users_style_through_the_cli(tmp_path: Path) -> None:
    """The bundled model reads asterisk-drawn stars as 'sun'. Five of them labelled 'star' add a
    style row: held-out asterisks are read 'star', standard stars and suns still are themselves."""
    from benchmarks.styles import style_drawings

    bundled = bundled_model_path()
    constraint = load_package(bundled).manifest.constraint
    drawings = style_drawings("asterisk", 25, seed=3, constraint=constraint)
    teach, held = drawings[:5], drawings[5:]
    before = Classifier(load_package(bundled))
    star = list(before.labels).index("star")
    assert np.mean(before.probabilities(held).argmax(1) == star) <= 0.2

    batch = _batch(tmp_path / "style.npz", bundled, teach, ["star"] * 5)
    result = run_cli("update", str(batch), "-o", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    completed = _events(result.stdout)[-1]
    assert completed["learned"] is True and completed["labels_added"] == []
    package = load_package(tmp_path / "out")
    assert package.manifest.row_labels.count(star) == 2  # the label's own row and its style row
    after = Classifier(package)
    assert np.mean(after.probabilities(held).argmax(1) == star) >= 0.85
    standard, ids = make_dataset(["star", "sun"], 20, seed=99, constraint=constraint)
    truth = np.array([star, list(after.labels).index("sun")])[ids]
    assert np.mean(after.probabilities(standard).argmax(1) == truth) >= 0.95
    inspected = run_cli("inspect", "--model", str(tmp_path / "out"), "--json")
    assert json.loads(inspected.stdout)["head"]["row_labels"].count(star) == 2


def _set_thresholds(package: Path, value: float | None) -> None:
    manifest = json.loads((package / "manifest.json").read_text())
    if value is None:
        manifest.pop("unknown", None)
    else:
        manifest["unknown"]["thresholds"] = [value] * len(manifest["labels"])
    (package / "manifest.json").write_text(json.dumps(manifest))


def _predict(package: Path, folder: Path, *extra: str) -> list[str]:
    result = run_cli("predict", str(folder), "--model", str(package), "--json", *extra)
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["label"] for line in result.stdout.splitlines()]


@pytest.fixture
def drawings_folder(tmp_path: Path) -> Path:
    from mlpersonalize.sample.doodles import write_folder

    folder = tmp_path / "drawings"
    write_folder(folder, OLD[:3], 3, seed=5)
    return folder


def test_predict_applies_the_calibrated_unknown(
    doodle_model: Path, tmp_path: Path, drawings_folder: Path
) -> None:
    """The manifest's per-label thresholds decide ``unknown`` (on the cosine score, not the
    probability); ``--threshold`` still means the probability threshold."""
    package = tmp_path / "m"
    shutil.copytree(doodle_model, package)
    assert load_package(package).manifest.unknown["score"] == "max_cosine"  # made by create_package
    _set_thresholds(package, 1.01)  # no cosine reaches it: everything unknown
    assert set(_predict(package, drawings_folder)) == {"unknown"}
    assert "unknown" not in _predict(package, drawings_folder, "--threshold", "0")
    _set_thresholds(package, -1.01)  # every cosine passes: never unknown
    assert "unknown" not in _predict(package, drawings_folder)


def test_a_package_without_row_labels_or_unknown_predicts_as_before(
    doodle_model: Path, tmp_path: Path, drawings_folder: Path
) -> None:
    """A manifest with neither field (every package made before them): the top probability
    against unknown_threshold, exactly the old rule."""
    package = tmp_path / "old"
    shutil.copytree(doodle_model, package)
    _set_thresholds(package, None)
    manifest = load_package(package).manifest
    assert not manifest.unknown and not manifest.row_labels
    classifier = Classifier(load_package(package))
    from mlpersonalize.decoding import decode_file

    paths = sorted(p for p in drawings_folder.rglob("*.png"))
    pixels = np.stack([decode_file(str(p), False, CONSTRAINT, digest=False)[1] for p in paths])
    probs = classifier.probabilities(pixels)
    expected = [
        manifest.labels[k] if p[k] >= manifest.unknown_threshold else "unknown"
        for p, k in zip(probs, probs.argmax(1), strict=True)
    ]
    got = _predict(package, drawings_folder)
    assert sorted(got) == sorted(expected)


def test_an_update_that_learned_nothing_says_so_and_exits_9(doodle_model: Path, tmp_path: Path) -> None:
    """A new label whose drawings have nothing in common (each a different procedural class):
    the update is saved, but the summary, the completed event and exit 9 say it learned nothing."""
    pixels, _ = make_dataset([f"proc-{i}" for i in range(700000, 700008)], 1, seed=3, constraint=CONSTRAINT)
    batch = _batch(tmp_path / "noise.npz", doodle_model, pixels, ["scribble"] * 8)
    out = str(tmp_path / "out")
    result = run_cli(
        "update", str(batch), "--model", str(doodle_model), "--json", "--max-drop", "100", "-o", out
    )
    assert result.returncode == ExitCode.LEARNED_NOTHING == 9, result.stderr
    completed = _events(result.stdout)[-1]
    assert completed["event"] == "completed" and completed["learned"] is False
    assert "scribble" in completed["learned_reason"]
    assert result.stderr.startswith("Error: the update was saved") and "learned nothing" in result.stderr
    assert load_package(tmp_path / "out").manifest.labels[-1] == "scribble"  # saved all the same

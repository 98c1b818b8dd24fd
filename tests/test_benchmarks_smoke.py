"""The benchmark code runs end to end with tiny sizes on the tiny package and reports every section.

Speed is not asserted here (the machine is shared); the structure of results.json and
BENCHMARKS.md is.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import common, report, run, speed
from mlpersonalize import _ort

# The benchmarks time ONNX Runtime's training artifacts beside PyTorch and the portable engine.
pytestmark = pytest.mark.skipif(
    not _ort.has_training(),
    reason="needs the ort engine: onnxruntime-training-cpu is not installed for this Python",
)

TINY = dataclasses.replace(
    common.SMOKE,
    name="test",
    seeds=1,
    shots=(1, 3),
    new_label_counts=(2,),
    test_new_per_label=2,
    test_old_per_label=2,
    train_examples=30,
    train_epochs=1,
    predict_examples=30,
    prepare_files=20,
    startup_repeats=1,
    scaling=(20, 30),
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_tiny_package

    home = tmp_path_factory.mktemp("home")
    model = make_tiny_package(tmp_path_factory.mktemp("models") / "tiny")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLPERSONALIZE_HOME", str(home))
    patch.setattr(common, "ALWAYS_HIDE_TORCH", True)  # children start in well under a second
    patch.setattr(speed, "torch_available", lambda: False)  # the PyTorch processes take seconds
    try:
        yield run.run(model, TINY)
    finally:
        patch.undo()


def test_every_section_is_reported(results: dict[str, Any]) -> None:
    for section in run.SECTIONS:
        if section != "profile":  # the smoke sizes skip profiling
            assert section in results, section
    assert set(results["machine"]["versions"]) >= {"onnxruntime-training-cpu", "onnx", "numpy"}
    assert results["machine"]["date"] and results["machine"]["cores_available"] >= 1
    json.loads(json.dumps(results, default=float))


def test_quality_compares_three_methods_per_setting(results: dict[str, Any]) -> None:
    summary = results["quality"]["summary"]
    assert [(r["new_labels"], r["shots"]) for r in summary] == [(2, 1), (2, 3)]
    for row in summary:
        for method in ("shipped", "naive", "knn"):
            for key in ("new_top1", "old_after", "old_drop_points"):
                assert set(row[method][key]) == {"mean", "std", "n"}
            assert 0.0 <= row[method]["new_top1"]["mean"] <= 1.0
        assert isinstance(row["shipped"]["guard_refused"], int)
    assert len(results["quality"]["runs"]) == 2


def test_speed_sections_give_ratios(results: dict[str, Any]) -> None:
    assert results["train"]["speedup"] > 0
    assert results["train"]["ours"]["embed_seconds"] >= 0
    assert results["e2e"]["ours"]["seconds"] > 0 and results["e2e"]["ours_no_torch"]["peak_rss_mb"] > 0
    assert results["e2e"]["torch"] is None and "torch" in results["e2e"]["note"]
    assert results["predict"]["ratio"] > 0 and results["predict"]["cli_images_per_s"] > 0
    assert results["prepare"]["files"] >= TINY.prepare_files and results["prepare"]["ratio"] > 0
    assert "mlpersonalize --help" in results["startup"]["median_seconds"]


def test_scaling_has_one_row_per_size(results: dict[str, Any]) -> None:
    rows = results["scaling"]["rows"]
    assert [r["examples"] for r in rows] == [20, 30]
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 for r in rows)


def test_targets_and_markdown(results: dict[str, Any]) -> None:
    assert results["targets"]
    for target in results["targets"]:
        assert set(target) == {"target", "goal", "measured", "met"}
    text = report.markdown({**results, "total_seconds": 1.0})
    for heading in (
        "# Benchmarks",
        "## Targets",
        "## 1. Quality",
        "## 2. Speed",
        "## 3. Scaling",
        "## Raw results",
    ):
        assert heading in text
    raw = text.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(raw)["mode"]["name"] == "test"


def test_main_refuses_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--smoke", "--model", str(tmp_path / "none"), "--out", str(tmp_path)]) == 1
    assert "no model package" in capsys.readouterr().err
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_real_digits_run_through_the_cli(results: dict[str, Any]) -> None:
    """Every measure of the real-drawing section, per shots count, and its BENCHMARKS.md table."""
    section = results["real_digits"]
    if "skipped" in section:  # scikit-learn is the bench extra's
        pytest.skip(section["skipped"])
    (row,) = section["summary"]
    assert row["shots"] == 1 and row["seeds"] == 1
    for key in (
        "update_r1_new.top1",
        "update_r1_new.unknown",
        "update_r1_new.top1_no_unknown",
        "update_r2_new.top1",
        "update_r2_new.top1_no_unknown",
        "update_r2_old.top1",
        "update_open_untaught_digits",
        "update_open_procedural_r2",
        "imprint_r1_new.top1",
        "knn_r2_old.top1",
        "naive_r2_new.top1",
        "ncm10",
        "ncm10_pixels",
    ):
        assert 0.0 <= row[key]["mean"] <= 1.0, key
    for key in ("update_r1_new", "update_r2_new", "update_r2_old"):  # unknown counts wrong: never above
        assert row[f"{key}.top1"]["mean"] <= row[f"{key}.top1_no_unknown"]["mean"], key
        share = row[f"{key}.right_to_unknown"]["mean"]
        assert np.isnan(share) or 0.0 <= share <= 1.0, key
    text = "\n".join(report.real_digits_section(results))
    assert "## 0. Real human drawings" in text and "`update` (CLI)" in text
    assert "right answers → `unknown` %" in text


def test_real_digits_render_as_user_drawings() -> None:
    """The digits arrive as 256×256 PNG-ready images of dark strokes, transparent or on light paper."""
    pytest.importorskip("sklearn")
    import numpy as np

    from benchmarks import real_digits

    images, digits = real_digits.load_digits()
    assert images.shape == (1797, 8, 8) and set(digits.tolist()) == set(range(10))
    clear = np.asarray(real_digits.render(images[0], transparent=True))
    paper = np.asarray(real_digits.render(images[0], transparent=False))
    assert clear.shape == (256, 256, 4) and paper.shape == (256, 256)
    assert clear[0, 0, 3] == 0 and clear[..., 3].max() == 255  # transparent around, opaque strokes
    assert paper[0, 0] > 200 and paper.min() < 40  # light paper, dark ink
    a = real_digits.split(digits, 0, 5, 10)
    b = real_digits.split(digits, 1, 5, 10)
    assert a.test != b.test and sorted(a.order) == list(range(10))
    for d in range(10):
        assert not set(a.train[d]) & set(a.test[d])  # never tested on a taught drawing


def test_calibration_study_runs_on_todays_update(capsys: pytest.CaptureFixture[str]) -> None:
    """The study cited by calibration.py, selection.py and reteach.py runs (its smallest size, the
    bundled model) and prints every table: imprinting alone never trains, the forced trained head
    always does, and a style row teaches held-out asterisks 'star' where the one row does not."""
    pytest.importorskip("sklearn")  # the real digits are scikit-learn's (the bench extra)
    from benchmarks import calibration_study

    code = calibration_study.main(["--seeds", "1", "--shots", "3", "--per-digit", "20"])
    out = capsys.readouterr().out
    assert code == 0, out
    for heading in (
        "## Calibrated unknown: real digits",
        "## Calibrated unknown: generated drawings",
        "## Open-set scores",
        "## Never worse than imprinting",
        "## Conflicts",
        "## Style rows",
    ):
        assert heading in out, heading
    lines = out.splitlines()
    calib = [line for line in lines if line.startswith(("imprinted |", "trained   |"))]
    assert len(calib) == 6  # two heads x three targets x one shots count
    for line in calib:
        shares = [float(c.split()[0]) for c in line.split(" | ")[3:9]]
        assert all(0.0 <= v <= 1.0 for v in shares), line
    names = {"max cosine", "top-2 margin", "Mahalanobis", "relative Mahalanobis", "k-NN (own label)"}
    maps = {"none", "centred", "whitened"}  # fixed maps baked in front of the cosine rows
    scores = {
        line.split(" | ")[0].strip(): line for line in lines if line.split(" | ")[0].strip() in names | maps
    }
    assert set(scores) == names | maps, sorted(scores)
    for line in scores.values():
        shares = [float(c.split()[0]) for c in line.split(" | ")[2:]]
        assert shares and all(0.0 <= v <= 1.0 for v in shares), line
    heads = {
        line.split(" | ")[1].strip(): line.rsplit(" | ", 1)[1] for line in lines if line.startswith("    3 |")
    }
    assert heads["imprint"] == "i/i" and heads["train"] == "t/t", heads
    assert heads["chosen"] in {"i/i", "i/t", "t/i", "t/t"}
    style = {
        line.split(" | ")[0].strip(): line for line in lines if line.startswith(("one row", "style row"))
    }
    assert float(style["style row"].split(" | ")[1].split()[0]) > float(
        style["one row"].split(" | ")[1].split()[0]
    )
    assert "stars labelled circle, the one row trained: learned=False" in out


def test_prototype_study_recalibrates_as_the_update_does(capsys: pytest.CaptureFixture[str]) -> None:
    """quality_rows --part prototypes (cited by docs/update.md): its calibration of the written head
    gives the update's own numbers, and scoring each drawing without its own row rejects more
    untaught digits than the update's thresholds do for the head with one row per drawing."""
    pytest.importorskip("sklearn")  # the real digits are scikit-learn's (the bench extra)
    from benchmarks import quality_rows

    quality_rows.main(["--part", "prototypes", "--seeds", "1", "--shots", "3", "--negatives", "0.5"])
    rows = {
        line.split(" | ")[0]: [float(v) for v in line.split(" | ")[2:]]
        for line in capsys.readouterr().out.splitlines()
        if line.count(" | ") == 11 and not line.startswith(("rows", "---"))
    }
    assert rows["recalibrated"] == rows["as `update` writes them"]
    loo = rows["+ rows, leave-one-out, negative 0.5, guard 0.2"]
    in_sample = rows["+ one row per drawing, the update's thresholds"]
    assert loo[6] > in_sample[6]  # untaught digits rejected
    assert all(0.0 <= v <= 1.0 for v in loo)


def test_calibration_study_refuses_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from benchmarks import calibration_study

    assert calibration_study.main(["--shots", "three"]) == 2
    assert calibration_study.main(["--model", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("Error: ") for line in err)


def test_chimeras_join_two_drawings_of_different_labels() -> None:
    from benchmarks.open_set_levers import chimeras

    pixels = np.stack([np.full((4, 4, 1), v, np.uint8) for v in (10, 20, 30, 40)])
    made = chimeras(pixels, np.array([0, 0, 1, 1]))
    assert len(made) == 8 * 2 + 4  # ordered pairs across labels: top/bottom, left/right; overlays once
    top_bottom = made[0]  # drawing 0's top half, drawing 2's bottom half
    assert (top_bottom[:2] == 10).all() and (top_bottom[2:] == 30).all()
    assert not any(((m == 10) | (m == 20)).all() for m in made)  # never two drawings of one label


def test_open_set_levers_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """benchmarks/open_set_levers.py (cited by docs/unknown.md) prints both studies' rows."""
    pytest.importorskip("sklearn")  # the real digits are scikit-learn's (the bench extra)
    from benchmarks import open_set_levers
    from benchmarks.calibration_study import DEFAULT_MODEL

    rows = tmp_path / "rows.npy"  # stand-ins for the pretraining rows: 43 labels' and 17 more
    dim = np.load(DEFAULT_MODEL / "exemplars.npz")["embeddings"].shape[1]
    np.save(rows, np.random.default_rng(0).normal(size=(60, dim)).astype(np.float32))
    assert open_set_levers.main(["--seeds", "1", "--rows", str(rows)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    chim = [line for line in lines if line.startswith(("shipped |", "per label,", "global,"))]
    assert len(chim) == 1 + 2 * len(open_set_levers.QUANTILES)
    back = [line for line in lines if line.startswith("3 | ")]
    assert len(back) == 6  # three weights x two shares turned away
    for line in chim + back:
        cells = [c for c in line.split(" | ") if "[" in c]
        assert cells and all(0.0 <= float(c.split()[0]) <= 1.0 for c in cells), line
    assert open_set_levers.main(["--part", "background"]) == 2  # no --rows
    assert capsys.readouterr().err.startswith("Error: ")

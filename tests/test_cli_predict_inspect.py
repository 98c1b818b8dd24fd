"""`predict` and `inspect` end to end through the real console entry point (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import run_cli as run
from PIL import Image, ImageDraw

from mlpersonalize import _ort
from mlpersonalize.errors import ExitCode


def draw(path: Path, shape: str) -> Path:
    image = Image.new("RGB", (96, 96), "white")
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse((12, 12, 84, 84), outline="black", width=5)
    else:
        pen.rectangle((16, 16, 80, 80), outline="black", width=5)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_predict_json_lines_one_object_per_image(tiny_model: Path, tmp_path: Path) -> None:
    draw(tmp_path / "in" / "a.png", "circle")
    draw(tmp_path / "in" / "sub" / "b.png", "square")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / ".hidden.png").write_bytes(b"")
    result = run("predict", str(tmp_path / "in"), "--model", str(tiny_model), "--json", "--top-k", "2")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["file"]).name for r in rows] == ["a.png", "b.png"]
    for row in rows:
        assert row["label"] in {"circle", "square", "cross"}
        assert len(row["top"]) == 2 and row["top"][0]["label"] == row["label"]
        assert 0 < row["confidence"] <= 1


def test_many_files_decoded_by_workers_give_the_in_process_results_in_order(
    tiny_model: Path, tmp_path: Path
) -> None:
    from mlpersonalize.decoding import PARALLEL_MIN_FILES, Decoder
    from mlpersonalize.inference import Classifier
    from mlpersonalize.package import load_package

    for i in range(PARALLEL_MIN_FILES + 6):
        draw(tmp_path / "in" / f"{i:03d}.png", "circle" if i % 2 else "square")
    (tmp_path / "in" / "bad.png").write_bytes(b"not a png")
    result = run("predict", str(tmp_path / "in"), "-m", str(tiny_model), "--json")
    assert result.returncode == ExitCode.PARTIAL
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    package = load_package(tiny_model)
    paths = sorted((tmp_path / "in").iterdir())
    with Decoder(package.manifest.constraint, len(paths), workers=2) as decoder:
        assert decoder.workers == 2  # the pool path, whatever the machine
        decoded = decoder.map([(str(p), False) for p in paths])
        pooled = [r.to_dict() for r in Classifier(package).classify(paths, decoded=decoded)]
    in_process = [r.to_dict() for r in Classifier(package).classify(paths)]
    assert rows == in_process == pooled
    assert (
        rows[-1]["error"]
        == f"{paths[-1]}: not an image in a supported format (PNG, JPEG, GIF, BMP, TIFF, WEBP)"
    )


@pytest.mark.parametrize("running", ["a Python thread", "an engine session"])
def test_a_process_running_threads_decodes_in_threads_not_forked_workers(
    running: str, tiny_model: Path, tmp_path: Path
) -> None:
    """A program that calls prepare/predict after it made predictions (ONNX Runtime's pools live
    on) or while it runs threads of its own must not fork: the child would keep a lock a
    vanished thread held. Python >= 3.12 warns of such a fork; this one must not happen."""
    import multiprocessing
    import threading
    import warnings

    from mlpersonalize.decoding import PARALLEL_MIN_FILES, Decoder, fork_is_safe
    from mlpersonalize.package import load_package

    for i in range(PARALLEL_MIN_FILES + 6):
        draw(tmp_path / "in" / f"{i:03d}.png", "circle" if i % 2 else "square")
    tasks = [(str(p), False) for p in sorted((tmp_path / "in").iterdir())]
    constraint = load_package(tiny_model).manifest.constraint
    with Decoder(constraint, len(tasks), workers=0) as serial:
        expected = [(ok, digest) for ok, _, digest in serial.map(tasks)]
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait)
    if running == "a Python thread":
        busy.start()
    else:
        _ort.inference_session(tiny_model / "model.onnx")
    try:
        assert not fork_is_safe()
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            with Decoder(constraint, len(tasks), workers=2) as decoder:
                assert decoder.workers == 2
                pooled = [(ok, digest) for ok, _, digest in decoder.map(tasks)]
                assert multiprocessing.active_children() == []
    finally:
        stop.set()
        if busy.is_alive():
            busy.join()
    assert pooled == expected


def test_predict_plain_output_off_a_terminal_is_tab_separated(tiny_model: Path, tmp_path: Path) -> None:
    image = draw(tmp_path / "a.png", "circle")
    result = run("predict", str(image), "-m", str(tiny_model))
    assert result.returncode == 0
    file, label, confidence = result.stdout.strip().split("\t")
    assert file == str(image) and label in {"circle", "square", "cross"} and 0 < float(confidence) <= 1


def test_threshold_turns_low_confidence_into_unknown(tiny_model: Path, tmp_path: Path) -> None:
    image = draw(tmp_path / "a.png", "circle")
    result = run("predict", str(image), "-m", str(tiny_model), "--json", "--threshold", "0.9999")
    assert json.loads(result.stdout)["label"] == "unknown"


def test_unreadable_image_is_an_entry_and_a_nonzero_exit_at_the_end(tiny_model: Path, tmp_path: Path) -> None:
    good = draw(tmp_path / "a.png", "circle")
    bad = tmp_path / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = run("predict", str(bad), str(good), "-m", str(tiny_model), "--json")
    assert result.returncode == ExitCode.PARTIAL
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert "error" in rows[0] and "label" in rows[1]
    assert result.stderr.startswith("Error: 1 of 2 images could not be read")
    assert len(result.stderr.splitlines()) == 1


def test_fifo_named_like_an_image_is_an_entry_not_a_hang(tiny_model: Path, tmp_path: Path) -> None:
    good = draw(tmp_path / "in" / "a.png", "circle")
    os.mkfifo(tmp_path / "in" / "pipe.png")  # opening it for reading would wait for a writer
    result = run("predict", str(tmp_path / "in"), "-m", str(tiny_model), "--json", timeout=60)
    assert result.returncode == ExitCode.PARTIAL
    rows = {Path(r["file"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["pipe.png"]["error"] == f"{tmp_path / 'in' / 'pipe.png'}: not a regular file"
    assert rows[good.name]["label"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["predict", "x.png", "--model", "/nonexistent/model"], ExitCode.MODEL, "is not a model package"),
        (["predict", "x.png", "--top-k", "0"], ExitCode.USAGE, "--top-k"),
        (["inspect", "--model", "/nonexistent/model"], ExitCode.MODEL, "is not a model package"),
        (["frobnicate"], ExitCode.USAGE, "No such command"),
    ],
)
def test_errors_are_one_line_with_a_documented_code(
    tiny_model: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    draw(tmp_path / "x.png", "circle")
    result = subprocess.run(
        [sys.executable, "-m", "mlpersonalize", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MLPERSONALIZE_MODEL": str(tiny_model)},
    )
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_inspect_json_describes_the_model(tiny_model: Path) -> None:
    result = run("inspect", "--json", env={"MLPERSONALIZE_MODEL": str(tiny_model)})
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["source"] == "environment" and info["name"] == "tiny"
    assert info["labels"] == ["circle", "square", "cross"]
    assert info["input"]["image"]["width"] == 28
    assert info["updatable"][0]["shape"] == [3, 64]
    assert info["producer"]["onnxruntime"] == _ort.ORT_VERSION
    assert all(f["verified"] for f in info["files"])
    assert info["history"] == []


def test_inspect_flags_a_corrupt_file_and_exits_model_error(tiny_model: Path) -> None:
    with open(tiny_model / "model.onnx", "ab") as handle:
        handle.write(b"x")
    result = run("inspect", "--json", "-m", str(tiny_model))
    assert result.returncode == ExitCode.MODEL
    files = {f["name"]: f["verified"] for f in json.loads(result.stdout)["files"]}
    assert files["model.onnx"] is False and files["head.onnx"] is True
    assert "model.onnx" in result.stderr


def test_human_inspect_names_labels_and_history(tiny_model: Path) -> None:
    result = run("inspect", "-m", str(tiny_model))
    assert result.returncode == 0
    assert "3 labels: circle, square, cross" in result.stdout
    assert "update history: none" in result.stdout


def test_every_command_has_help() -> None:
    from typer.main import get_command

    from mlpersonalize.cli.app import app

    group = get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert command.help and len(command.help) > 20, f"{name} lacks help"
        assert "Example" in command.help, f"{name} help has no example"


def test_version_and_help_are_quick_to_reach() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("mlpersonalize ")
    result = run("--help")
    assert result.returncode == 0 and "predict" in result.stdout and "inspect" in result.stdout

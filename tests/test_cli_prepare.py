"""`mlpersonalize prepare` through the real entry point: exit codes, stdout and stderr apart, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import run_cli as run
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mlpersonalize.batch import load_batch
from mlpersonalize.cli.app import app
from mlpersonalize.errors import ExitCode


def draw(path: Path, size: int = 64, square: bool = False) -> Path:
    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    (pen.rectangle if square else pen.ellipse)((8, 8, size - 8, size - 8), outline="black", width=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    draw(tmp_path / "data" / "circle" / "a.png")
    draw(tmp_path / "data" / "circle" / "nested" / "b.png", size=80)
    draw(tmp_path / "data" / "😀 smile" / "c.png", square=True)
    (tmp_path / "data" / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "data" / "circle" / "notes.txt").write_text("hi")
    with open(os.path.join(os.fsencode(tmp_path / "data" / "circle"), b"bad\xff.png"), "wb") as handle:
        handle.write(b"not an image")
    return tmp_path / "data"


def test_json_report_is_one_valid_utf8_document(data: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.npz"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlpersonalize",
            "prepare",
            str(data),
            "-o",
            str(out),
            "-m",
            str(tiny_model),
            "--json",
        ],
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    report = json.loads(result.stdout.decode("utf-8"))  # strict UTF-8: escaped names, no surrogates
    assert report["written"] and report["examples"] == 3 and report["added"] == 3
    assert report["labels"] == {"circle": 2, "😀 smile": 1}
    assert report["model"]["name"] == "tiny"
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"bad\\xff.png", "broken.png", "notes.txt"}
    assert load_batch(out).labels == ("circle", "circle", "😀 smile")


def test_off_a_terminal_a_success_is_silent_and_verbose_lists_the_skipped_files(
    data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    result = run("prepare", str(data), "-o", str(tmp_path / "b.npz"), "-m", str(tiny_model))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")  # cron stays quiet
    result = run("prepare", str(data), "-o", str(tmp_path / "b.npz"), "-m", str(tiny_model), "--force", "-v")
    assert result.returncode == 0 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert all(line.startswith("warning: skipped ") for line in lines[:-1])
    assert any("broken.png" in line for line in lines) and lines[-1].startswith("wrote ")


def test_existing_output_needs_force_and_append_with_force_is_a_usage_error(
    data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b.npz"
    out.write_bytes(b"precious")
    result = run("prepare", str(data), "-o", str(out), "-m", str(tiny_model))
    assert result.returncode == ExitCode.USAGE and result.stdout == ""
    assert (
        result.stderr == f"Error: {out} already exists; pass --force to replace it or --append to add to it\n"
    )
    result = run("prepare", str(data), "-o", str(out), "-m", str(tiny_model), "--append", "--force")
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.startswith("Error: --append and --force cannot be used together")
    assert out.read_bytes() == b"precious"
    assert run("prepare", str(data), "-o", str(out), "-m", str(tiny_model), "--force").returncode == 0


def test_empty_label_folder_exits_3_with_the_report_and_writes_nothing(
    data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    (data / "square").mkdir()
    (data / "square" / "x.png").write_bytes(b"")
    out = tmp_path / "b.npz"
    result = run("prepare", str(data), "-o", str(out), "-m", str(tiny_model), "--json")
    assert result.returncode == ExitCode.INPUT
    assert result.stderr == f"Error: label folder {data / 'square'} holds no usable image; no batch written\n"
    report = json.loads(result.stdout)
    assert report["written"] is False and report["problems"] and not out.exists()
    human = run("prepare", str(data), "-o", str(out), "-m", str(tiny_model))
    assert human.returncode == ExitCode.INPUT and human.stdout == ""
    lines = human.stderr.splitlines()  # the problems above the Error line, no report needed
    assert lines[0] == f"problem: label folder {data / 'square'} holds no usable image"
    assert lines[-1].startswith("Error: label folder")


def test_missing_data_dir_and_bad_batch_are_input_errors(tiny_model: Path, tmp_path: Path) -> None:
    result = run("prepare", str(tmp_path / "nope"), "-o", str(tmp_path / "b.npz"), "-m", str(tiny_model))
    assert result.returncode == ExitCode.INPUT
    assert result.stderr == f"Error: data folder {tmp_path / 'nope'} does not exist or is not a folder\n"
    (tmp_path / "b.npz").write_bytes(b"garbage")
    draw(tmp_path / "d" / "circle" / "a.png")
    result = run(
        "prepare", str(tmp_path / "d"), "-o", str(tmp_path / "b.npz"), "-m", str(tiny_model), "--append"
    )
    assert result.returncode == ExitCode.INPUT and "not a batch file" in result.stderr


@pytest.mark.parametrize("point", ["prepare:after-temp-write", "prepare:before-rename"])
def test_a_crash_while_appending_leaves_the_old_batch_and_the_next_run_recovers(
    point: str, data: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "b.npz"
    assert run("prepare", str(data), "-o", str(out), "-m", str(tiny_model)).returncode == 0
    before = out.read_bytes()
    draw(data / "circle" / "new.png", size=100)
    crashed = run(
        "prepare",
        str(data),
        "-o",
        str(out),
        "-m",
        str(tiny_model),
        "--append",
        env={"MLPERSONALIZE_FAULT": point},
    )
    assert crashed.returncode == -signal.SIGKILL
    assert out.read_bytes() == before and len(load_batch(out)) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.npz.")]  # the killed writer's temp
    again = run("prepare", str(data), "-o", str(out), "-m", str(tiny_model), "--append")
    assert again.returncode == 0, again.stderr
    assert len(load_batch(out)) == 4
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.npz.")]


def test_cli_runner_and_help(data: Path, tiny_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["prepare", "--help"])
    assert result.exit_code == 0 and "Example: mlpersonalize prepare" in result.output
    result = runner.invoke(
        app, ["prepare", str(data), "-o", str(tmp_path / "b.npz"), "-m", str(tiny_model), "--json"]
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["examples"] == 3

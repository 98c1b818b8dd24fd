"""Start-up cost: a command imports only what it uses (`--help` stays fast; `--json` never loads rich)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

HEAVY = ("numpy", "onnx", "onnxruntime", "PIL", "rich")

RUN = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('LOADED', *[m for m in {heavy!r} if m in sys.modules], file=sys.stderr))\n"
    "from mlpersonalize.cli.app import main\n"
    "main(sys.argv[1:])\n"
)


def loaded(*args: str) -> list[str]:
    """The heavy modules in the process when the command has finished (the command's exit code is 0)."""
    proc = subprocess.run(
        [sys.executable, "-c", RUN.format(heavy=HEAVY), *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    line = [line for line in proc.stderr.splitlines() if line.startswith("LOADED")][-1]
    return line.split()[1:]


@pytest.mark.parametrize("args", [["--help"], ["predict", "--help"], ["update", "--help"], ["--version"]])
def test_help_and_version_load_no_heavy_module(args: list[str]) -> None:
    assert loaded(*args) == []


def test_models_json_does_not_load_rich() -> None:
    assert loaded("models", "--json") == []


def test_json_commands_load_what_they_use_but_not_rich(tiny_model: Path, tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    Image.new("L", (28, 28), 255).save(image)
    assert "rich" not in loaded("inspect", "--json", "--model", str(tiny_model))
    used = loaded("predict", "--json", "--model", str(tiny_model), str(image))
    assert "onnxruntime" in used and "rich" not in used


def test_predict_and_inspect_do_not_import_onnx(tiny_model: Path, doodle_model: Path, tmp_path: Path) -> None:
    """Reading a package and running its model.onnx needs ONNX Runtime, never onnx (~30 ms):
    only building or reading a graph does, and a package without external data is not parsed."""
    image = tmp_path / "a.png"
    Image.new("L", (28, 28), 255).save(image)
    for model in (tiny_model, doodle_model):
        assert "onnx" not in loaded("inspect", "--json", "--model", str(model))
        assert "onnx" not in loaded("predict", "--json", "--model", str(model), str(image))


COMMANDS = (
    "mlpersonalize.cli.cmd_prepare",
    "mlpersonalize.cli.cmd_inspect",
    "mlpersonalize.cli.cmd_predict",
    "mlpersonalize.cli.cmd_update",
    "mlpersonalize.cli.cmd_rollback_reset",
    "mlpersonalize.cli.cmd_models",
    "mlpersonalize.cli.cmd_make_updatable",
    "mlpersonalize.cli.cmd_fleet",
)


def command_modules(*args: str) -> list[str]:
    script = RUN.replace("{heavy!r}", repr(COMMANDS))
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("LOADED")][-1].split()[1:]


def test_a_command_loads_only_its_own_module_and_help_lists_every_command() -> None:
    models = command_modules("models", "--json")  # it borrows a helper of inspect's
    assert "mlpersonalize.cli.cmd_models" in models and "mlpersonalize.cli.cmd_update" not in models
    assert command_modules("update", "--help") == ["mlpersonalize.cli.cmd_update"]
    assert command_modules("--help") == list(COMMANDS)


def test_a_console_run_exits_with_its_output_whole_and_its_temp_folders_gone(
    doodle_model: Path, tmp_path: Path
) -> None:
    """The console entry skips the interpreter's teardown (cli.app._exit_now) but not the exit
    handlers: the temp folders the training made are removed, every event is on stdout."""
    from conftest import NEW, write_batch

    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[:2])
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    out = tmp_path / "out"
    args = ["update", str(batch), "--model", str(doodle_model), "-o", str(out), "--json", "--epochs", "2"]
    run = [sys.executable, "-m", "mlpersonalize", *args]
    proc = subprocess.run(run, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["event"] == "began" and events[-1]["event"] == "completed"
    assert (out / "manifest.json").is_file()
    assert [left for folder in temp.iterdir() for left in folder.iterdir()] == []  # mlpersonalize-<uid>/

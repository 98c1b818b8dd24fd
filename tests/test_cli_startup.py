"""Start-up cost: a command imports only what it uses (`--help` stays fast; `--json` never loads rich)."""

from __future__ import annotations

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

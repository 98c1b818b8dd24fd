"""Running the CLI from tests: as a user would (a subprocess) or in-process (fast, capsys)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlpersonalize.cli.app import main


def run_cli(
    *args: str, env: dict[str, str] | None = None, home: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m mlpersonalize ARGS`` with the test's environment, plus ``env`` and ``home``."""
    environment = {**os.environ, **(env or {})}
    if home is not None:
        environment["MLPERSONALIZE_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "mlpersonalize", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=timeout,
    )


def main_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The console entry point in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err

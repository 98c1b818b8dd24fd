"""Output modes: rich tables on a terminal, JSON / JSON Lines for scripts; stdout is data only."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def dumps(data: Any) -> str:
    # Undecodable file names arrive as lone surrogates; "replace" keeps the output valid UTF-8.
    text = json.dumps(data, ensure_ascii=False, default=_default)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def emit_json(data: Any) -> None:
    """One JSON document (or one JSON Lines record) on stdout, flushed for pipelines."""
    sys.stdout.write(dumps(data) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    """A human message on stderr (never stdout)."""
    stderr.print(message, markup=False)


def safe_name(text: str) -> str:
    """A path or label made printable (lone surrogates from undecodable names escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")

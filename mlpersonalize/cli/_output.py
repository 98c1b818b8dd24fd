"""Output modes: rich tables on a terminal, JSON / JSON Lines for scripts; stdout is data only."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from ..names import escape

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


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_escaped(v) for v in value]
    return value


def dumps(data: Any) -> str:
    """JSON text that is valid UTF-8 whatever file names it carries (see names.escape)."""
    return json.dumps(_escaped(data), ensure_ascii=False, default=_default)


def emit_json(data: Any) -> None:
    """One JSON document (or one JSON Lines record) on stdout, flushed for pipelines."""
    sys.stdout.write(dumps(data) + "\n")
    sys.stdout.flush()


def note(message: str) -> None:
    """A human message on stderr (never stdout)."""
    stderr.print(message, markup=False)


def done(message: str) -> None:
    """A success summary: shown on a terminal only, so cron and pipelines stay quiet."""
    if stderr_is_terminal():
        note(message)


def safe_name(text: str) -> str:
    """A path or label made printable (undecodable bytes shown as \\xNN)."""
    return escape(text)

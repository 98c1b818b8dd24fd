"""The one table that turns an exception into an exit code and a message (like huggingface_hub's
``cli/_errors.py``). ``app.main`` looks it up once; no command writes an ``Error:`` line or picks
an exit code itself. The first row whose type matches wins, so subclasses come first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import typer

from ..errors import ExitCode, LearnedNothing, MLPersonalizeError
from ..fsio import describe_os_error
from ..names import quote
from ._output import ClosedOutput


@dataclass(frozen=True)
class Outcome:
    code: int
    message: str | None  # the text after "Error: "; None: nothing is printed
    help: str | None = None  # printed on stdout (no command given)
    traceback: bool = False  # MLPERSONALIZE_DEBUG=1 shows the traceback instead


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return quote(lines[0], backslash=False) if lines else "unknown error"


def _ours(exc: BaseException) -> Outcome:
    assert isinstance(exc, MLPersonalizeError)
    return Outcome(int(exc.exit_code), _first_line(str(exc)), traceback=True)


def _learned_nothing(exc: BaseException) -> Outcome:
    """The update was saved, but learned nothing on its batch: exit 9 with the likely reason."""
    return Outcome(ExitCode.LEARNED_NOTHING, _first_line(str(exc)))


def _closed(exc: BaseException) -> Outcome:
    return Outcome(ExitCode.OK, None)  # the reader stopped reading: not an error (README)


def _interrupted(exc: BaseException) -> Outcome:
    return Outcome(ExitCode.INTERRUPTED, "interrupted; nothing was changed")


def _aborted(exc: BaseException) -> Outcome:
    return Outcome(ExitCode.INTERRUPTED, "aborted; nothing was changed")


def _exit(exc: BaseException) -> Outcome:
    code = int(getattr(exc, "exit_code", 0) or 0)
    if code == ExitCode.INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130) itself
        return _interrupted(exc)
    return Outcome(code, None)


_USAGE = {
    "UsageError",
    "BadParameter",
    "MissingParameter",
    "NoSuchOption",
    "BadOptionUsage",
    "BadArgumentUsage",
}


def _click(exc: BaseException) -> Outcome:
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError":
        return Outcome(ExitCode.USAGE, None, help=ctx.get_help() if ctx else "")
    usage = any(cls.__name__ in _USAGE for cls in type(exc).__mro__)
    where = f" (see '{ctx.command_path} --help')" if usage and ctx else ""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    return Outcome(ExitCode.USAGE if usage else ExitCode.ERROR, _first_line(message) + where)


def _os_error(exc: BaseException) -> Outcome:
    assert isinstance(exc, OSError)
    name = quote(str(getattr(exc, "filename", "") or ""), backslash=False)
    return Outcome(ExitCode.IO, f"{name} {describe_os_error(exc)}".strip(), traceback=True)


def _unexpected(exc: BaseException) -> Outcome:
    return Outcome(
        ExitCode.ERROR,
        f"unexpected {type(exc).__name__}: {_first_line(str(exc))} "
        "(set MLPERSONALIZE_DEBUG=1 for a traceback)",
        traceback=True,
    )


def _table() -> list[tuple[type[BaseException], Callable[[BaseException], Outcome]]]:
    try:
        from typer._click.exceptions import ClickException  # typer >= 0.21 vendors click
    except ImportError:  # typer < 0.21 (the `fleet` extra's flwr 1.42 pins it) uses click itself
        from click.exceptions import ClickException

    return [
        (ClosedOutput, _closed),
        (BrokenPipeError, _closed),
        (LearnedNothing, _learned_nothing),
        (MLPersonalizeError, _ours),
        (KeyboardInterrupt, _interrupted),
        (typer.Abort, _aborted),
        (typer.Exit, _exit),
        (ClickException, _click),
        (OSError, _os_error),
        (Exception, _unexpected),
    ]


def outcome(exc: BaseException) -> Outcome | None:
    """The exit code and message for ``exc``; None when no row matches (SystemExit and the like)."""
    for kind, formatter in _table():
        if isinstance(exc, kind):
            return formatter(exc)
    return None

"""The Typer app: wiring, and the single place errors become `Error: …` and an exit code."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Annotated

import typer

from .. import __version__
from ._errors import outcome
from ._output import ClosedOutput

app = typer.Typer(
    name="mlpersonalize",
    help="Personalize an image classifier on your own machine: prepare → update → predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module defines `register(app)`; its heavy imports happen inside the command bodies so
# that `--help` stays fast.
_COMMAND_MODULES = (
    "prepare",
    "inspect",
    "predict",
    "update",
    "rollback_reset",
    "models",
    "make_updatable",
    "fleet",
)


def _version(value: bool) -> None:
    if value:
        print(f"mlpersonalize {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """Personalize an image classifier on your own machine: prepare → update → predict."""


for _name in _COMMAND_MODULES:
    importlib.import_module(f".cmd_{_name}", __package__).register(app)


def _committed() -> bool:
    """Whether this run already moved a model's ``current`` pointer (store.swapped)."""
    store = sys.modules.get("mlpersonalize.store")
    return bool(store is not None and getattr(store, "swapped", None))


_interrupted: list[int] = []  # the signals this run was stopped by (see main's error branch)


def _sigterm(signum: int, frame: object) -> None:
    # Before the pointer moves, SIGTERM is Ctrl-C: stop, nothing changed. After it moved, the
    # run's outcome is success: the signal is ignored and the command finishes (README).
    if not _committed():
        _interrupted.append(signum)
        raise KeyboardInterrupt


def _sigint(signum: int, frame: object) -> None:
    if not _committed():
        _interrupted.append(signum)
        raise KeyboardInterrupt


def _error_line(message: str) -> None:
    try:
        sys.stderr.write(f"Error: {message}\n")
        sys.stderr.flush()
    except OSError:
        pass  # stderr is gone too; the exit code still says what happened


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app, map every failure to one line and a documented code."""
    saved = {signal.SIGTERM: signal.signal(signal.SIGTERM, _sigterm)}
    saved[signal.SIGINT] = signal.signal(signal.SIGINT, _sigint)
    debug = bool(os.environ.get("MLPERSONALIZE_DEBUG"))
    store = sys.modules.get("mlpersonalize.store")
    if store is not None:  # a new run (in-process callers run several) has committed nothing yet
        store.swapped.clear()
    _interrupted.clear()
    code = 0
    try:
        # Without standalone mode click returns typer.Exit's code instead of raising it.
        returned = app(args=argv, standalone_mode=False)
        code = returned if isinstance(returned, int) else 0
        if code == 130:  # typer turns KeyboardInterrupt into a return value of 130 itself
            code = 0 if _committed() else code
            if code:
                _error_line("interrupted; nothing was changed")
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure goes through the one error table
        if _interrupted and not isinstance(exc, KeyboardInterrupt):
            # The interrupt raised inside an import of a C extension, which reports it as its own
            # failure (numpy: "ImportError: initialization failed"): it is still an interrupt.
            exc = KeyboardInterrupt()
        result = outcome(exc)
        if result is None:
            raise
        if debug and result.traceback:
            raise
        if isinstance(exc, KeyboardInterrupt) and _committed():
            result = type(result)(0, None)
        if result.help is not None:
            sys.stdout.write(result.help + "\n")
        if result.message is not None:
            _error_line(result.message)
        if _is_closed_output(exc):
            _silence_stdout()
        code = result.code
    finally:
        # The outcome is decided: a signal during the interpreter's teardown must not turn it
        # into 143 (the default action comes back once Python finalizes its signal handlers).
        # Called in-process (tests, argv given), the caller's handlers come back instead.
        for sig, handler in saved.items():
            signal.signal(sig, signal.SIG_IGN if argv is None else handler)
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout()
    sys.exit(int(code))


def _is_closed_output(exc: BaseException) -> bool:
    return isinstance(exc, (ClosedOutput, BrokenPipeError))

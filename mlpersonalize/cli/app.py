"""The Typer app: wiring, and the single place errors become `Error: …` and an exit code."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Annotated

import typer

from .. import __version__
from ..errors import ExitCode, Interrupted, MLPersonalizeError
from ..names import escape

app = typer.Typer(
    name="mlpersonalize",
    help="Personalize an image classifier on your own machine: prepare → update → predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

# Each module defines `register(app)`; its heavy imports happen inside the command bodies so
# that `--help` stays fast.
_COMMAND_MODULES = ("prepare", "inspect", "predict", "update", "make_updatable")


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


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def error_line(message: str) -> None:
    text = " ".join(str(message).split()) if "\n" not in str(message).strip() else str(message).strip()
    first = text.splitlines()[0] if text else "unknown error"
    sys.stderr.write(f"Error: {escape(first)}\n")
    sys.stderr.flush()


def _other_error(exc: Exception, debug: bool) -> int:
    """Exit code for an exception that is not ours: usage errors, OS errors, bugs."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        ctx = getattr(exc, "ctx", None)
        sys.stdout.write((ctx.get_help() if ctx else "") + "\n")
        return ExitCode.USAGE
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click.ClickException
        ctx = getattr(exc, "ctx", None)
        usage = type(exc).__name__ in _USAGE_ERRORS
        where = f" (see '{ctx.command_path} --help')" if usage and ctx else ""
        error_line(exc.format_message() + where)
        return ExitCode.USAGE if usage else ExitCode.ERROR
    if isinstance(exc, OSError) and not debug:
        from ..fsio import describe_os_error

        error_line(f"{getattr(exc, 'filename', '') or ''} {describe_os_error(exc)}".strip())
        return ExitCode.IO
    if debug:
        raise exc
    error_line(f"unexpected {type(exc).__name__}: {exc} (set MLPERSONALIZE_DEBUG=1 for a traceback)")
    return ExitCode.ERROR


_USAGE_ERRORS = {
    "UsageError",
    "BadParameter",
    "MissingParameter",
    "NoSuchOption",
    "BadOptionUsage",
    "BadArgumentUsage",
}


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app, map every failure to one line and a documented code."""
    signal.signal(signal.SIGTERM, _sigterm)
    debug = bool(os.environ.get("MLPERSONALIZE_DEBUG"))
    try:
        # Without standalone mode click returns typer.Exit's code instead of raising it.
        returned = app(args=argv, standalone_mode=False)
        code = returned if isinstance(returned, int) else ExitCode.OK
        if code == ExitCode.INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130) itself
            error_line(str(Interrupted("interrupted; nothing was changed")))
    except MLPersonalizeError as exc:
        if debug:
            raise
        error_line(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        error_line(str(Interrupted("interrupted; nothing was changed")))
        code = ExitCode.INTERRUPTED
    except typer.Exit as exc:
        code = ExitCode(exc.exit_code) if exc.exit_code in ExitCode._value2member_map_ else exc.exit_code
    except typer.Abort:
        error_line("aborted")
        code = ExitCode.INTERRUPTED
    except Exception as exc:  # click's (vendored by newer typer) usage errors, and the unexpected
        code = _other_error(exc, debug)
    sys.exit(int(code))

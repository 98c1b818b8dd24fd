"""The Typer app: wiring, and the single place errors become `Error: …` and an exit code."""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import sys
import threading
from importlib.machinery import ExtensionFileLoader
from types import FrameType
from typing import Annotated, Any

import typer

from .. import __version__
from ._errors import outcome
from ._output import ClosedOutput

_SETTINGS: dict[str, Any] = dict(
    name="mlpersonalize",
    help="Personalize an image classifier on your own machine: prepare → update → predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module defines `register(app)`; its heavy imports happen inside the command bodies so
# that `--help` stays fast. Command name -> the module that registers it.
_COMMANDS = {
    "prepare": "prepare",
    "inspect": "inspect",
    "predict": "predict",
    "update": "update",
    "rollback": "rollback_reset",
    "reset": "rollback_reset",
    "models": "models",
    "which": "models",
    "make-updatable": "make_updatable",
    "fleet": "fleet",
}


def _version(value: bool) -> None:
    if value:
        print(f"mlpersonalize {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = None,
) -> None:
    """Personalize an image classifier on your own machine: prepare → update → predict."""


def build_app(modules: tuple[str, ...] | None = None) -> typer.Typer:
    """The Typer app with the commands of ``modules`` (None: every command)."""
    made = typer.Typer(**_SETTINGS)
    made.callback()(_root)
    for name in modules if modules is not None else tuple(dict.fromkeys(_COMMANDS.values())):
        importlib.import_module(f".cmd_{name}", __package__).register(made)
    return made


_FULL: list[typer.Typer] = []


def __getattr__(name: str) -> Any:
    """``app``: every command (tests and tools import it; a run builds only what it uses)."""
    if name == "app":
        if not _FULL:
            _FULL.append(build_app())
        return _FULL[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _app_for(args: list[str]) -> typer.Typer:
    """The app for one run: just the named command when the first argument names one (a
    command's parsing then costs only its own parameters and imports: 10-25 ms less for every
    command), else every command (`--help`, a mistyped name, shell completion)."""
    completing = any(key.startswith("_") and key.endswith("_COMPLETE") for key in os.environ)
    module = _COMMANDS.get(args[0]) if args else None
    if module is None or completing:
        return __getattr__("app")  # type: ignore[no-any-return]
    return build_app((module,))


def _committed() -> bool:
    """Whether this run already moved a model's ``current`` pointer (store.swapped)."""
    store = sys.modules.get("mlpersonalize.store")
    return bool(store is not None and getattr(store, "swapped", None))


_interrupted: list[int] = []  # the signals this run was stopped by (see main's error branch)


def _in_extension_init(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside a C extension module's initialisation (``create_module`` /
    ``exec_module`` of an ``ExtensionFileLoader``), e.g. Python code that onnx's nanobind module
    calls while it sets itself up. An exception raised there does not unwind: nanobind calls
    ``std::terminate`` (exit -6) or the process segfaults (-11); seen 3 times in 24 runs of
    tests/test_cli_field.py's random-SIGTERM test on loaded cores, with the traceback in
    ``onnx/__init__.py``'s import of its C module."""
    while frame is not None:
        if frame.f_code.co_name in ("create_module", "exec_module") and isinstance(
            frame.f_locals.get("self"), ExtensionFileLoader
        ):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Before the pointer moves, SIGTERM is Ctrl-C: stop, nothing changed. After it moved, the
    # run's outcome is success: the signal is ignored and the command finishes (README).
    if _committed():
        return
    if _in_extension_init(frame):  # not here: the same signal again once the module is loaded
        resend = threading.Timer(RESEND_AFTER, os.kill, (os.getpid(), signum))
        resend.daemon = True
        _resends.append(resend)
        resend.start()
        return
    _interrupted.append(signum)
    raise KeyboardInterrupt


RESEND_AFTER = 0.02  # seconds; an extension's initialisation takes milliseconds
_resends: list[threading.Timer] = []  # cancelled when the run ends (an in-process caller's handlers)


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
    saved = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    debug = bool(os.environ.get("MLPERSONALIZE_DEBUG"))
    store = sys.modules.get("mlpersonalize.store")
    if store is not None:  # a new run (in-process callers run several) has committed nothing yet
        store.swapped.clear()
    _interrupted.clear()
    code = 0
    try:
        # Without standalone mode click returns typer.Exit's code instead of raising it.
        args = sys.argv[1:] if argv is None else list(argv)
        returned = _app_for(args)(args=args, standalone_mode=False)
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
        while _resends:
            _resends.pop().cancel()
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout()
    if argv is None:
        _exit_now(int(code))
    sys.exit(int(code))


def _exit_now(code: int) -> None:
    """End the console run without the interpreter's teardown, once its outcome is out.

    Python's shutdown frees every module and object one by one, and ONNX Runtime's library then
    runs its own destructors: 45-65 ms from the last exit handler to the end of an update, after
    its result is printed and its model durable (17-27 ms this way; ``import numpy, onnxruntime,
    PIL`` alone spends 36 ms there). The exit handlers still run (temp
    folders, multiprocessing, coverage), and both streams are flushed; only the freeing is
    skipped. With another Python thread alive, or where ``atexit`` cannot be run by hand, the
    interpreter exits as usual. Called in-process (tests, ``main(argv)``), it is never used.
    """
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None or threading.active_count() > 1:
        return
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: the exit code still says what happened
    os._exit(code)


def _is_closed_output(exc: BaseException) -> bool:
    return isinstance(exc, (ClosedOutput, BrokenPipeError))

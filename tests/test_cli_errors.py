"""The CLI's one error table (cli/_errors.py): each row's exit code and message, unit by unit."""

from __future__ import annotations

import errno
import re

import pytest
import typer
from typer._click.exceptions import ClickException, NoSuchOption

from mlpersonalize.cli import _errors
from mlpersonalize.cli._output import ClosedOutput
from mlpersonalize.errors import (
    BatchError,
    BusyError,
    ExitCode,
    ImageError,
    InputError,
    ModelError,
    PartialError,
    RejectedError,
    StorageError,
    UsageError,
)


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (UsageError("bad flag"), ExitCode.USAGE, "bad flag"),
        (InputError("x.png: gone"), ExitCode.INPUT, "x.png: gone"),
        (ImageError("corrupt"), ExitCode.INPUT, "corrupt"),
        (BatchError("wrong model"), ExitCode.INPUT, "wrong model"),
        (ModelError("no manifest"), ExitCode.MODEL, "no manifest"),
        (BusyError("locked"), ExitCode.BUSY, "locked"),
        (RejectedError("guard"), ExitCode.REJECTED, "guard"),
        (StorageError("disk full"), ExitCode.IO, "disk full"),
        (PartialError(2, 5), ExitCode.PARTIAL, "2 of 5 images could not be read (see the output)"),
        (PartialError(5, 5), ExitCode.INPUT, "5 of 5 images could not be read (see the output)"),
        (ModelError("first line\n  second line"), ExitCode.MODEL, "first line"),
        (ModelError("name \x1b[31mred\x1b[0m"), ExitCode.MODEL, "name \\x1b[31mred\\x1b[0m"),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED, "interrupted; nothing was changed"),
        (typer.Abort(), ExitCode.INTERRUPTED, "aborted; nothing was changed"),
        (typer.Exit(3), 3, None),
        (typer.Exit(130), ExitCode.INTERRUPTED, "interrupted; nothing was changed"),
        (ClosedOutput(), ExitCode.OK, None),
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), ExitCode.OK, None),
        (ClickException("click says no"), ExitCode.ERROR, "click says no"),
        (NoSuchOption("--nope"), ExitCode.USAGE, "No such option: --nope"),
        (RuntimeError("bug"), ExitCode.ERROR, "unexpected RuntimeError: bug (set MLPERSONALIZE_DEBUG=1"),
    ],
)
def test_each_row_gives_its_code_and_one_line(exc: BaseException, code: int, message: str | None) -> None:
    got = _errors.outcome(exc)
    assert got is not None and got.code == code
    if message is None:
        assert got.message is None
    else:
        assert got.message is not None and got.message.startswith(message) and "\n" not in got.message


def test_os_errors_are_io_with_the_file_name_escaped() -> None:
    exc = PermissionError(errno.EACCES, "Permission denied", "/data/\x1b[2Jx")
    got = _errors.outcome(exc)
    assert got is not None and got.code == ExitCode.IO
    assert (
        got.message is not None and got.message.startswith("/data/\\x1b[2Jx ") and "\x1b" not in got.message
    )


def test_subclasses_are_listed_before_their_bases() -> None:
    table = _errors._table()
    for i, (kind, _) in enumerate(table):
        for later, _ in table[i + 1 :]:
            assert not issubclass(later, kind) or later is kind, (
                f"{later.__name__} is shadowed by {kind.__name__}"
            )


def test_no_command_writes_its_own_error_line_or_exit_code() -> None:
    from pathlib import Path

    import mlpersonalize.cli as cli

    for path in Path(cli.__file__).parent.glob("cmd_*.py"):
        text = path.read_text()
        assert not re.search(r"\bError: ", text) and "sys.exit" not in text and "typer.Exit(" not in text, (
            path.name
        )
        assert "stderr.write" not in text and not re.search(r"(?<![\w.])print\(", text), path.name


def test_debug_tracebacks_are_for_failures_not_for_usage_or_pipes() -> None:
    def traceback(exc: BaseException) -> bool:
        got = _errors.outcome(exc)
        return bool(got and got.traceback)

    assert traceback(RuntimeError("bug")) and traceback(ModelError("x")) and traceback(OSError(5, "EIO"))
    assert (
        not traceback(NoSuchOption("--x")) and not traceback(ClosedOutput()) and not traceback(typer.Exit(0))
    )


def test_an_interrupt_that_a_c_extension_reports_as_its_own_import_error_is_still_an_interrupt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGTERM while numpy's C extension initialises comes out as "ImportError: initialization
    failed" (seen in the random-SIGTERM test): the run was interrupted, so exit 130 and the
    interrupt's one line, not exit 1 and "unexpected ImportError"."""
    from mlpersonalize.cli import app as app_module

    def stopped_during_an_import(*args: object, **kwargs: object) -> None:
        with pytest.raises(KeyboardInterrupt):
            app_module._interrupt(15, None)
        raise ImportError("initialization failed")

    monkeypatch.setattr(app_module, "_app_for", lambda args: stopped_during_an_import)
    with pytest.raises(SystemExit) as exited:
        app_module.main(["inspect"])
    assert exited.value.code == 130
    assert capsys.readouterr().err == "Error: interrupted; nothing was changed\n"

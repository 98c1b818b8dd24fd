"""`mlpersonalize prepare`: labelled image folders become a batch file for `update`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ._options import JsonOpt, ModelOpt, ThreadsOpt

if TYPE_CHECKING:
    from ..prepare import Progress, Report

DataDirsArg = Annotated[
    list[Path],
    typer.Argument(
        help="Folders laid out as DATA_DIR/<label>/<images>; several merge into one batch.",
        show_default=False,
        metavar="DATA_DIR",
    ),
]
OutputOpt = Annotated[
    Path, typer.Option("--output", "-o", help="Batch file to write, e.g. batch.npz.", show_default=False)
]
AppendOpt = Annotated[
    bool, typer.Option("--append", help="Add to the batch in --output (created if missing); same model only.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace --output if it exists.")]


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_command)


def prepare_command(
    data_dirs: DataDirsArg,
    output: OutputOpt,
    model: ModelOpt = None,
    append: AppendOpt = False,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Turn labelled image folders into a batch file for `update`.

    Each sub-folder of DATA_DIR is a label (its name, any Unicode); images may sit in nested
    folders below it. Hidden files, non-images and unreadable images are skipped and reported;
    links to files inside DATA_DIR are followed, other links are not. Nothing is written (exit 3)
    if a label folder has no usable image, an image appears under two labels, or nothing is usable.

    Output: on a terminal, tables on stdout; with --json, one JSON document on stdout; otherwise
    only a warning per unreadable or duplicate file on stderr (a summary too if stderr is a
    terminal).

    Example: mlpersonalize prepare ~/drawings -o batch.npz
    """
    from .. import threads as thread_setting
    from ..errors import UsageError
    from ..package import load_package
    from ..prepare import PrepareError, prepare
    from ..store import resolve_model
    from ._output import note

    thread_setting.use(threads)
    if append and force:
        raise UsageError("--append and --force cannot be used together (--append keeps the batch)")
    package = load_package(resolve_model(model).path, verify=False)
    try:
        with _progress(enabled=not json_out) as progress:
            report = prepare(
                data_dirs,
                output,
                package.manifest,
                append=append,
                force=force,
                workers=thread_setting.configured() or None,
                progress=progress,
                on_wait=lambda: note(f"waiting: another prepare is appending to {output}"),
            )
    except PrepareError as exc:
        _render(exc.report, json_out, failed=True)
        raise
    _render(report, json_out)


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    """A transient progress bar on a terminal's stderr, redrawn at most ten times a second."""
    from ._output import stderr, stderr_is_terminal

    if not (enabled and stderr_is_terminal()):
        yield None
        return
    from rich.progress import Progress as Bar

    # auto_refresh off: no refresh thread, so forking the decoding workers stays safe
    with Bar(console=stderr, transient=True, auto_refresh=False) as bar:
        task = bar.add_task("decoding images", total=None)
        last = 0.0

        def update(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last > 0.1 or done == total:
                bar.update(task, completed=done, total=total)
                bar.refresh()
                last = now

        yield update


def _render(report: Report, json_out: bool, failed: bool = False) -> None:
    from ._output import done, emit_json, note

    if json_out:
        emit_json(report.to_dict())
    elif _stdout_is_terminal() and not failed:
        _tables(report)
    else:
        for item in report.skipped:
            if item.kind != "ignored":
                note(f"warning: skipped {item.path}: {item.reason}")
        if not failed:
            done(_summary(report))


def _stdout_is_terminal() -> bool:
    import sys

    return sys.stdout.isatty()


def _summary(report: Report) -> str:
    ignored = sum(1 for s in report.skipped if s.kind == "ignored")
    others = len(report.skipped) - ignored
    verb = ("added to" if report.appended else "wrote") if report.written else "nothing new for"
    return (
        f"{verb} {report.output}: {report.examples} examples in {len(report.labels)} labels "
        f"({report.added} new); {others} files skipped, {ignored} ignored (hidden or not images)"
    )


def _tables(report: Report) -> None:
    from rich.table import Table
    from rich.text import Text

    from ._output import stdout_console

    console = stdout_console()
    # Text(), not str: labels and file names are data, never rich markup
    counts = Table("label", "examples", "new", title=Text(f"batch for model {report.model_name!r}"))
    for label, count in report.labels.items():
        counts.add_row(Text(label), str(count), str(report.added_labels.get(label, 0)))
    console.print(counts)
    if report.skipped:
        skipped = Table("file", "reason", title="skipped")
        for item in report.skipped:
            skipped.add_row(Text(item.path), Text(item.reason))
        console.print(skipped)
    console.print(_summary(report), markup=False)

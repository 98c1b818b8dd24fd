"""`mlpersonalize prepare`: labelled image folders become a batch file for `update`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .. import threads as thread_setting
from ..errors import UsageError
from ._options import JsonOpt, ModelOpt, NoWaitOpt, QuietOpt, ThreadsOpt, VerboseOpt
from ._output import out, plural, safe_name, safe_text, summarise

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
    no_wait: NoWaitOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Turn labelled image folders into a batch file for `update`.

    Each sub-folder of DATA_DIR is a label (its name, any Unicode); images may sit in nested
    folders below it. Hidden files, non-images and unreadable images are skipped and reported;
    links to files inside DATA_DIR are followed, other links are not. Nothing is written (exit 3)
    if a label folder has no usable image, an image appears under two labels, or nothing is usable.

    Output: on a terminal, tables on stdout; with --json, one JSON document on stdout; otherwise
    nothing on success (--verbose: a warning per skipped file and a summary on stderr). On
    failure the problems are listed on stderr above the Error line.

    Example: mlpersonalize prepare ~/drawings -o batch.npz
    """
    # lazy: package + prepare pull numpy, PIL, onnx (~0.12 s); store ~7 ms
    from ..package import load_package
    from ..prepare import PrepareError, prepare
    from ..store import open_model

    out.configure(json_out, quiet, verbose)
    if str(output) == "-":
        raise UsageError("a batch is a binary file, never written to stdout; give a file name: -o batch.npz")
    thread_setting.use(threads)
    if append and force:
        raise UsageError("--append and --force cannot be used together (--append keeps the batch)")
    shown = safe_name(str(output))
    package = open_model(model, lambda resolved: load_package(resolved.path, verify=False))
    try:
        with _progress(enabled=out.live) as progress:
            report = prepare(
                data_dirs,
                output,
                package.manifest,
                append=append,
                force=force,
                workers=thread_setting.configured() or None,
                progress=progress,
                on_wait=lambda: out.note(f"waiting: another prepare is appending to {shown}"),
                wait=not no_wait,
            )
    except PrepareError as exc:
        _render(exc.report, failed=True)
        raise
    _render(report)


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    """A transient progress bar on a terminal's stderr, redrawn at most ten times a second."""
    if not enabled:
        yield None
        return
    # lazy: rich costs 8-18 ms, and only human output needs it
    from rich.progress import Progress as Bar

    # auto_refresh off: no refresh thread, so forking the decoding workers stays safe
    with Bar(console=out.stderr_console(), transient=True, auto_refresh=False) as bar:
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


def _render(report: Report, failed: bool = False) -> None:
    if out.json:
        out.record(report.to_dict(), escaped=True)
        return
    if out.tables and not failed:
        _tables(report)
        return
    for item in report.skipped:
        # images already in the batch are counted in the summary, listed only with --verbose
        if item.kind != "ignored" and (item.kind != "duplicate" or out.verbose or failed):
            out.warn(f"skipped {safe_text(item.path)}: {safe_text(item.reason)}")
    if failed:
        for problem in report.problems:
            out.problem(safe_text(problem))
        return
    out.done(_summary(report))


def _summary(report: Report) -> str:
    ignored = sum(1 for s in report.skipped if s.kind == "ignored")
    others = len(report.skipped) - ignored
    verb = ("added to" if report.appended else "wrote") if report.written else "nothing new for"
    new = list(report.added_labels)
    return (
        f"{verb} {safe_text(report.output)}: {plural(report.examples, 'example')} in "
        f"{plural(len(report.labels), 'label')} ({report.added} new"
        + (f": {summarise(new)}" if new else "")
        + f"); {plural(others, 'file')} skipped, {ignored} ignored (hidden or not images)"
    )


def _tables(report: Report) -> None:
    # lazy: rich costs 8-18 ms, and only human output needs it
    from rich.table import Table
    from rich.text import Text

    # Text(), not str: labels and file names are data, never rich markup
    counts = Table(
        "label", "examples", "new", title=Text(f"batch for model {safe_name(report.model_name)!r}")
    )
    for label, count in report.labels.items():
        counts.add_row(Text(safe_name(label)), str(count), str(report.added_labels.get(label, 0)))
    out.print(counts)
    if report.skipped:
        skipped = Table("file", "reason", title="skipped")
        for item in report.skipped:
            skipped.add_row(Text(safe_text(item.path)), Text(safe_text(item.reason)))
        out.print(skipped)
    out.print(Text(_summary(report)))

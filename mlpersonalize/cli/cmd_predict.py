"""`mlpersonalize predict`: classify image files and folders."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import threads as thread_setting
from ..errors import InputError, PartialError
from ._options import JsonOpt, ModelOpt, QuietOpt, ThreadsOpt, VerboseOpt
from ._output import out, safe_name, safe_text

PROGRESS_MIN_FILES = 200  # a bar for runs long enough to wonder about (a terminal only)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)


def table_row(result: Any) -> tuple[Any, ...]:
    """One prediction as table cells; names and labels are quoted data, never rich markup."""
    # lazy: rich costs 8-18 ms, and only human output needs it
    from rich.text import Text

    if result.error:
        return Text(safe_name(result.file)), Text("error", style="red"), "", Text(safe_text(result.error))
    top = ", ".join(f"{safe_name(label)} {p:.2f}" for label, p in result.top)
    return Text(safe_name(result.file)), Text(safe_name(result.label)), f"{result.confidence:.3f}", Text(top)


def predict_command(
    inputs: Annotated[
        list[Path], typer.Argument(help="Image files or folders (searched recursively).", show_default=False)
    ],
    model: ModelOpt = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, help="How many labels to list per image.")
    ] = 3,
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Confidence under which the label is 'unknown'. Default: the model's."
        ),
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Classify images; a table on a terminal, tab-separated lines in a pipe, JSON Lines with --json.

    A file that cannot be read (named here or found in a folder) gets an error entry; the rest
    are classified and the exit code is 8 (3 if none could be read). TSV rows are
    FILE<TAB>LABEL<TAB>CONFIDENCE; an error row is FILE<TAB><TAB><TAB>REASON (README, "Output").

    Example: mlpersonalize predict drawings/ --json
    """
    # lazy: decoding + inference pull numpy, PIL, ONNX Runtime (~0.16 s); store ~7 ms
    from ..decoding import Decoder
    from ..inference import collect_images
    from ..store import open_model

    out.configure(json_out, quiet, verbose)
    paths = list(collect_images(inputs))
    thread_setting.use(threads)
    workers = thread_setting.configured() or None
    with Decoder(_constraint(model), len(paths), workers, digest=False) as decoder:
        # after the decoding workers started: they fork without the session's threads
        classifier = open_model(model, _open_classifier)
        decoded = decoder.map([(os.fspath(path), False) for path in paths])
        results = classifier.classify(paths, top_k=top_k, threshold=threshold, decoded=decoded)
        _print(_with_progress(results, len(paths)), inputs, top_k)


def _note_copy(resolved: Any, name: str) -> None:
    """An original package whose personalized copy exists: say which answers (store.copy_note)."""
    # lazy: store ~7 ms
    from ..store import copy_note

    message = copy_note(resolved.path, resolved.source, name)
    if message:
        out.note(safe_name(message))


def _open_classifier(resolved: Any) -> Any:
    # lazy: numpy, ONNX Runtime 0.1-0.15 s
    from ..inference import Classifier
    from ..package import load_package

    package = load_package(resolved.path)
    _note_copy(resolved, package.manifest.name)
    return Classifier(package)


def _constraint(model: Path | None) -> Any:
    # lazy: package pulls numpy (~50 ms); store ~7 ms
    from ..package import load_package
    from ..store import open_model

    return open_model(model, lambda resolved: load_package(resolved.path, verify=False)).manifest.constraint


def _with_progress(results: Iterable[Any], total: int) -> Iterator[Any]:
    """The results, with a transient bar on a terminal's stderr for long runs (not in a table run:
    the table prints at the end, so the bar shows how far it is)."""
    if not (out.live and total >= PROGRESS_MIN_FILES):
        yield from results
        return
    # lazy: rich costs 8-18 ms, and only human output needs it
    from rich.progress import Progress

    with Progress(console=out.stderr_console(), transient=True) as bar:
        task = bar.add_task("classifying", total=total)
        for result in results:
            yield result
            bar.advance(task)


def _print(results: Iterable[Any], inputs: list[Path], top_k: int) -> None:
    """Each result as it comes (JSON Lines, a table, or tab-separated lines); a PartialError at the end."""
    table = None
    if out.tables:
        # lazy: rich costs 8-18 ms, and only human output needs it
        from rich.table import Table

        table = Table("file", "label", "confidence", f"top {top_k}")
        table.columns[0].overflow = "fold"  # a long name wraps, never cut to "test/☂️/0…"
    total = failed = 0
    for result in results:
        total += 1
        failed += bool(result.error)
        if out.json:
            out.record(result.to_dict())
        elif table is not None:
            table.add_row(*table_row(result))
        elif result.error:
            out.write(f"{_name(result.file)}\t\t\t{safe_text(result.error)}\n")
        else:
            out.write(f"{_name(result.file)}\t{_name(result.label)}\t{result.confidence:.4f}\n")
    if table is not None:
        out.print(table)
    if total == 0:
        raise InputError("no images found in " + ", ".join(str(p) for p in inputs))
    if failed:
        raise PartialError(failed, total)


def _name(text: str) -> str:
    return safe_name(text)

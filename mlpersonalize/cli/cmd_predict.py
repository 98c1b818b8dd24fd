"""`mlpersonalize predict`: classify image files and folders."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from ._options import JsonOpt, ModelOpt


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)


def table_row(result: Any) -> tuple[Any, ...]:
    """One prediction as table cells; names and labels are data, never rich markup."""
    from rich.text import Text

    from ._output import safe_name

    if result.error:
        return Text(safe_name(result.file)), Text("error", style="red"), "", Text(safe_name(result.error))
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
) -> None:
    """Classify images; a table on a terminal, tab-separated lines in a pipe, JSON Lines with --json.

    Example: mlpersonalize predict drawings/ --json
    """
    from ..decoding import Decoder
    from ..inference import Classifier, collect_images
    from ..package import load_package
    from ..store import resolve_model

    resolved = resolve_model(model)
    package = load_package(resolved.path)
    _note_copy(resolved, package.manifest.name)
    paths = list(collect_images(inputs))
    with Decoder(package.manifest.constraint, len(paths), digest=False) as decoder:
        classifier = Classifier(package)  # after the decoding workers started: they fork without its threads
        decoded = decoder.map([(os.fspath(path), False) for path in paths])
        results = classifier.classify(paths, top_k=top_k, threshold=threshold, decoded=decoded)
        _print(results, inputs, top_k, json_out)


def _note_copy(resolved: Any, name: str) -> None:
    """An original package whose personalized copy exists: say which answers (byo.copy_note)."""
    from ..byo import copy_note
    from ._output import note, safe_name

    message = copy_note(resolved.path, resolved.source, name)
    if message:
        note(safe_name(message))


def _print(results: Iterable[Any], inputs: list[Path], top_k: int, json_out: bool) -> None:
    """Each result as it comes (JSON Lines, a table, or tab-separated lines), then the exit code."""
    from ..errors import ExitCode, InputError
    from ._output import emit_json, safe_name, stdout_console

    table = None
    if not json_out and sys.stdout.isatty():
        from rich.table import Table

        table = Table("file", "label", "confidence", f"top {top_k}")
    total = failed = 0
    for result in results:
        total += 1
        failed += bool(result.error)
        if json_out:
            emit_json(result.to_dict())
        elif table is not None:
            table.add_row(*table_row(result))
        elif result.error:
            print(f"{safe_name(result.file)}\terror\t\t{safe_name(result.error)}", flush=True)
        else:
            print(f"{safe_name(result.file)}\t{safe_name(result.label)}\t{result.confidence:.4f}", flush=True)
    if table is not None:
        stdout_console().print(table)
    if total == 0:
        raise InputError("no images found in " + ", ".join(str(p) for p in inputs))
    if failed:
        code = ExitCode.INPUT if failed == total else ExitCode.PARTIAL
        sys.stderr.write(f"Error: {failed} of {total} images could not be read (see the output)\n")
        raise typer.Exit(int(code))

"""`mlpersonalize make-updatable`: turn a plain ONNX image classifier into an updatable package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ._options import JsonOpt, QuietOpt, VerboseOpt
from ._output import out, safe_name


def register(app: typer.Typer) -> None:
    app.command("make-updatable")(make_updatable_command)


def _floats(values: list[str] | None, flag: str) -> tuple[float, ...] | None:
    """Repeated or comma-separated numbers (`--bias -0.5 --bias 0.1` or `--bias=-0.5,0.1`)."""
    if not values:
        return None
    try:
        return tuple(float(part) for value in values for part in value.split(",") if part.strip())
    except ValueError as exc:
        raise UsageError(f"{flag} takes numbers: {exc}") from exc


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise UsageError(f"--input-size must look like 28x28, not {text!r}") from exc
    return width, height


def make_updatable_command(
    model: Annotated[Path, typer.Argument(help="The ONNX classifier (.onnx).", show_default=False)],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="New package folder (must not exist or be empty).")
    ],
    labels: Annotated[
        Path | None, typer.Option(help="Labels: text file (one per line) or JSON list. Default: class_0…")
    ] = None,
    trainable: Annotated[
        list[str] | None,
        typer.Option(
            help="Parameter(s) to train (default: the last linear layer's). Earlier layers' parameters "
            "train in a copy of those layers that serves only the labels updates add."
        ),
    ] = None,
    embedding: Annotated[str | None, typer.Option(help="Tensor the head reads (checked).")] = None,
    input_size: Annotated[
        str | None, typer.Option(help="WxH, when the model's input size is not fixed.")
    ] = None,
    color: Annotated[
        str | None, typer.Option(help="rgb or gray (default: from the input's channels).")
    ] = None,
    scale: Annotated[
        float | None, typer.Option(help="Model value = pixel × scale + bias. Default 1/255.")
    ] = None,
    bias: Annotated[list[str] | None, typer.Option(help="Bias, one or one per channel.")] = None,
    mean: Annotated[list[str] | None, typer.Option(help="Per-channel mean in 0..1 (with --std).")] = None,
    std: Annotated[list[str] | None, typer.Option(help="Std in 0..1 (one value).")] = None,
    layout: Annotated[str | None, typer.Option(help="nchw or nhwc (default: from the input shape).")] = None,
    ink: Annotated[str, typer.Option(help="Drawings: light (on dark) or dark; none for photos.")] = "none",
    optimizer: Annotated[str, typer.Option(help="adamw or sgd.")] = "adamw",
    epochs: Annotated[int | None, typer.Option(help="Default epochs of later updates.")] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="Default learning rate of later updates.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Default batch size of later updates.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: the file's stem).")] = None,
    examples: Annotated[
        Path | None,
        typer.Option(help="Folders <label>/ of a few images of the model's own labels, kept to rehearse."),
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Make an ONNX classifier updatable: its last linear layer becomes the head `update` trains.

    Example: mlpersonalize make-updatable mnist.onnx -o mnist-pkg --ink light --labels digits.txt
    """
    # lazy: numpy, onnx, ONNX Runtime 0.12-0.16 s
    from ..byo import DEFAULTS, ByoOptions, make_updatable

    out.configure(json_out, quiet, verbose)
    options = ByoOptions(
        labels=labels,
        trainable=tuple(trainable or ()),
        embedding=embedding,
        size=_size(input_size),
        color=color,
        layout=layout,
        scale=scale,
        bias=_floats(bias, "--bias"),
        mean=_floats(mean, "--mean"),
        std=_floats(std, "--std"),
        ink=ink,
        params=DEFAULTS.replace(
            optimizer=optimizer, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size
        ),
        name=name,
        examples=examples,
    )
    result = make_updatable(model, output, options)
    manifest = result.manifest
    if out.json:
        out.record(
            {
                "model": str(result.path),
                "labels": list(manifest.labels),
                "head": result.head,
                "input": manifest.constraint.to_dict(),
                "embedding_dim": manifest.embedding_dim,
            }
        )
    else:
        op, tensor = result.head["head"]["op"], result.head["embedding"]
        branch = result.head.get("branch")
        if branch:
            trained = (
                f"{len(branch['layers'])} nodes after {safe_name(branch['cut'])!r} train for new labels, "
            )
        else:
            trained = ""
        out.done(
            f"Made updatable: {safe_name(str(result.path))} ({len(manifest.labels)} labels, head {op} "
            f"on {safe_name(tensor)!r}, {trained}{manifest.embedding_dim}-d embedding)"
        )

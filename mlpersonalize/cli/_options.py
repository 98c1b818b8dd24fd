"""Option aliases shared by every command, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Model package folder, or the name of a personalized model. Default: $MLPERSONALIZE_MODEL, "
        "else your personalized copy, else the bundled original (`mlpersonalize which` says which).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No messages on stderr but errors (stdout data stays).")
]
VerboseOpt = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Messages and per-file warnings even off a terminal (cron logs)."),
]
NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="Fail (exit 5) instead of waiting for another run holding the lock.")
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=0,
        help="Threads for ONNX Runtime (and image-decoding workers). Default: $MLPERSONALIZE_THREADS, "
        "else one per core; 1 leaves the rest of the machine to others.",
        show_default=False,
    ),
]

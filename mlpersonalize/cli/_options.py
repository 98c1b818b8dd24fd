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
        help="Model package folder. Default: $MLPERSONALIZE_MODEL, else your personalized copy, "
        "else the bundled original.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
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

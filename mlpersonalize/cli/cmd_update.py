"""`mlpersonalize update`, `rollback` and `reset`: personalize the model, undo, start over."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ._options import JsonOpt, ModelOpt


def register(app: typer.Typer) -> None:
    app.command("update")(update_command)
    app.command("rollback")(rollback_command)
    app.command("reset")(reset_command)


NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="Fail (exit 5) instead of waiting for another update.")
]


def _waiting(root: Any) -> Any:
    from ._output import note, safe_name

    return lambda: note(f"Waiting for another update of {safe_name(str(root))} to finish…")


class _Renderer:
    """Turns core events into JSON Lines (--json), a progress bar (terminal) or nothing (pipe)."""

    def __init__(self, json_out: bool) -> None:
        from ._output import stderr_is_terminal

        self.json_out = json_out
        self.progress: Any = None
        self.task: Any = None
        self.live = not json_out and stderr_is_terminal()

    def __call__(self, event: dict[str, Any]) -> None:
        from ._output import emit_json

        if self.json_out:
            emit_json(event)
        elif self.live and event["event"] == "began":
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            from ._output import stderr

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[loss]}"),
                TimeElapsedColumn(),
                console=stderr,
                transient=True,
            )
            self.progress.start()
            total = event["epochs"] * event["passes"]
            self.task = self.progress.add_task("Training", total=total, loss="")
        elif self.progress is not None and event["event"] == "epoch_end":
            what = "Checking" if event["pass"] == 1 else "Training"
            self.progress.update(
                self.task,
                advance=1,
                description=f"{what} · epoch {event['epoch']}",
                loss=f"loss {event['loss']:.4f}",
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def update_command(
    batches: Annotated[
        list[Path], typer.Argument(help="Batch files made by `mlpersonalize prepare`.", show_default=False)
    ],
    model: ModelOpt = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the updated model here (a new or empty folder) instead."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs. Default: the model's.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Learning rate. Default: the model's.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Examples per training step. Default: the model's.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (shuffling, held-out split).")] = None,
    no_shuffle: Annotated[
        bool, typer.Option("--no-shuffle", help="Keep the examples' order each epoch.")
    ] = False,
    keep: Annotated[
        int,
        typer.Option(
            help="How many versions rollback can step back through (the one an update replaces "
            "stays until the next update)."
        ),
    ] = 3,
    max_drop: Annotated[
        float, typer.Option(help="Refuse the update if known labels lose more accuracy points than this.")
    ] = 2.0,
    force: Annotated[
        bool, typer.Option("--force", help="Swap in the update even if the guard refuses it.")
    ] = False,
    no_wait: NoWaitOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Train the model on labelled batches; new labels are added. The original is never changed.

    Example: mlpersonalize update batch.npz --json
    """
    from ..byo import update_hint
    from ..updater import UpdateOptions, update
    from ._output import done, safe_name

    options = UpdateOptions(
        model=model,
        output=output,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
        shuffle=False if no_shuffle else None,
        keep=keep,
        wait=not no_wait,
        force=force,
        max_drop=max_drop / 100.0,
    )
    renderer = _Renderer(json_out)
    try:
        result = update(batches, options, renderer, _waiting(model or "the model"))
    finally:
        renderer.close()
    if not json_out:
        acc = result.history["accuracy"]
        added = f"; new labels: {', '.join(result.labels_added)}" if result.labels_added else ""
        held = acc["held_out_after"]
        held_text = f"; held-out accuracy {held:.0%}" if held is not None else ""
        where = f"version {result.version} at " if result.version else ""
        forced = " (forced past the guard)" if result.history["guard"]["forced"] else ""
        hint = safe_name(update_hint(model, result.model, result.version))
        done(f"Updated{forced}: {where}{safe_name(str(result.model))}{added}{held_text}{hint}")


def rollback_command(model: ModelOpt = None, no_wait: NoWaitOpt = False, json_out: JsonOpt = False) -> None:
    """Point your personalized model back at its previous version.

    Example: mlpersonalize rollback
    """
    from .. import store
    from ._output import done, emit_json, safe_name

    root = store.model_root(model)
    version = store.rollback(root, not no_wait, _waiting(root))
    path = store.versions_dir(root) / version
    if json_out:
        emit_json({"model": str(path), "version": version})
    else:
        done(f"Rolled back: version {version} at {safe_name(str(path))}")


def reset_command(model: ModelOpt = None, no_wait: NoWaitOpt = False, json_out: JsonOpt = False) -> None:
    """Delete your personalized model; predictions use the bundled original again.

    Example: mlpersonalize reset
    """
    from .. import store
    from ._output import done, emit_json, safe_name

    root = store.model_root(model)
    removed = store.reset(root, not no_wait, _waiting(root))
    if json_out:
        emit_json({"model": str(root), "removed_versions": removed})
    elif removed:
        done(f"Reset: removed {len(removed)} version(s) at {safe_name(str(root))}")
    else:
        done(f"Nothing to reset: no personalized model at {safe_name(str(root))}")
    sys.stderr.flush()

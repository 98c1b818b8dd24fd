"""`mlpersonalize update`: personalize the model with labelled batches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .. import threads as thread_setting
from ..errors import LearnedNothing, UsageError
from ._options import JsonOpt, ModelOpt, NoWaitOpt, QuietOpt, ThreadsOpt, VerboseOpt
from ._output import out, plural, safe_name, summarise


def register(app: typer.Typer) -> None:
    app.command("update")(update_command)


def waiting(root: Any) -> Any:
    return lambda: out.note(f"Waiting for another update of {safe_name(str(root))} to finish…")


class _Renderer:
    """Turns core events into JSON Lines (--json), a progress bar (terminal) or nothing (pipe)."""

    def __init__(self) -> None:
        self.out = out
        self.progress: Any = None
        self.task: Any = None
        self.passes = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if self.out.json:
            self.out.record(event)
        elif self.out.live and event["event"] == "began":
            # lazy: rich costs 8-18 ms, and only human output needs it
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[loss]}"),
                TimeElapsedColumn(),
                console=self.out.stderr_console(),
                transient=True,
            )
            self.progress.start()
            total = event["epochs"] * event["passes"]
            self.passes = event["passes"]
            self.task = self.progress.add_task("Training", total=total, loss="")
        elif self.progress is not None and event["event"] == "epoch_end":
            event = {**event, "passes": self.passes}
            what = "Checking" if event["pass"] < event.get("passes", 0) else "Training"
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


LOW_HELD_OUT = 0.5  # below this a held-out figure gets a hint on what it means


def summary(result: Any) -> str:
    """The line a successful update prints on a terminal (or with --verbose)."""
    acc = result.history["accuracy"]
    added = (
        f"; {plural(len(result.labels_added), 'new label')}: {summarise(list(result.labels_added))}"
        if result.labels_added
        else ""
    )
    held, count = acc.get("held_out_after"), acc.get("held_out_examples", 0)
    held_text = ""
    if held is not None:
        held_text = f"; held-out accuracy {held:.0%} ({plural(count, 'example')})"
        if held < LOW_HELD_OUT:
            held_text += (
                " — measured on the few examples held back from this batch's new labels; with so few it "
                "says little: add more examples per label, and check with `mlpersonalize predict`"
            )
    where = f"version {result.version} at " if result.version else ""
    forced = " (forced past the guard)" if result.history["guard"]["forced"] else ""
    lines = [f"Updated{forced}: {where}{safe_name(str(result.model))}{added}{held_text}"]
    return "\n".join(lines + reteach_lines(result.history))


def reteach_lines(history: dict[str, Any]) -> list[str]:
    """Re-taught labels (conflicts learned with --force, style rows) and a plain "learned nothing"."""
    lines = []
    for c in history.get("conflicts") or []:
        read = ", ".join(f"{safe_name(k)} ({n})" for k, n in c["read_as"].items())
        lines.append(
            f"Re-taught (--force): {c['drawings']} of {plural(c['of'], 'drawing')} labelled "
            f"{safe_name(c['label'])} that the model read as {read}"
        )
    styles = history.get("style_rows") or {}
    if styles:
        names = ", ".join(safe_name(label) for label in styles)
        lines.append(f"Learned your way of drawing: {names} ({plural(len(styles), 'new style row')})")
    repeated = history.get("repeated") or 0
    if repeated:
        lines.append(
            f"Left out {plural(repeated, 'drawing')} the model had already learned (taught once only)"
        )
    learned = history.get("learned") or {}
    if learned and not learned.get("learned", True):
        lines.append(f"Learned nothing: {learned.get('reason')}")
    return lines


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
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
    engine: Annotated[
        str | None,
        typer.Option(help="Training engine: ort or portable. Default: ort where onnxruntime-training is."),
    ] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train the model on labelled batches; new labels are added. The original is never changed.

    Once the new version is swapped in, the run succeeds (exit 0, the `completed` event) even if
    SIGTERM or Ctrl-C arrives after that moment.

    Example: mlpersonalize update batch.npz --json
    """
    thread_setting.small_blas()  # before numpy is imported (just below)
    # lazy: numpy, onnx, ONNX Runtime 0.12-0.16 s
    from ..updater import UpdateOptions, update

    thread_setting.use(threads)

    out.configure(json_out, quiet, verbose)
    if output is not None and str(output) == "-":
        raise UsageError("a model is a folder, never written to stdout; give a folder name: -o my-model")
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
        engine=engine,
    )
    renderer = _Renderer()
    try:
        result = update(batches, options, renderer, waiting(model or "the model"))
    finally:
        renderer.close()
    if not out.json:
        from ..store import update_hint

        out.done(summary(result) + safe_name(update_hint(model, result.model, result.version)))
    learned = result.history.get("learned") or {}
    if not learned.get("learned", True):
        where = f"version {result.version}" if result.version else str(result.model)
        raise LearnedNothing(f"the update was saved ({where}) but learned nothing: {learned.get('reason')}")

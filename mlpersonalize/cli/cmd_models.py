"""`mlpersonalize models` and `which`: what is personalized, and which model a command would use."""

from __future__ import annotations

from typing import Any

import typer

from ..errors import ModelError
from ._options import JsonOpt, ModelOpt, QuietOpt, VerboseOpt
from ._output import out, safe_name, summarise
from .cmd_inspect import percent


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
    app.command("which")(which_command)


def model_versions(root: Any) -> list[dict[str, Any]]:
    """Each kept version of one model home: id, current or not, time, labels added, accuracy."""
    # lazy: store ~7 ms; manifest pulls numpy + PIL (~50 ms)
    from .. import store
    from ..manifest import read_manifest

    current = store.current_version(root)
    rows = []
    for version in store.list_versions(root):
        entry: dict[str, Any] = {"version": version, "current": version == current}
        try:
            manifest = read_manifest(store.versions_dir(root) / version)
        except ModelError as exc:
            entry["error"] = str(exc)
            rows.append(entry)
            continue
        last = manifest.history[-1] if manifest.history else {}
        acc = last.get("accuracy") or {}
        entry.update(
            time=last.get("time"),
            labels=len(manifest.labels),
            labels_added=list(last.get("labels_added", [])),
            known_accuracy_after=acc.get("known_after"),
            held_out_accuracy_after=acc.get("held_out_after"),
        )
        rows.append(entry)
    return rows


def models_command(json_out: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False) -> None:
    """List personalized models and their kept versions (which is current, when, labels added,
    accuracy). Delete one with `mlpersonalize reset --model NAME`.

    Example: mlpersonalize models --json | jq '.[].name'
    """
    # lazy: store ~7 ms
    from .. import store

    out.configure(json_out, quiet, verbose)
    folder = store.home() / "models"
    homes = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    models = [{"name": p.name, "path": str(p), "versions": model_versions(p)} for p in homes]
    models = [m for m in models if m["versions"]]
    if out.json:
        out.record(models)
        return
    if not models:
        out.note(f"no personalized models in {safe_name(str(folder))}")
        return
    # lazy: rich costs 8-18 ms, and only human output needs it
    from rich.table import Table
    from rich.text import Text

    table = Table("model", "version", "current", "when", "labels", "added", "known acc", "held-out acc")
    for model in models:
        for row in model["versions"]:
            table.add_row(
                Text(safe_name(model["name"])),
                row["version"],
                "*" if row["current"] else "",
                Text(str(row.get("time") or "-")),
                str(row.get("labels", "-")),
                Text(summarise(row.get("labels_added", []), limit=3) or "-"),
                percent(row.get("known_accuracy_after")),
                percent(row.get("held_out_accuracy_after")),
            )
    if out.tables:
        out.print(table)
    else:
        for model in models:
            for row in model["versions"]:
                out.row(
                    model["name"],
                    row["version"],
                    "current" if row["current"] else "",
                    str(row.get("time") or ""),
                )


_WHY = {
    "flag": "named by --model",
    "environment": "named by $MLPERSONALIZE_MODEL",
    "personalized": "your personalized copy (`current`)",
    "bundled": "the bundled original (no personalized copy yet)",
}


def which_command(
    model: ModelOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False
) -> None:
    """Show which model package a command would use, and why.

    Example: mlpersonalize which
    """
    # lazy: store ~7 ms
    from .. import store

    out.configure(json_out, quiet, verbose)
    resolved = store.resolve_model(model)
    data = {"model": str(resolved.path), "source": resolved.source, "why": _WHY[resolved.source]}
    if out.json:
        out.record(data)
    else:
        out.write(f"{safe_name(str(resolved.path))}\n")
        out.note(f"({data['why']})")

"""`mlpersonalize inspect`: the model's description (like MLModelDescription)."""

from __future__ import annotations

from typing import Any

import typer

from ..errors import ModelError
from ._options import JsonOpt, ModelOpt, QuietOpt, VerboseOpt
from ._output import out, plural, safe_name, summarise
from .cmd_predict import _note_copy


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)


def inspect_command(
    model: ModelOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False, verbose: VerboseOpt = False
) -> None:
    """Describe a model package: input, labels, updatable parameters, history, file hashes.

    Example: mlpersonalize inspect --json | jq .labels
    """
    # lazy: package pulls numpy (~50 ms); store ~7 ms
    from ..package import describe, load_package
    from ..store import open_model

    out.configure(json_out, quiet, verbose)

    def load(resolved: Any) -> tuple[Any, dict[str, Any]]:
        package = load_package(resolved.path, verify=False)
        _note_copy(resolved, package.manifest.name)
        return resolved, describe(package)

    resolved, data = open_model(model, load)
    data["source"] = resolved.source
    data["engine"] = {"onnxruntime": _engine_version()}
    if out.json:
        out.record(data)
    else:
        _render(data)
    if not all(entry["verified"] for entry in data["files"]):
        bad = ", ".join(e["name"] for e in data["files"] if not e["verified"])
        raise ModelError(f"{resolved.path}: files do not match their SHA-256 in manifest.json: {bad}")


def _engine_version() -> str:
    """The installed ONNX Runtime's version, read from its metadata (importing it costs 0.2 s)."""
    # lazy: importlib.metadata ~9 ms
    from importlib import metadata

    for distribution in ("onnxruntime-training-cpu", "onnxruntime-training", "onnxruntime"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def percent(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def before_after(acc: dict[str, Any], key: str) -> str:
    """``95%→97%`` from ``accuracy[key_before]`` and ``accuracy[key_after]`` ("-" when not measured)."""
    return f"{percent(acc.get(key + '_before'))}→{percent(acc.get(key + '_after'))}"


def accuracy_summary(acc: dict[str, Any]) -> str:
    """What an update's ``accuracy`` record says, for one line (``metric last_update``)."""
    if not isinstance(acc, dict):
        return str(acc)
    held = acc.get("held_out_examples", 0)
    return (
        f"known labels {before_after(acc, 'known')}, held-out {before_after(acc, 'held_out')} "
        f"({held} held out), exemplars {before_after(acc, 'exemplars')}"
    )


def history_rows(history: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The history table's cells, from what entries store (examples_per_label, accuracy.*)."""
    rows = []
    for entry in history:
        counts = entry.get("examples_per_label") or {}
        acc = entry.get("accuracy") or {}
        loss = entry.get("final_loss")
        rows.append(
            (
                str(entry.get("time", "")),
                f"{sum(counts.values())} in {len(counts)}" if counts else "-",
                summarise(list(entry.get("labels_added", [])), limit=5) or "-",
                str(entry.get("epochs", "-")),
                f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
                before_after(acc, "known"),
                before_after(acc, "held_out"),
                safe_name(str(entry.get("replaced_version") or "-")),
            )
        )
    return rows


def _render(data: dict[str, Any]) -> None:
    # lazy: rich costs 8-18 ms, and only human output needs it
    from rich.table import Table
    from rich.text import Text

    def say(text: str) -> None:  # names, labels and paths are quoted data, never rich markup
        out.print(Text(text))

    image = data["input"]["image"]
    producer = data.get("producer", {})
    out.print(
        Text(safe_name(data["name"]), style="bold"),
        Text(f" ({data['source']}: {safe_name(str(data['path']))})"),
    )
    if data.get("description"):
        say(safe_name(data["description"]))
    say(
        f"author: {safe_name(data.get('author') or '-')}   "
        f"license: {safe_name(data.get('license') or '-')}   "
        f"format {data['format_version']}   made by mlpersonalize {producer.get('version', '?')} "
        f"(onnxruntime {producer.get('onnxruntime', '?')}; running {data['engine']['onnxruntime']})"
    )
    say(
        f"input {safe_name(data['input']['name'])!r}: {image['width']}x{image['height']} {image['color']}, "
        f"ink {image['ink']}, value = pixel x {image['scale']:.6g} + {image['bias']}, {image['layout']}"
    )
    unknown = (
        "'unknown' below each label's calibrated score threshold"
        if data.get("unknown")
        else f"below {data['unknown_threshold']:.2f} confidence the label is 'unknown'"
    )
    say(
        f"outputs: label, probabilities ({len(data['labels'])}), embedding ({data['head']['embedding_dim']})"
        f"; {unknown}"
    )
    labels = data["labels"]
    shown = ", ".join(safe_name(label) for label in labels) if out.verbose else summarise(labels, limit=40)
    say(f"{plural(len(labels), 'label')}: {shown}")
    row_labels = data["head"].get("row_labels") or []
    styled = {labels[r]: row_labels.count(r) for r in sorted(set(row_labels)) if row_labels.count(r) > 1}
    if styled:  # labels re-taught in a user's style own more than one head row
        say("rows per label: " + ", ".join(f"{safe_name(k)} {n}" for k, n in styled.items()) + ", others 1")
    for param in data["updatable"]:
        say(f"updatable: {safe_name(param['name'])} {param['shape']}")
    engines = data.get("engines", {})
    notes = {
        "regenerate": "its files must be regenerated, by an update where it is installed",
        "unsupported": "cannot train this head",
    }
    say(
        "engines: "
        + (", ".join(k for k, v in engines.items() if v == "current") or "none")
        + "".join(f"; {k}: {notes[v]}" for k, v in engines.items() if v in notes)
    )
    defaults = data["update_defaults"]
    say("update defaults: " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
    for key, value in sorted(data.get("metrics", {}).items()):
        say(f"metric {safe_name(key)}: {accuracy_summary(value) if isinstance(value, dict) else value}")
    history = Table(
        "when",
        "examples",
        "labels added",
        "epochs",
        "loss",
        "known acc before→after",
        "held-out before→after",
        "replaced",
        title="update history",
    )
    history.columns[0].no_wrap = True  # a timestamp is read whole, never cut to "08:05:…"
    history.columns[0].min_width = 25
    for row in history_rows(data.get("history", [])):
        history.add_row(*(Text(cell) for cell in row))
    if data.get("history"):
        out.print(history)
    else:
        say("update history: none (this is an original)")
    files = Table("file", "bytes", "sha256", "verified", title="files")
    for entry in data["files"]:
        files.add_row(
            Text(safe_name(entry["name"])),
            f"{entry['bytes']:,}",
            entry["sha256"][:16] + "…",
            "yes" if entry["verified"] else "NO",
        )
    out.print(files)

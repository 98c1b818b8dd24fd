"""`mlpersonalize inspect`: the model's description (like MLModelDescription)."""

from __future__ import annotations

from typing import Any

import typer

from ._options import JsonOpt, ModelOpt


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)


def inspect_command(model: ModelOpt = None, json_out: JsonOpt = False) -> None:
    """Describe a model package: input, labels, updatable parameters, history, file hashes.

    Example: mlpersonalize inspect --json | jq .labels
    """
    from ..package import describe, load_package
    from ..store import resolve_model
    from ._output import emit_json

    resolved = resolve_model(model)
    package = load_package(resolved.path, verify=False)
    from .cmd_predict import _note_copy

    _note_copy(resolved, package.manifest.name)
    data = describe(package)
    data["source"] = resolved.source
    data["engine"] = {"onnxruntime": _engine_version()}
    if json_out:
        emit_json(data)
    else:
        _render(data)
    if not all(entry["verified"] for entry in data["files"]):
        from ..errors import ModelError

        bad = ", ".join(e["name"] for e in data["files"] if not e["verified"])
        raise ModelError(f"{resolved.path}: files do not match their SHA-256 in manifest.json: {bad}")


def _engine_version() -> str:
    """The installed ONNX Runtime's version, read from its metadata (importing it costs 0.2 s)."""
    from importlib import metadata

    for distribution in ("onnxruntime-training-cpu", "onnxruntime-training", "onnxruntime"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def _render(data: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    from ._output import stdout_console

    console = stdout_console()

    def say(text: str) -> None:  # names, labels and paths are data, never rich markup
        console.print(text, markup=False)

    image = data["input"]["image"]
    producer = data.get("producer", {})
    console.print(Text(data["name"], style="bold"), Text(f" ({data['source']}: {data['path']})"))
    if data.get("description"):
        say(data["description"])
    say(
        f"author: {data.get('author') or '-'}   license: {data.get('license') or '-'}   "
        f"format {data['format_version']}   made by mlpersonalize {producer.get('version', '?')} "
        f"(onnxruntime {producer.get('onnxruntime', '?')}; running {data['engine']['onnxruntime']})"
    )
    say(
        f"input {data['input']['name']!r}: {image['width']}x{image['height']} {image['color']}, "
        f"ink {image['ink']}, value = pixel x {image['scale']:.6g} + {image['bias']}, {image['layout']}"
    )
    say(
        f"outputs: label, probabilities ({len(data['labels'])}), embedding ({data['head']['embedding_dim']})"
        f"; below {data['unknown_threshold']:.2f} confidence the label is 'unknown'"
    )
    labels = data["labels"]
    say(f"labels ({len(labels)}): " + ", ".join(labels))
    for param in data["updatable"]:
        say(f"updatable: {param['name']} {param['shape']}")
    defaults = data["update_defaults"]
    say("update defaults: " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
    for key, value in sorted(data.get("metrics", {}).items()):
        say(f"metric {key}: {value}")
    history = Table(
        "when", "examples", "labels added", "epochs", "loss", "acc before→after", title="update history"
    )
    for entry in data.get("history", []):
        history.add_row(
            str(entry.get("time", "")),
            str(entry.get("examples", "")),
            Text(", ".join(entry.get("labels_added", []))),
            str(entry.get("epochs", "")),
            f"{entry['final_loss']:.4f}" if isinstance(entry.get("final_loss"), float) else "",
            f"{entry.get('accuracy_before', '')}→{entry.get('accuracy_after', '')}",
        )
    if data.get("history"):
        console.print(history)
    else:
        say("update history: none (this is an original)")
    files = Table("file", "bytes", "sha256", "verified", title="files")
    for entry in data["files"]:
        files.add_row(
            Text(entry["name"]),
            f"{entry['bytes']:,}",
            entry["sha256"][:16] + "…",
            "yes" if entry["verified"] else "NO",
        )
    console.print(files)

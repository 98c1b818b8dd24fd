"""What the terminal shows: labels, names and paths are data, never read as rich markup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from mlpersonalize.cli import cmd_inspect, cmd_predict
from mlpersonalize.inference import Prediction
from mlpersonalize.package import describe, load_package

HOSTILE = "[/]star[red"  # a closing tag with nothing open makes rich raise MarkupError


def test_inspect_on_a_terminal_prints_labels_and_names_verbatim(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    manifest["labels"][0], manifest["name"] = HOSTILE, "my [/]model"
    (tiny_model / "manifest.json").write_text(json.dumps(manifest))
    data = describe(load_package(tiny_model))
    data.update(source="flag", engine={"onnxruntime": "1.19.2"})
    cmd_inspect._render(data)
    out = capsys.readouterr().out
    assert "my [/]model" in out and f"3 labels: {HOSTILE}, square, cross" in out


def test_predict_table_rows_keep_labels_verbatim() -> None:
    table = Table("file", "label", "confidence", "top")
    table.add_row(
        *cmd_predict.table_row(
            Prediction(file="[b]a.png", label=HOSTILE, confidence=0.9, top=[(HOSTILE, 0.9)])
        )
    )
    table.add_row(*cmd_predict.table_row(Prediction(file="b.png", error="[/]broken")))
    console = Console(record=True, width=120)
    console.print(table)
    text = console.export_text()
    assert HOSTILE in text and "[b]a.png" in text and "[/]broken" in text

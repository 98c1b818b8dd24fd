"""P10: any file name works; JSON output and the manifest stay valid UTF-8.

prepare with a ``bad\\xff.png`` name is in test_prepare.py
(``test_undecodable_file_names_are_kept_and_escaped``); here predict's JSON with both names, and an
update with an emoji label from a batch whose own name is not UTF-8.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from reliability_kit import write_batch

from mlpersonalize.cli.app import main
from mlpersonalize.manifest import MANIFEST


def _draw(path: str | bytes) -> None:
    image = Image.new("L", (40, 40), 255)
    ImageDraw.Draw(image).ellipse((5, 5, 35, 35), outline=0, width=3)
    with open(path, "wb") as handle:
        image.save(handle, "PNG")


def test_p10_predict_json_with_undecodable_and_emoji_names(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    _draw(os.path.join(os.fsencode(folder), b"bad\xff.png"))
    _draw(str(folder / "emoji_😀.png"))
    with pytest.raises(SystemExit) as info:
        main(["predict", str(folder), "--model", str(tiny_model), "--json"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    records = [json.loads(line) for line in out.encode("utf-8").decode("utf-8").splitlines()]
    names = sorted(Path(r["file"]).name for r in records)
    assert len(records) == 2 and names[1] == "emoji_😀.png" and all("error" not in r for r in records)
    assert names[0].startswith("bad") and names[0].endswith(".png")


def test_p10_predict_json_names_parse_to_valid_unicode(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    _draw(os.path.join(os.fsencode(folder), b"bad\xff.png"))
    with pytest.raises(SystemExit):
        main(["predict", str(folder), "--model", str(tiny_model), "--json"])
    (record,) = [json.loads(line) for line in capsys.readouterr()[0].splitlines()]
    record["file"].encode("utf-8")  # a strict consumer must be able to re-encode what it parsed


def test_p10_manifest_stays_utf8_json_after_an_emoji_label_update(
    doodle_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dataclasses

    from mlpersonalize.batch import load_batch, save_batch

    plain = write_batch(tmp_path / "plain.npz", doodle_model, ["key"])
    emoji = dataclasses.replace(load_batch(plain), labels=tuple("😀" for _ in load_batch(plain).labels))
    odd_name = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"batch\xff.npz")))
    save_batch(odd_name, emoji)
    with pytest.raises(SystemExit) as info:
        main(["update", str(odd_name), "--model", str(doodle_model), "--epochs", "2", "--force", "--json"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    completed = json.loads(out.splitlines()[-1])
    raw = (Path(completed["model"]) / MANIFEST).read_bytes()
    manifest = json.loads(raw.decode("utf-8"))  # strict UTF-8, no lone surrogates
    assert "😀" in manifest["labels"]
    name = manifest["history"][-1]["batches"][0]["file"]
    assert name.startswith("batch\\") and name.endswith(".npz")  # escaped (training.py: \\udcff, not \\xff)

"""P9: nothing outside the model package or the input folders is ever read or written.

ONNX external data: ONNX Runtime opens whatever path a tensor names (seen: it stats
``<package>/../../etc/passwd`` and reads ``/etc/passwd`` as weights), so ``load_package`` refuses a
package whose .onnx files keep data outside it, in a link, a hard link, or a file the manifest does
not list, before any session is created. Image links leaving the data folder are proven in
test_prepare.py (``test_links_inside_are_followed_others_are_not``); path-like labels there too
(``test_unicode_and_path_like_labels_are_plain_data``); here through prepare and update end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image, ImageDraw
from reliability_kit import tree

from mlpersonalize import updater
from mlpersonalize.errors import BatchError, ModelError
from mlpersonalize.package import load_package
from mlpersonalize.prepare import prepare


def _externalize(package: Path, location: str, listed: str | None = None) -> None:
    """Rewrite model.onnx so its first initializer's data lives at ``location``; fix the manifest."""
    model = onnx.load(str(package / "model.onnx"))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    (package / "model.onnx").write_bytes(model.SerializeToString())
    manifest = json.loads((package / "manifest.json").read_text())
    names = ["model.onnx"] + ([listed] if listed else [])
    for name in names:
        data = (package / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (package / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "location",
    ["../../etc/passwd", "sub/../../x", "/etc/passwd", "..\\..\\x", "weights.bin", ""],
    ids=["dotdot", "sub-dotdot", "absolute", "backslash", "unlisted", "empty"],
)
def test_p9_external_data_outside_the_package_is_refused(tiny_model: Path, location: str) -> None:
    (tiny_model / "weights.bin").write_bytes(b"\0" * 20000)  # exists, but not in the manifest
    _externalize(tiny_model, location)
    with pytest.raises(ModelError, match="external data|outside the package"):
        load_package(tiny_model)


def test_p9_external_data_through_a_symlink_or_hard_link_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 20000)
    (tiny_model / "weights.bin").symlink_to(outside)
    _externalize(tiny_model, "weights.bin", listed="weights.bin")
    with pytest.raises(ModelError, match="link"):
        load_package(tiny_model)
    (tiny_model / "weights.bin").unlink()
    os.link(outside, tiny_model / "weights.bin")
    with pytest.raises(ModelError, match="hard link"):
        load_package(tiny_model)


def test_p9_listed_external_data_inside_the_package_loads(tiny_model: Path) -> None:
    """A plain file of the package, listed and hash-verified, may hold a tensor's data."""
    model = onnx.load(str(tiny_model / "model.onnx"))
    onnx.save_model(
        model,
        str(tiny_model / "model.onnx"),
        save_as_external_data=True,
        location="model.data",
        size_threshold=1024,
    )
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    for name in ("model.onnx", "model.data"):
        data = (tiny_model / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (tiny_model / "manifest.json").write_text(json.dumps(manifest))
    from mlpersonalize.inference import Classifier

    package = load_package(tiny_model)
    pixels = np.zeros((2, *package.manifest.constraint.shape), np.uint8)
    probabilities = Classifier(package).probabilities(pixels)  # ORT reads model.data from the package
    assert probabilities.shape == (2, len(package.manifest.labels))


def _drawing(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", (size, size), 255)
    ImageDraw.Draw(image).ellipse((4, 4, size - 4, size - 4), outline=0, width=3)
    image.save(path)


def test_p9_path_like_labels_stay_data_through_prepare_and_update(doodle_model: Path, tmp_path: Path) -> None:
    """Labels `..`-like, `a\\b`, `C:x` name no path: the batch and the model just store them."""
    data = tmp_path / "data"
    labels = ["a..", "a\\b", "C:\\x", "…"]
    for i, label in enumerate(labels):
        for j in range(3):
            _drawing(data / label / f"{j}.png", 30 + 7 * i + j)
    (data / "evil").symlink_to("/etc")  # a label folder link: not followed
    (data / "a.." / "passwd.png").symlink_to("/etc/passwd")  # an image link out: not followed
    before = {p: tree(p) for p in (tmp_path / "data",)}
    report = prepare([data], tmp_path / "b.npz", load_package(doodle_model).manifest, workers=1)
    assert sorted(report.labels) == sorted(labels)
    assert {s.path.rsplit("/", 1)[-1] for s in report.skipped} == {"evil", "passwd.png"}
    result = updater.update(
        [tmp_path / "b.npz"], updater.UpdateOptions(model=doodle_model, force=True, epochs=2)
    )
    assert set(labels) <= set(load_package(result.model).manifest.labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npz", "data", "home", "original"]
    assert {p: tree(p) for p in (tmp_path / "data",)} == before  # inputs only read


def test_p9_a_nul_in_a_label_is_a_clear_error(tmp_path: Path) -> None:
    from mlpersonalize.batch import Batch, save_batch
    from mlpersonalize.images import ImageConstraint

    batch = Batch(
        np.zeros((1, 28, 28, 1), np.uint8),
        ("a\x00b",),
        ("x.png",),
        ("0" * 64,),
        ImageConstraint(28, 28),
        "m",
        "t",
    )
    with pytest.raises(BatchError, match="label 'a\\\\x00b' is not"):
        save_batch(tmp_path / "b.npz", batch)
    assert list(tmp_path.iterdir()) == []

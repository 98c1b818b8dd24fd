"""The model package: what it holds, how loading checks it, and the clear error for each fault."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlpersonalize import _ort
from mlpersonalize.errors import ModelError
from mlpersonalize.manifest import ENGINE_FILES, MANIFEST, REQUIRED_FILES, read_manifest
from mlpersonalize.package import _digest, describe, load_package


def carried_files(package: Path) -> set[str]:
    """The files every package has, and those of the engines it carries."""
    engines = read_manifest(package).carried_engines
    return {*REQUIRED_FILES, *(name for engine in engines for name in ENGINE_FILES[engine])}


def edit_manifest(package: Path, change) -> None:  # type: ignore[no-untyped-def]
    data = json.loads((package / MANIFEST).read_text())
    change(data)
    (package / MANIFEST).write_text(json.dumps(data))


def test_manifest_round_trip_keeps_everything(tiny_model: Path) -> None:
    package = load_package(tiny_model)
    manifest = package.manifest
    data = manifest.to_dict()
    for key in (
        "format_version",
        "name",
        "description",
        "author",
        "license",
        "input",
        "outputs",
        "labels",
        "updatable",
        "update_defaults",
        "update_ranges",
        "history",
        "files",
        "model_id",
        "producer",
        "engines",
    ):
        assert key in data, key
    assert data["input"]["image"] == {
        "width": 28,
        "height": 28,
        "color": "gray",
        "scale": 1 / 255,
        "bias": [0.0],
        "ink": "light",
        "layout": "nchw",
    }
    assert data["updatable"] == [{"name": "head.weight", "shape": [3, 64]}]
    assert "portable" in manifest.carried_engines
    assert set(data["files"]) == carried_files(tiny_model)
    again = type(manifest).from_dict(json.loads(json.dumps(data)))
    assert again == manifest


def test_every_file_hash_verifies_and_describe_reports_it(tiny_model: Path) -> None:
    info = describe(load_package(tiny_model))
    assert {entry["name"] for entry in info["files"]} == carried_files(tiny_model)
    assert all(entry["verified"] for entry in info["files"])


def test_a_changed_file_is_named_in_the_error(tiny_model: Path) -> None:
    with open(tiny_model / "head.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match=r"head\.onnx: contents do not match the SHA-256"):
        load_package(tiny_model)
    assert not {e["name"]: e["verified"] for e in describe(load_package(tiny_model, verify=False))["files"]}[
        "head.onnx"
    ]


@pytest.mark.parametrize("name", ["head.onnx", "training/portable/train_step.onnx"])
def test_a_missing_file_is_named(tiny_model: Path, name: str) -> None:
    (tiny_model / name).unlink()
    with pytest.raises(ModelError, match=rf"{name}: listed in manifest.json but missing"):
        load_package(tiny_model)


def test_a_file_entry_pointing_outside_is_refused(tiny_model: Path) -> None:
    edit_manifest(
        tiny_model, lambda d: d["files"].update({"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}})
    )
    with pytest.raises(ModelError, match="points outside the package"):
        load_package(tiny_model)


def test_a_symlinked_file_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((tiny_model / "head.onnx").read_bytes())
    (tiny_model / "head.onnx").unlink()
    os.symlink(outside, tiny_model / "head.onnx")
    with pytest.raises(ModelError, match="is a link or lies outside"):
        load_package(tiny_model)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format_version=99), "format_version 99 is not supported"),
        (lambda d: d.update(labels=[]), "labels must be a non-empty list"),
        (lambda d: d.update(labels=["a", "a", "b"]), "duplicate labels: a"),
        (lambda d: d.update(labels=["a", 3, "b"]), "is not a non-empty string"),
        (lambda d: d["input"]["image"].update(color="cmyk"), "malformed manifest"),
        (lambda d: d.pop("files"), "malformed manifest"),
        (lambda d: d["files"].pop("model.onnx"), "files lists no entry for model.onnx"),
        (lambda d: d["update_defaults"].update(epochs="many"), "wrong type"),
        (lambda d: d["update_ranges"].update(epochs=[0, 10**9]), "outside"),
        (lambda d: d.update(unknown_threshold=2), "unknown_threshold"),
    ],
)
def test_manifest_faults_are_one_clear_error(tiny_model: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    edit_manifest(tiny_model, change)
    with pytest.raises(ModelError, match=message) as caught:
        load_package(tiny_model)
    assert "manifest.json" in str(caught.value)


def test_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such folder"):
        load_package(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="manifest.json is missing"):
        load_package(tmp_path / "empty")
    (tmp_path / "empty" / MANIFEST).write_bytes(b"\xff\xfe{")
    with pytest.raises(ModelError, match="not valid UTF-8 JSON"):
        load_package(tmp_path / "empty")


def test_inference_model_matches_backbone_plus_head(tiny_model: Path) -> None:
    """model.onnx = backbone.onnx then head.onnx then softmax, and its label output agrees."""
    package = load_package(tiny_model)
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    label, probs, emb, scores = _ort.inference_session(tiny_model / "model.onnx").run(None, {"image": x})
    (emb2,) = _ort.inference_session(tiny_model / "backbone.onnx").run(None, {"image": x})
    (logits,) = _ort.inference_session(tiny_model / "head.onnx").run(None, {"embedding": emb2})
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert np.allclose(emb, emb2, atol=1e-6) and np.allclose(probs, expected, atol=1e-5)
    assert list(label) == [package.manifest.labels[i] for i in probs.argmax(1)]
    # "scores": the cosine to each label's row (what the calibrated unknown compares)
    assert np.allclose(scores * package.manifest.logit_scale, logits, atol=1e-4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_any_manifest_bytes_load_or_raise_model_error(tiny_model: Path, data: bytes) -> None:
    (tiny_model / MANIFEST).write_bytes(data)
    with pytest.raises(ModelError):
        read_manifest(tiny_model)


@pytest.mark.parametrize("at", [0, (1 << 20) - 4, (1 << 20) - 8, 1 << 20, (1 << 21) + 5])
def test_the_external_data_key_is_found_wherever_it_lies_in_the_file(tmp_path: Path, at: int) -> None:
    """load_package parses (with onnx) only the .onnx files whose bytes name external data; the
    key must be seen across the reader's 1 MiB chunks too, or a hostile model would slip by."""
    data = bytearray(b"\0" * ((1 << 21) + 64))
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(bytes(data))
    data[at : at + 8] = b"location"
    marked = tmp_path / "marked.onnx"
    marked.write_bytes(bytes(data))
    assert _digest(plain, True)[1] is False
    digest, found = _digest(marked, True)
    assert found is True and digest == hashlib.sha256(bytes(data)).hexdigest()

"""Batch files: round trip, atomic no-clobber writes, and safe loading of hostile bytes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlpersonalize import batch as batch_module
from mlpersonalize.batch import (
    SCHEMA_VERSION,
    Batch,
    check_batch_fits,
    file_sha256,
    load_batch,
    remove_stale_temps,
    save_batch,
)
from mlpersonalize.errors import BatchError, UsageError
from mlpersonalize.images import ImageConstraint
from mlpersonalize.manifest import read_manifest

C28 = ImageConstraint(28, 28)


def make_batch(labels: tuple[str, ...] = ("circle", "😀", "with space"), model_id: str = "abc") -> Batch:
    n = len(labels)
    rng = np.random.default_rng(0)
    return Batch(
        pixels=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
        labels=labels,
        sources=tuple(f"{label}/bad\\xff{i}.png" for i, label in enumerate(labels)),
        sha256=tuple(hashlib.sha256(bytes([i])).hexdigest() for i in range(n)),
        constraint=C28,
        model_id=model_id,
        model_name="tiny",
    )


def npz_bytes(**members: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **members)  # type: ignore[arg-type]
    return buffer.getvalue()


def valid_members() -> dict[str, np.ndarray]:
    good = make_batch()
    return dict(batch_module._arrays(good))


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    original = make_batch(("circle", "7️⃣", "café", "..", "a\\b"))
    save_batch(tmp_path / "b.npz", original)
    loaded = load_batch(tmp_path / "b.npz")
    assert np.array_equal(loaded.pixels, original.pixels) and loaded.pixels.dtype == np.uint8
    for name in ("labels", "sources", "sha256", "constraint", "model_id", "model_name", "schema_version"):
        assert getattr(loaded, name) == getattr(original, name)
    assert len(loaded) == 5 and loaded.label_counts()["7️⃣"] == 1
    with zipfile.ZipFile(tmp_path / "b.npz") as archive:
        meta = json.loads(np.load(archive.open("meta.npy")).tobytes())
        assert np.load(archive.open("labels.npy")).dtype.kind == "U"  # not an object array
    assert meta == {"schema_version": 1, "constraint": C28.to_dict(), "model_id": "abc", "model_name": "tiny"}


def test_label_counts_are_sorted_by_label() -> None:
    assert make_batch(("b", "a", "b")).label_counts() == {"a": 1, "b": 2}


def test_existing_file_is_never_overwritten_without_force(tmp_path: Path) -> None:
    target = tmp_path / "b.npz"
    target.write_bytes(b"old")
    with pytest.raises(UsageError, match="already exists; pass --force"):
        save_batch(target, make_batch())
    assert target.read_bytes() == b"old"
    save_batch(target, make_batch(), force=True)
    assert len(load_batch(target)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["b.npz"]  # no temp file left


def test_save_refuses_an_invalid_batch(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="not a non-empty NFC"):
        save_batch(tmp_path / "b.npz", make_batch(("cafe\u0301",)))
    with pytest.raises(BatchError, match="not a valid string"):
        save_batch(tmp_path / "b.npz", replace(make_batch(("a",)), sources=("bad\udcff.png",)))
    with pytest.raises(BatchError, match="do not match"):
        save_batch(tmp_path / "b.npz", replace(make_batch(("a", "b")), labels=("a",)))
    assert not any(tmp_path.iterdir())


def test_stale_temps_of_dead_writers_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "b.npz"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / f".b.npz.{dead.stdout.strip()}.abc123.tmp"
    mine = tmp_path / f".b.npz.{os.getpid()}.xyz.tmp"
    stale.write_bytes(b"x")
    mine.write_bytes(b"x")
    remove_stale_temps(target)
    assert not stale.exists() and mine.exists()


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path: Path) -> None:
    save_batch(tmp_path / "b.npz", make_batch())
    data = (tmp_path / "b.npz").read_bytes()
    assert file_sha256(tmp_path / "b.npz") == hashlib.sha256(data).hexdigest()
    with pytest.raises(BatchError):
        file_sha256(tmp_path / "missing.npz")


def test_check_batch_fits_names_both_models(tiny_model: Path) -> None:
    manifest = read_manifest(tiny_model)
    fitting = replace(make_batch(), model_id=manifest.model_id)
    check_batch_fits(fitting, manifest, "b.npz")
    with pytest.raises(
        BatchError, match=rf"made for model 'tiny' \(abc\), this is 'tiny' \({manifest.model_id}\)"
    ):
        check_batch_fits(make_batch(), manifest, "b.npz")
    other = replace(fitting, constraint=ImageConstraint(28, 28, ink="dark"))
    with pytest.raises(BatchError, match="ink dark"):
        check_batch_fits(other, manifest, "b.npz")


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "b.npz"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.pop("meta"), "are not the batch members"),
        (lambda m: m.update(extra=np.zeros(1)), "are not the batch members"),
        (lambda m: m.update(labels=m["labels"][:2]), "different numbers of examples"),
        (lambda m: m.update(pixels=m["pixels"].astype(np.float32)), "has dtype"),
        (lambda m: m.update(pixels=m["pixels"][:, :14]), "constraint says"),
        (lambda m: m.update(labels=np.array(["a", "", "b"])), "not a non-empty"),
        (lambda m: m.update(sha256=np.array(["x"] * 3)), "not a hex SHA-256"),
        (lambda m: m.update(meta=np.frombuffer(b"{not json", np.uint8)), "malformed batch metadata"),
        (lambda m: m.update(meta=np.frombuffer(b'{"schema_version": 2}', np.uint8)), "schema version 2"),
    ],
)
def test_malformed_members_are_batch_errors(tmp_path: Path, mutate, message: str) -> None:
    members = valid_members()
    mutate(members)
    with pytest.raises(BatchError, match=message):
        load_batch(write(tmp_path, npz_bytes(**members)))


def pickled_labels_npz() -> bytes:
    """A batch whose labels are an object array: loading it with pickle would run code."""
    members = valid_members()
    members["labels"] = np.array(["a", "b", "c"], dtype=object)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in members.items():
            with archive.open(f"{name}.npy", "w") as handle:
                np.lib.format.write_array(handle, array, allow_pickle=True)
    return buffer.getvalue()


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="labels has dtype"):
        load_batch(write(tmp_path, pickled_labels_npz()))


def hostile_npz(pixels_member: bytes, compress: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compress) as archive:
        archive.writestr("pixels.npy", pixels_member)
        for name, array in valid_members().items():
            if name != "pixels":
                with archive.open(f"{name}.npy", "w") as handle:
                    np.lib.format.write_array(handle, array)
    return buffer.getvalue()


def header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


LOAD_UNDER_RLIMIT = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from mlpersonalize.batch import load_batch
from mlpersonalize.errors import BatchError
try:
    load_batch(Path(sys.argv[1]))
except BatchError as exc:
    print(exc)
"""


def test_huge_declared_shapes_are_refused_before_allocating(tmp_path: Path) -> None:
    path = write(tmp_path, hostile_npz(header((10**12, 28, 28, 1)) + b"\0" * 64))
    result = subprocess.run(
        [sys.executable, "-c", LOAD_UNDER_RLIMIT, str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "declares 1,000,000,000,000 examples; refused" in result.stdout
    path = write(tmp_path, hostile_npz(header((3, 28, 28, 1)) + b"\0" * 10))  # shorter than declared
    with pytest.raises(BatchError, match="does not match its size"):
        load_batch(path)


def test_zip_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_module, "BOMB_FLOOR", 1 << 20)  # a real bomb is >64 MiB; same check
    zeros = header((4000, 28, 28, 1)) + bytes(4000 * 784)
    with pytest.raises(BatchError, match="would inflate"):
        load_batch(write(tmp_path, hostile_npz(zeros, zipfile.ZIP_DEFLATED)))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: p.write_bytes(b""), "not a batch file"),
        (lambda p: p.write_bytes(b"PK\x03\x04garbage"), "not a batch file"),
    ],
)
def test_unusable_paths_are_batch_errors(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "b.npz"
    make(path)
    with pytest.raises(BatchError, match=message):
        load_batch(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_batch_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(BatchError):
        load_batch(write(tmp_path, data))


_VALID = npz_bytes(**valid_members())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_valid_batches_load_or_raise_batch_error(
    tmp_path: Path, edits: list[tuple[int, int]]
) -> None:
    data = bytearray(_VALID)
    for offset, value in edits:
        data[offset] = value
    try:
        loaded = load_batch(write(tmp_path, bytes(data)))
    except BatchError:
        return
    assert loaded.schema_version == SCHEMA_VERSION and loaded.pixels.shape == (3, 28, 28, 1)

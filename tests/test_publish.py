"""fsio.publish: the one step that makes a new folder appear whole, used by update --output and
make-updatable; a refused write is a StorageError (exit 7) and leaves nothing behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import byo_models as bm
import onnx
import pytest

from mlpersonalize import fsio, package
from mlpersonalize.byo import make_updatable
from mlpersonalize.errors import ExitCode, StorageError
from mlpersonalize.fsio import publish


def test_publish_renames_a_complete_and_synced_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_dir, real_file = fsio.fsync_dir, fsio.fsync_file
    monkeypatch.setattr(
        fsio, "fsync_dir", lambda path: (synced.append(f"dir {Path(path).name}"), real_dir(path))
    )
    monkeypatch.setattr(fsio, "fsync_file", lambda fd: (synced.append("file"), real_file(fd)))

    def write(temp: Path) -> int:
        (temp / "sub").mkdir()
        (temp / "sub" / "a").write_bytes(b"a")
        (temp / "b").write_bytes(b"b")
        return 2

    out = tmp_path / "out"
    assert publish(out, write) == 2
    assert (out / "sub" / "a").read_bytes() == b"a" and [p.name for p in tmp_path.iterdir()] == ["out"]
    # Both files and every folder were fsynced before the rename, the parent after it.
    assert synced.count("file") == 2 and synced[-1] == f"dir {tmp_path.name}"
    assert synced.index("dir sub") < len(synced) - 2


def test_a_refused_write_is_a_storage_error_and_leaves_nothing(tmp_path: Path) -> None:
    def full(temp: Path) -> None:
        (temp / "a").write_bytes(b"a")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StorageError, match="the disk is full") as caught:
        publish(tmp_path / "out", full)
    assert caught.value.exit_code == ExitCode.IO == 7
    assert list(tmp_path.iterdir()) == []


def test_make_updatable_reports_a_full_disk_with_exit_7(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    onnx.save(bm.build("mlp"), tmp_path / "m.onnx")

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(package, "write_bytes_synced", full)
    with pytest.raises(StorageError, match=f"cannot write {tmp_path / 'pkg'}: the disk is full") as caught:
        make_updatable(tmp_path / "m.onnx", tmp_path / "pkg")
    assert caught.value.exit_code == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

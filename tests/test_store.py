"""Versions, the atomic `current` pointer, the lock, cleanup, rollback and reset."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mlpersonalize import store
from mlpersonalize.errors import BusyError, ModelError


def _commit(root: Path, package: Path) -> str:
    temp = store.new_temp_dir(root)
    shutil.rmtree(temp)
    shutil.copytree(package, temp)
    return store.commit(root, temp)


def test_commit_points_current_at_each_new_version(tiny_model: Path) -> None:
    root = store.model_home("tiny")
    assert store.current_version(root) is None
    assert [_commit(root, tiny_model) for _ in range(3)] == ["000001", "000002", "000003"]
    assert os.readlink(root / "current") == "versions/000003"  # relative: the home can move
    assert store.resolve_model(root).path == (root / "versions" / "000003").resolve()
    assert store.is_in_store(root / "versions" / "000002") == root.resolve()
    assert store.is_in_store(tiny_model) is None


def test_prune_keeps_the_rollback_chain(tiny_model: Path) -> None:
    root = store.model_home("tiny")
    for _ in range(4):
        _commit(root, tiny_model)
    assert store.rollback_chain(root) == ["000004", "000003", "000002", "000001"]
    assert store.prune(root, keep=1) == ["000001", "000002"]  # 000003, just replaced, stays a while
    store.point_current(root, "000003")  # e.g. after a rollback: 000004 is off the chain
    assert store.prune(root, keep=3) == ["000004"]
    assert store.list_versions(root) == ["000003"]


def test_clean_stale_removes_temp_folders_and_links(tiny_model: Path) -> None:
    root = store.model_home("tiny")
    _commit(root, tiny_model)
    temp = store.new_temp_dir(root)
    (temp / "partial.onnx").write_bytes(b"x")
    os.symlink("versions/000001", root / ".tmp-current-123")
    assert sorted(store.clean_stale(root)) == sorted([temp.name, ".tmp-current-123"])
    assert store.list_versions(root) == ["000001"] and not temp.exists()


def test_rollback_and_reset(tiny_model: Path) -> None:
    root = store.model_home("tiny")
    with pytest.raises(ModelError, match="nothing to roll back"):
        store.rollback(root)
    _commit(root, tiny_model)
    with pytest.raises(ModelError, match="no version before 000001"):
        store.rollback(root)
    _commit(root, tiny_model)
    assert store.rollback(root) == "000001" and store.current_version(root) == "000001"
    assert _commit(root, tiny_model) == "000003"  # new versions never reuse an id
    assert store.reset(root) == ["000001", "000002", "000003"]
    assert store.current_version(root) is None and store.list_versions(root) == []
    assert store.resolve_model().source == "bundled"
    assert store.reset(root) == []


def test_lock_is_exclusive_and_freed_on_release(tmp_path: Path) -> None:
    root = tmp_path / "m"
    lock = store.ModelLock(root).acquire()
    with pytest.raises(BusyError, match="--no-wait"):
        store.ModelLock(root).acquire(wait=False)
    lock.release()
    with store.ModelLock(root).acquire(wait=False):
        pass


def test_model_root_from_flag(tiny_model: Path) -> None:
    root = store.model_home("tiny")
    _commit(root, tiny_model)
    assert store.model_root(root) == root
    assert store.model_root(root / "versions" / "000001") == root.resolve()
    assert store.model_root() == store.model_home(store.BUNDLED_NAME)
    # an original package names its personalized copy (reset --model sample_models/doodles)
    assert store.model_root(tiny_model) == store.model_home("tiny")
    with pytest.raises(ModelError, match="neither a model package nor a personalized model"):
        store.model_root(tiny_model / "exemplars")


def test_model_flag_names_a_personalized_model_unless_a_path_of_that_name_exists(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = store.model_home("tiny")
    _commit(root, tiny_model)
    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    assert store.resolve_model(Path("tiny")) == store.ResolvedModel(
        (root / "versions" / "000001").resolve(), "personalized"
    )
    assert store.model_root(Path("tiny")) == root
    shutil.copytree(tiny_model, here / "tiny")  # a folder of that name here: the path wins
    assert store.resolve_model(Path("tiny")) == store.ResolvedModel(Path("tiny"), "flag")
    with pytest.raises(ModelError, match="no personalized model of that name"):
        store.resolve_model(Path("other"))

"""Shared helpers of the reliability tests (tests/test_reliability_p*.py): a model home with one
committed version, the CLI in a subprocess, and the checks every promise repeats."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from clirun import run_cli
from conftest import NEW, build_doodle_package, write_batch

from mlpersonalize import store, updater
from mlpersonalize.package import ModelPackage, load_package

__all__ = ["NEW", "build_doodle_package", "write_batch"]
ROOT = Path(__file__).resolve().parent.parent


def cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m mlpersonalize ARGS`` as a user runs it (clirun.run_cli), with ``env`` added."""
    return run_cli(*args, env=env, timeout=120)


def python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def personalized(original: Path, batch_dir: Path) -> Path:
    """The model home after one committed update of ``original``; returns the home."""
    batch = write_batch(batch_dir / "first.npz", original, NEW[:1])
    updater.update([batch], updater.UpdateOptions(model=original, epochs=2))
    return store.model_home("tiny")


def lock_is_free(home: Path) -> bool:
    fd = os.open(home / store.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def stale_entries(home: Path) -> list[str]:
    """Temp folders and links left behind (``.tmp-*`` in the home or its versions folder)."""
    found = [p.name for p in home.glob(f"{store.TEMP_PREFIX}*")]
    versions = store.versions_dir(home)
    found += [p.name for p in versions.glob(f"{store.TEMP_PREFIX}*")] if versions.is_dir() else []
    return sorted(found)


def assert_healthy(home: Path) -> ModelPackage:
    """The promise after any crash: ``current`` names a committed version that loads, lock free."""
    version = store.current_version(home)
    assert version is not None, "current names no committed version"
    assert version in store.list_versions(home)
    package = load_package(store.resolve_model(home).path)  # every file's hash verified
    assert package.path.name == version
    assert lock_is_free(home), "the lock is still held"
    return package


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links as their target), for "nothing changed" checks."""
    out: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = b"->" + os.readlink(path).encode()
        elif path.is_file():
            out[rel] = path.read_bytes()
    return out

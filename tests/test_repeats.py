"""Drawings an update already learned are not new examples: the same batch again changes nothing,
and a batch grown with `prepare --append` teaches only what it gained (repeats.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from clirun import run_cli as run
from conftest import NEW

from mlpersonalize import store
from mlpersonalize.batch import Batch, save_batch
from mlpersonalize.errors import ExitCode
from mlpersonalize.package import load_package
from mlpersonalize.repeats import repeated
from mlpersonalize.sample.doodles import make_dataset


def _batch(path: Path, model: Path, parts: list[tuple[str, int]]) -> Path:
    """A batch of (label, seed) parts, three rendered drawings each, in that order."""
    manifest = load_package(model).manifest
    pixels, names = [], []
    for label, seed in parts:
        p, _ = make_dataset([label], 3, seed=seed, constraint=manifest.constraint)
        pixels.append(p)
        names += [label] * len(p)
    save_batch(path, Batch.from_pixels(np.concatenate(pixels), names, manifest), force=True)
    return path


def _current() -> Path:
    root = store.model_home("tiny")
    version = store.current_version(root)
    assert version is not None
    return store.versions_dir(root) / version


def test_the_same_batch_again_changes_nothing_and_exits_9(doodle_model: Path, tmp_path: Path) -> None:
    batch = _batch(tmp_path / "b.npz", doodle_model, [(NEW[0], 1), (NEW[1], 2)])
    first = run("update", str(batch), "--model", str(doodle_model))
    assert first.returncode in (0, ExitCode.LEARNED_NOTHING), first.stderr  # saved either way
    root = store.model_home("tiny")
    before = sorted(p.name for p in store.versions_dir(root).iterdir())
    again = run("update", str(batch), "--model", "tiny")
    assert again.returncode == ExitCode.LEARNED_NOTHING
    assert again.stderr.startswith("Error: every one of the batch's 6 examples is a drawing the model")
    assert again.stderr.count("\n") == 1
    assert sorted(p.name for p in store.versions_dir(root).iterdir()) == before
    assert store.current_version(root) == before[-1]


def test_a_batch_grown_by_append_teaches_only_its_new_drawings(doodle_model: Path, tmp_path: Path) -> None:
    day1 = _batch(tmp_path / "day1.npz", doodle_model, [(NEW[0], 1)])
    assert run("update", str(day1), "--model", str(doodle_model)).returncode in (0, ExitCode.LEARNED_NOTHING)
    grown = _batch(tmp_path / "grown.npz", doodle_model, [(NEW[0], 1), (NEW[1], 2)])
    result = run("update", str(grown), "--model", "tiny", "--json")
    assert result.returncode in (0, ExitCode.LEARNED_NOTHING), result.stderr
    completed = json.loads(result.stdout.splitlines()[-1])
    assert completed["labels_added"] == [NEW[1]]
    package = load_package(_current())
    assert package.manifest.history[-1]["repeated"] == 3
    # the memory holds each taught drawing once: three of each label, no copies
    emb, idx = package.exemplars()
    for label in NEW[:2]:
        rows = emb[idx == package.manifest.labels.index(label)]
        assert len(rows) == 3
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        assert (unit @ unit.T - np.eye(3)).max() < 0.9999


def test_a_repeat_is_the_same_drawing_under_the_same_label() -> None:
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(4, 16)).astype(np.float32)
    memory = (stored.astype(np.float16).astype(np.float32), np.array([0, 0, 1, 1]))
    fresh = rng.normal(size=(1, 16)).astype(np.float32)
    emb = np.concatenate([stored[[0, 2, 3]], fresh, fresh])
    idx = np.array([0, 1, 0, 2, 2])
    digests = ["a", "b", "c", "d", "d"]
    # row 0: stored under label 0 (as float16) -> repeat; row 1: label 1's drawing, and it is;
    # row 2: label 1's drawing under label 0 -> a conflict, not a repeat; rows 3-4: one file twice
    assert repeated(memory, emb, idx, digests).tolist() == [True, True, False, False, True]
    assert not repeated(memory, emb, idx, ["a", "b", "c", "d", "e"])[4]


def test_the_summary_says_how_many_drawings_were_left_out() -> None:
    from mlpersonalize.cli.cmd_update import reteach_lines

    assert reteach_lines({"repeated": 3}) == [
        "Left out 3 drawings the model had already learned (taught once only)"
    ]
    assert reteach_lines({"repeated": 0}) == []

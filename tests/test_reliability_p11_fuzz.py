"""P11: loaders raise only the tool's own error types, whatever the bytes; the store survives
any sequence of update / crash / rollback.

Arbitrary bytes on the image, batch and manifest loaders: test_images.py, test_batch.py,
test_package.py. Added: the model loader (model.onnx bytes through load_package and a session),
a stateful machine, and the replay of tests/regressions/.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mlpersonalize import images, store, updater
from mlpersonalize.batch import load_batch
from mlpersonalize.errors import BatchError, ImageError, ModelError
from mlpersonalize.images import ImageConstraint
from mlpersonalize.package import load_package

REGRESSIONS = Path(__file__).parent / "regressions"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=1024))
def test_p11_any_model_onnx_bytes_give_a_model_error(tiny_model: Path, data: bytes) -> None:
    from mlpersonalize.inference import Classifier

    (tiny_model / "model.onnx").write_bytes(data)
    manifest = json.loads((tiny_model / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (tiny_model / "manifest.json").write_text(json.dumps(manifest))
    # Bytes that are not the model the manifest describes are refused with a ModelError (and
    # only that: any other exception fails the test), whether at load or when ORT opens them.
    with pytest.raises(ModelError):
        Classifier(load_package(tiny_model))


@pytest.mark.parametrize(
    "path", sorted(p for p in REGRESSIONS.iterdir() if p.name != "README.md"), ids=lambda p: p.name
)
def test_p11_regression_files_replay(path: Path) -> None:
    """Each file gives what its loader promises (or that loader's own error), never a crash; a
    file's name states what more it must give (``dark_``: pixels that stay dark)."""
    constraint = ImageConstraint(8, 8, ink="none")
    if path.suffix == ".npz":
        try:
            batch = load_batch(path)
        except BatchError:
            return
        assert batch.pixels.dtype == np.uint8 and len(batch.labels) == len(batch.pixels)
        return
    if path.name.startswith("dark_"):  # once misread as bright: it must load, and stay dark
        pixels = images.load(path, constraint)
        assert pixels.max() <= 2
    else:
        try:
            pixels = images.load(path, constraint)
        except ImageError:
            return
    assert pixels.dtype == np.uint8 and pixels.shape == constraint.shape


FAULTS = [
    "update:after-temp-write",
    "update:before-swap",
    "update:after-swap",
    "update:during-cleanup",
    "rollback:before-swap",
    "rollback:after-swap",
]


class StoreMachine(RuleBasedStateMachine):
    """Updates, crashes at named points (a forked child SIGKILLs itself), rollbacks, recovery."""

    def __init__(self) -> None:
        super().__init__()
        self.base = Path(os.environ["MLP_P11_WORK"])
        self.home = store.model_home("tiny")
        self.made = 0

    def _new_batch(self, label: int) -> Path:
        """Drawings no earlier update of this run saw (the same ones again would teach nothing)."""
        from reliability_kit import NEW, write_batch

        self.made += 1
        path = self.base / f"u{self.made}.npz"
        return write_batch(path, self.base / "original", [NEW[label]], seed=100 + self.made)

    @initialize()
    def fresh(self) -> None:
        import shutil

        shutil.rmtree(self.home, ignore_errors=True)
        updater.update([self.base / "b0.npz"], updater.UpdateOptions(model=self.base / "original", epochs=1))

    def _can_roll_back(self) -> bool:
        current = store.current_version(self.home) or ""
        return any(v < current for v in store.list_versions(self.home))

    @rule(batch=st.integers(0, 1), keep=st.integers(1, 3))
    def update(self, batch: int, keep: int) -> None:
        result = updater.update(
            [self._new_batch(batch)], updater.UpdateOptions(model=self.home, epochs=1, keep=keep)
        )
        assert store.current_version(self.home) == result.version

    @rule()
    def rollback(self) -> None:
        if self._can_roll_back():
            assert store.rollback(self.home) == store.current_version(self.home)

    @rule(point=st.sampled_from(FAULTS))
    def crash(self, point: str) -> None:
        if point.startswith("rollback") and not self._can_roll_back():
            return
        batch = self._new_batch(1)
        gc.collect()  # garbage of earlier tests can hold threads until collected: fork without them
        pid = os.fork()
        if pid == 0:
            os.environ["MLPERSONALIZE_FAULT"] = point
            try:
                if point.startswith("rollback"):
                    store.rollback(self.home)
                else:
                    updater.update([batch], updater.UpdateOptions(model=self.home, epochs=1, keep=1))
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    @invariant()
    def loads_and_is_committed(self) -> None:
        from reliability_kit import assert_healthy

        assert_healthy(self.home)


def test_p11_stateful_update_crash_rollback(
    doodle_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reliability_kit import NEW, write_batch

    write_batch(tmp_path / "b0.npz", doodle_model, [NEW[0]], seed=0)
    monkeypatch.setenv("MLP_P11_WORK", str(tmp_path))
    StoreMachine.TestCase.settings = settings(
        max_examples=4, stateful_step_count=6, deadline=None, suppress_health_check=list(HealthCheck)
    )
    StoreMachine.TestCase().runTest()

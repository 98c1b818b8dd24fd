"""The "ort" engine: ONNX Runtime's on-device training artifacts (``onnxruntime-training-cpu``).

A head's forward graph and trainable names become training, eval and optimizer models plus a
checkpoint (``onnxruntime.training.artifacts``); a session loads them as CheckpointState /
Module / Optimizer. The same artifacts are what a package stores in ``training/`` (see
:func:`artifact_files`).

The three models depend only on the head's graph with its trainable tensors' *shapes* (not their
values), the trainable names and the optimizer's hyperparameters; the checkpoint holds the
trainable values. An update opens two sessions over heads of one shape and writes a package for
the same shape, so the models are generated once per process for each such key (see
:class:`_ModelCache`) and each session or package gets only its own checkpoint, written the way
``generate_artifacts`` writes it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import _ort
from ..params import UpdateParams

MAX_IR_VERSION = 10  # the newest ONNX IR version ONNX Runtime 1.19 loads
EXTRA_OUTPUTS = ("logits",)  # the eval model also outputs the logits (what `logits` reads)


def optimizer_block(params: UpdateParams) -> Any:
    """The optimizer graph for ``params`` (ORT's enum optimizers fix betas/eps/decay; this does not)."""
    optim = _ort.onnxblock_api().optim
    if params.optimizer == "sgd":
        return optim.SGD()  # ORT's SGD has no momentum: params.momentum is not used
    return optim.AdamW(betas=(params.beta1, params.beta2), eps=params.eps, weight_decay=params.weight_decay)


def generate_artifacts(
    model: onnx.ModelProto,
    requires_grad: Sequence[str],
    directory: Path,
    optimizer: Any = "adamw",
    extra_outputs: tuple[str, ...] = (),
) -> None:
    """Training, eval and optimizer models plus checkpoint for ``model`` into ``directory``.

    ``optimizer`` is "adamw", "sgd" or an onnxblock optimizer block (whose hyperparameters, unlike
    the enum's, can be set). ``generate_artifacts`` logs hundreds of C++ INFO lines to fd 2, so
    fd 2 is captured for the call (and shown only in the error if it fails). Its optimizer model
    gets onnx's newest IR version, which ONNX Runtime 1.19 refuses; its ops all exist at IR 10,
    so it is stamped 10.
    """
    artifacts = _ort.artifacts_api()
    if isinstance(optimizer, str):  # an enum name, else an onnxblock optimizer block
        optimizer = {"adamw": artifacts.OptimType.AdamW, "sgd": artifacts.OptimType.SGD}[optimizer]
    directory.mkdir(parents=True, exist_ok=True)
    with _ort.stderr_captured() as captured:
        try:
            artifacts.generate_artifacts(
                model,
                requires_grad=list(requires_grad),
                frozen_params=[],
                loss=artifacts.LossType.CrossEntropyLoss,
                optimizer=optimizer,
                artifact_directory=str(directory),
                additional_output_names=list(extra_outputs) or None,
            )
        except Exception as exc:
            tail = "\n".join(captured().splitlines()[-5:])
            raise RuntimeError(f"could not generate training artifacts: {exc}\n{tail}") from exc
    _ort.quiet_logs()
    path = directory / "optimizer_model.onnx"
    opt_model = onnx.load(str(path))
    if opt_model.ir_version > MAX_IR_VERSION:
        opt_model.ir_version = MAX_IR_VERSION
        onnx.save(opt_model, str(path))


MODEL_FILES = ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx")
CHECKPOINT = "checkpoint"


def _optimizer_key(params: UpdateParams) -> tuple[object, ...]:
    """What of ``params`` the optimizer model holds (the learning rate is an input, set per session)."""
    if params.optimizer == "sgd":
        return ("sgd",)
    return (params.optimizer, params.beta1, params.beta2, params.eps, params.weight_decay)


def _shape_key(head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> str:
    """A digest of everything the training, eval and optimizer models depend on: the graph with
    the trainable tensors' values left out (name, type and shape kept), the trainable names in
    order, the optimizer's hyperparameters and the extra outputs."""
    names = set(trainable)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(head)
    for init in skeleton.graph.initializer:
        if init.name in names:
            name, dims, dtype = init.name, list(init.dims), init.data_type
            init.Clear()
            init.name, init.data_type = name, dtype
            init.dims.extend(dims)
    digest = hashlib.sha256(skeleton.SerializeToString(deterministic=True))
    digest.update(repr((list(trainable), _optimizer_key(params), EXTRA_OUTPUTS)).encode())
    return digest.hexdigest()


def write_checkpoint(head: onnx.ModelProto, trainable: Sequence[str], path: Path) -> None:
    """The checkpoint ``generate_artifacts`` writes for ``head``: its trainable initializers in
    graph order, no frozen ones (it is called with ``frozen_params=[]``, so the others stay in
    the models), through the same ``onnxblock.save_checkpoint``."""
    names = set(trainable)
    params = [init for init in head.graph.initializer if init.name in names]
    _ort.onnxblock_api().save_checkpoint((params, []), str(path))


# Temp folders of a training process: named with its pid, in one folder of this user's, so that
# those a killed process left (SIGKILL, a cron timeout) are found and removed by a later one.
_TEMP_NAME = re.compile(r"^(?:artifacts|train|checkpoint)-(\d+)-")
STALE_AFTER = 3600.0  # seconds: older folders of dead processes go (a pid seen dead from another
# pid namespace sharing /tmp could still be running: none trains that long)
_parents: list[Path] = []


def temp_parent() -> Path:
    """``<temp dir>/mlpersonalize-<uid>`` (0700, this user's), swept of stale folders once per
    process; the temp dir itself where that folder cannot be had safely (or on Windows)."""
    if _parents:
        return _parents[0]
    base = Path(tempfile.gettempdir())
    parent = base
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        mine = base / f"mlpersonalize-{getuid()}"
        try:
            mine.mkdir(mode=0o700, exist_ok=True)
            info = os.lstat(mine)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == getuid() and not info.st_mode & 0o077:
                parent = mine  # not a link, not another user's, not open to others
        except OSError:
            pass
    if parent != base:
        sweep_stale(parent)
    _parents.append(parent)
    return parent


def _temp_dir(kind: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"{kind}-{os.getpid()}-", dir=temp_parent())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # not ours to signal (EPERM): alive as far as we can tell
    return True


def sweep_stale(folder: Path, now: float | None = None) -> list[str]:
    """Remove the temp folders in ``folder`` (this user's, see temp_parent) that a process which
    no longer runs left there, untouched for STALE_AFTER seconds; return their names."""
    now = time.time() if now is None else now
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or int(match[1]) == os.getpid():
            continue
        try:
            fresh = now - entry.stat(follow_symlinks=False).st_mtime < STALE_AFTER
        except OSError:
            continue
        if not fresh and entry.is_dir(follow_symlinks=False) and not _alive(int(match[1])):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


class _ModelCache:
    """Generated training, eval and optimizer models by :func:`_shape_key`, in one temp folder
    for the process (removed when the process ends). A few keys at most are kept: an update
    needs one; a long-lived process training many head shapes regenerates the oldest."""

    LIMIT = 8

    def __init__(self) -> None:
        self._root: tempfile.TemporaryDirectory[str] | None = None
        self._folders: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._serial = itertools.count()

    def models(self, head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> Path:
        """The folder holding the three models for ``head`` (generated on first use)."""
        key = _shape_key(head, trainable, params)
        with self._lock:
            folder = self._folders.get(key)
            if folder is not None and (folder / MODEL_FILES[0]).is_file():
                return folder
            if self._root is None or not Path(self._root.name).is_dir():  # removed under us: anew
                self._root = _temp_dir("artifacts")
            folder = Path(self._root.name) / f"{next(self._serial)}"
            try:
                generate_artifacts(head, trainable, folder, optimizer_block(params), EXTRA_OUTPUTS)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            (folder / CHECKPOINT).unlink()  # each user writes its own
            while len(self._folders) >= self.LIMIT:
                shutil.rmtree(self._folders.pop(next(iter(self._folders))), ignore_errors=True)
            self._folders[key] = folder
            return folder

    def clear(self) -> None:
        with self._lock:
            self._folders.clear()
            if self._root is not None:
                self._root.cleanup()
                self._root = None


MODELS = _ModelCache()


def artifact_files(head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> dict[str, bytes]:
    """The artifacts a package stores (file name -> bytes): training, eval, optimizer, checkpoint.

    The models come from :data:`MODELS` (an update's training sessions generated them for the
    same shape); the checkpoint holds ``head``'s trainable values."""
    folder = MODELS.models(head, trainable, params)
    files = {name: (folder / name).read_bytes() for name in MODEL_FILES}
    with _temp_dir("checkpoint") as tmp:
        path = Path(tmp) / CHECKPOINT
        write_checkpoint(head, trainable, path)
        files[CHECKPOINT] = path.read_bytes()
    return files


ONE_THREAD_MAX = 1 << 20  # trainable parameters up to which a session runs on one thread


def _size(head: onnx.ModelProto, trainable: Sequence[str]) -> int:
    names = set(trainable)
    return sum(int(np.prod(init.dims)) for init in head.graph.initializer if init.name in names)


class OrtSession:
    """One head's training state: the shared models (:data:`MODELS`), its own checkpoint in a
    private temp folder, Module and Optimizer."""

    def __init__(self, head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> None:
        self._trainable = list(trainable)
        self._tmp = _temp_dir("train")
        try:
            folder = MODELS.models(head, trainable, params)
            checkpoint = Path(self._tmp.name) / CHECKPOINT
            write_checkpoint(head, trainable, checkpoint)
            api = _ort.training_api()
            self.state = api.CheckpointState.load_checkpoint(str(checkpoint))
            self.module = api.Module(
                str(folder / "training_model.onnx"),
                self.state,
                str(folder / "eval_model.onnx"),
                device="cpu",
                # a head's step is many tiny ops: one thread, as the portable engine does (the
                # default pool spent 3x the CPU on the bundled head for the same steps)
                session_options=_ort.session_options(1 if _size(head, trainable) <= ONE_THREAD_MAX else 0),
            )
            self.optimizer = api.Optimizer(str(folder / "optimizer_model.onnx"), self.module)
            # The C++ module's train step (onnxruntime-training 1.19.2, its last release, so this
            # private name is fixed); None: step through the public Module.__call__ instead.
            self._train_step = getattr(getattr(self.module, "_model", None), "train_step", None)
            self.optimizer.set_learning_rate(float(params.learning_rate))
            self._classes = int(head.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
        except BaseException:
            self._tmp.cleanup()
            raise
        self._training = False

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        if not self._training:
            self.module.train()
            self._training = True
        inputs = [np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.int64)]
        if self._train_step is not None:
            # What Module.__call__ runs in training mode, minus its per-call wrapping and the
            # copy of every output to numpy: only the loss is read. 44 us a step against 78 us
            # for the bundled head (a seed's update takes ~1,200 steps, 100,000 examples ~20,000).
            fetches = _ort.ort.capi._pybind_state.OrtValueVector()
            self._train_step(inputs, fetches)
            loss = float(fetches[0].numpy())
        else:
            out = self.module(*inputs)
            loss = float(np.asarray(out[0] if isinstance(out, (list, tuple)) else out))
        self.optimizer.step()
        self.module.lazy_reset_grad()
        return loss

    def parameters(self) -> dict[str, np.ndarray]:
        return {
            name: np.array(self.state.parameters[name].data, dtype=np.float32) for name in self._trainable
        }

    def set_parameter(self, name: str, value: np.ndarray) -> None:
        self.state.parameters[name] = np.ascontiguousarray(value, dtype=np.float32)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits from the eval model (what the portability test compares against)."""
        if len(x) == 0:
            return np.zeros((0, self._classes), np.float32)
        self.module.eval()
        self._training = False
        out = self.module(np.ascontiguousarray(x, np.float32), np.zeros(len(x), np.int64))
        return np.asarray(out[1], np.float32)

    def close(self) -> None:
        self._tmp.cleanup()


class OrtEngine:
    name = "ort"

    def check(self, head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> None:
        """Every head kind's graph has gradients in ONNX Runtime's training: nothing to refuse."""

    def open(self, head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> OrtSession:
        return OrtSession(head, trainable, params)


ENGINE = OrtEngine()

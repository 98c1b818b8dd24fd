"""The "ort" engine: ONNX Runtime's on-device training artifacts (``onnxruntime-training-cpu``).

A head's forward graph and trainable names become training, eval and optimizer models plus a
checkpoint (``onnxruntime.training.artifacts``); a session loads them as CheckpointState /
Module / Optimizer in a private temp folder. The same artifacts are what a package stores in
``training/`` (see :func:`artifact_files`).
"""

from __future__ import annotations

import tempfile
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


def artifact_files(head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> dict[str, bytes]:
    """The artifacts a package stores (file name -> bytes): training, eval, optimizer, checkpoint."""
    with tempfile.TemporaryDirectory(prefix="mlp-artifacts-") as tmp:
        folder = Path(tmp)
        generate_artifacts(head, trainable, folder, optimizer_block(params), EXTRA_OUTPUTS)
        return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


ONE_THREAD_MAX = 1 << 20  # trainable parameters up to which a session runs on one thread


def _size(head: onnx.ModelProto, trainable: Sequence[str]) -> int:
    names = set(trainable)
    return sum(int(np.prod(init.dims)) for init in head.graph.initializer if init.name in names)


class OrtSession:
    """One head's training state: artifacts in a private temp folder, Module and Optimizer."""

    def __init__(self, head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> None:
        self._trainable = list(trainable)
        self._tmp = tempfile.TemporaryDirectory(prefix="mlp-train-")
        try:
            folder = Path(self._tmp.name)
            generate_artifacts(head, trainable, folder, optimizer_block(params), EXTRA_OUTPUTS)
            api = _ort.training_api()
            self.state = api.CheckpointState.load_checkpoint(str(folder / "checkpoint"))
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
        out = self.module(np.ascontiguousarray(x, np.float32), np.asarray(y, np.int64))
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

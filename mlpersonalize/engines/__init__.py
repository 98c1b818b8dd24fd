"""Training engines: how one optimizer step over a head's graph runs.

A head kind (``mlpersonalize.heads``) says *what* trains: a forward ONNX graph
``"embedding" [N, D] -> "logits" [N, C]`` and the names of its trainable initializers. An engine
says *how* a step runs: it adds the loss (softmax cross-entropy, mean over the batch, integer
labels) and the optimizer (``UpdateParams.optimizer``: AdamW with betas/eps/weight decay, or plain
SGD) and steps the parameters. Engines never ask which head kind they train.

* ``"ort"``: ONNX Runtime's on-device training artifacts (``onnxruntime-training-cpu``; CPython
  <= 3.12 on x86_64 / macOS / Windows).
* ``"portable"``: the same step as plain ONNX graphs run by a stock ``onnxruntime``
  ``InferenceSession`` (every Python and platform that onnxruntime has wheels for).

Both give the same parameters to 1e-4 on the same inputs.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

if TYPE_CHECKING:
    import onnx

    from ..params import UpdateParams

ENGINES = ("ort", "portable")


class TrainSession(Protocol):
    """One head's training state: parameters and optimizer state, stepped one mini-batch at a time."""

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One forward/backward/optimizer step on ``x`` float32 [B, D], ``y`` int64 [B].

        Returns the batch's mean loss."""
        ...

    def parameters(self) -> dict[str, np.ndarray]:
        """The trainable parameters by initializer name, as they are now (copies)."""
        ...

    def set_parameter(self, name: str, value: np.ndarray) -> None:
        """Overwrite one trainable parameter (same shape); the optimizer state is kept."""
        ...

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The head's logits [N, C] for ``x`` with the current parameters."""
        ...

    def close(self) -> None: ...


class Engine(Protocol):
    name: str

    def check(self, head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> None:
        """Raise ModelError (saying what would work) if this engine cannot train ``head``;
        cheap enough to run before an update embeds anything."""
        ...

    def open(self, head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> TrainSession:
        """A training session over the forward graph ``head`` whose initializers ``trainable`` train."""
        ...


ORT_MISSING = (
    "the ort training engine needs onnxruntime-training-cpu, which is not installed here "
    "(it has wheels for CPython <= 3.12 on x86_64 Linux, macOS and Windows: "
    "pip install onnxruntime-training-cpu==1.19.2 in place of onnxruntime); "
    "--engine portable trains with the onnxruntime that is installed"
)


def get(name: str | None = None) -> Engine:
    """The engine called ``name``; None picks "ort" when ONNX Runtime's training modules are
    installed, else "portable". UsageError for an unknown name, or "ort" where its training
    modules are missing. Each engine is imported here, when asked for: "ort" pulls in ONNX
    Runtime's training modules, which the CLI's other commands never need."""
    from .. import _ort  # onnxruntime itself: only a command that trains needs it
    from ..errors import UsageError

    if name is None:
        name = "ort" if _ort.has_training() else "portable"
    if name == "ort":
        if not _ort.has_training():
            raise UsageError(ORT_MISSING)
        from .ort import ENGINE  # ONNX Runtime's training modules: only when this engine is asked for

        return ENGINE
    if name == "portable":
        module = importlib.import_module(".portable", __name__)  # the portable engine's own module
        return cast(Engine, module.ENGINE)
    raise UsageError(f"unknown training engine {name!r}; choose one of {', '.join(ENGINES)}")

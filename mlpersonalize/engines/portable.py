"""The portable training engine: a head's whole training step as one standard ONNX graph.

``build_train_step`` turns the forward head ``"embedding" [N, D] -> "logits" [N, C]`` into one
graph that a stock, inference-only ONNX Runtime (or any ONNX runtime: only default-domain ops)
runs with an ``InferenceSession``:

* inputs: each trainable parameter ``p``; its AdamW moments ``p.exp_avg`` and ``p.exp_avg_sq``
  and the number of steps taken ``step`` (int64 [1]) when the optimizer is AdamW; the
  ``learning_rate`` (float [1]); the mini-batch ``x`` [B, D] and labels ``y`` (int64 [B]);
* outputs: ``p.next`` per parameter, the moments' and the step count's ``.next``, and ``loss``.

The loss is softmax cross-entropy, mean over the batch (ORT's ``LossType.CrossEntropyLoss``);
the gradient comes from ``_portable_grad``; the optimizer is what ONNX Runtime's on-device
training runs for the same ``UpdateParams`` (``head.optimizer_block``):

* AdamW: onnxblock's ``AdamWOptimizer`` node, ``adam_mode=1`` (the Hugging Face form) with
  ``correct_bias=1``, per step ``t`` (1 for the first step)::

      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
      p = p - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
      p = p - lr wd p          (decay after the update, on the updated weights)

* SGD: ``SGDOptimizerV2``: ``p = p - lr g`` (no momentum, no state).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._portable_grad import Builder, Reverse, UnsupportedOpError, unsupported, value_shapes

if TYPE_CHECKING:
    from ..params import UpdateParams

__all__ = ["PortableEngine", "PortableSession", "UnsupportedOpError", "build_train_step"]

X, Y, LOSS, LR, STEP = "x", "y", "loss", "learning_rate", "step"
NEXT = ".next"
EXP_AVG, EXP_AVG_SQ = ".exp_avg", ".exp_avg_sq"
MIN_OPSET = 13  # ReduceSum/Split take their axes/sizes as inputs from opset 13 on
# A head's step is dozens of small ops on [16, 128]-sized tensors: one thread was 2x faster than
# the default pool on the bundled head (benchmarks/engines.py); big heads get the pool.
ONE_THREAD_MAX_PARAMETERS = 1 << 20


def state_names(trainable: Sequence[str], optimizer: str) -> list[str]:
    """The optimizer state inputs of the train step, in order."""
    if optimizer == "sgd":
        return []
    return [n + suffix for n in trainable for suffix in (EXP_AVG, EXP_AVG_SQ)] + [STEP]


def _opset(head: onnx.ModelProto) -> int:
    versions = [o.version for o in head.opset_import if o.domain in ("", "ai.onnx")]
    version = max(versions) if versions else 0
    if version < MIN_OPSET:
        raise unsupported("opset", f"the head uses opset {version}; the portable engine needs >= {MIN_OPSET}")
    return version


def _parameter_graph(head: onnx.ModelProto, trainable: Sequence[str]) -> onnx.ModelProto:
    """``head`` with its trainable initializers turned into graph inputs."""
    model = onnx.ModelProto()
    model.CopyFrom(head)
    graph = model.graph
    found = {init.name: init for init in graph.initializer}
    missing = [name for name in trainable if name not in found]
    if missing:
        raise ValueError(f"the head has no initializer named {', '.join(missing)}")
    for name in trainable:
        init = found[name]
        graph.initializer.remove(init)
        graph.input.append(helper.make_tensor_value_info(name, init.data_type, list(init.dims)))
    return model


def build_train_step(
    head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams
) -> onnx.ModelProto:
    """One standard ONNX graph: forward, loss, gradient and optimizer update of ``head``."""
    trainable = list(trainable)
    opset = _opset(head)
    model = _parameter_graph(head, trainable)
    for node in model.graph.node:  # the forward pass reads the batch input "x"
        node.input[:] = [X if name == "embedding" else name for name in node.input]
    graph = model.graph
    embedding = next(i for i in graph.input if i.name == "embedding")
    dim = embedding.type.tensor_type.shape.dim[1].dim_value
    logits_info = next(o for o in graph.output if o.name == "logits")
    classes = logits_info.type.tensor_type.shape.dim[1].dim_value
    inputs = [helper.make_tensor_value_info(X, TensorProto.FLOAT, ["B", dim])]
    inputs += [i for i in graph.input if i.name != "embedding"]
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", classes]))
    shapes = value_shapes(model)

    b = Builder()
    # loss: mean softmax cross-entropy; its gradient w.r.t. the logits is (softmax - onehot) / B
    log_prob = b.name("log_prob")
    b.nodes.append(
        helper.make_node("SoftmaxCrossEntropyLoss", ["logits", Y], [LOSS, log_prob], reduction="mean")
    )
    onehot = b.op("OneHot", [Y, b.const(np.array(classes, np.int64)), b.const(np.array([0, 1], np.float32))])
    batch = b.op("Cast", [b.op("Shape", [Y])], to=TensorProto.FLOAT)
    seed = b.op("Div", [b.op("Sub", [b.op("Exp", [log_prob]), onehot]), batch], stem="dlogits")
    grads = Reverse(graph, shapes, b).gradients({"logits": seed}, trainable)

    lr = LR
    outputs = []
    if params.optimizer == "sgd":
        for name in trainable:
            b.nodes.append(helper.make_node("Sub", [name, b.op("Mul", [grads[name], lr])], [name + NEXT]))
            outputs.append(name + NEXT)
    else:
        b1, b2 = float(params.beta1), float(params.beta2)
        step = b.op("Add", [STEP, b.const(np.array([1], np.int64))])
        b.nodes.append(helper.make_node("Identity", [step], [STEP + NEXT]))
        t = b.op("Cast", [step], to=TensorProto.FLOAT)
        correction1 = b.op("Sub", [b.const(np.float32(1)), b.op("Pow", [b.const(np.float32(b1)), t])])
        correction2 = b.op("Sub", [b.const(np.float32(1)), b.op("Pow", [b.const(np.float32(b2)), t])])
        lr_corrected = b.op("Div", [b.op("Mul", [lr, b.op("Sqrt", [correction2])]), correction1])
        decay = b.op("Mul", [lr, b.const(np.float32(params.weight_decay))]) if params.weight_decay else ""
        c_b1, c_1b1 = b.const(np.float32(b1)), b.const(np.float32(1 - b1))
        c_b2, c_1b2 = b.const(np.float32(b2)), b.const(np.float32(1 - b2))
        c_eps = b.const(np.float32(params.eps))
        for name in trainable:
            g = grads[name]
            m_in, v_in = name + EXP_AVG, name + EXP_AVG_SQ
            m, v = m_in + NEXT, v_in + NEXT
            b.nodes.append(helper.make_node("Add", [b.op("Mul", [m_in, c_b1]), b.op("Mul", [g, c_1b1])], [m]))
            g2 = b.op("Mul", [b.op("Mul", [g, g]), c_1b2])
            b.nodes.append(helper.make_node("Add", [b.op("Mul", [v_in, c_b2]), g2], [v]))
            denom = b.op("Add", [b.op("Sqrt", [v]), c_eps])
            target = b.name("stepped") if decay else name + NEXT
            b.nodes.append(
                helper.make_node(
                    "Sub", [name, b.op("Div", [b.op("Mul", [m, lr_corrected]), denom])], [target]
                )
            )
            if decay:
                b.nodes.append(helper.make_node("Sub", [target, b.op("Mul", [target, decay])], [name + NEXT]))
            outputs.append(name + NEXT)
        outputs += [n + NEXT for n in state_names(trainable, params.optimizer)]

    param_inputs = [i for i in graph.input if i.name in trainable]
    state_inputs = []
    for name in state_names(trainable, params.optimizer):
        if name == STEP:
            state_inputs.append(helper.make_tensor_value_info(STEP, TensorProto.INT64, [1]))
        else:
            source = next(i for i in param_inputs if name.startswith(i.name + "."))
            state_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, _dims(source)))
    step_graph = helper.make_graph(
        list(graph.node) + b.nodes,
        "train_step",
        [
            *param_inputs,
            *state_inputs,
            helper.make_tensor_value_info(LR, TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info(X, TensorProto.FLOAT, ["B", dim]),
            helper.make_tensor_value_info(Y, TensorProto.INT64, ["B"]),
        ],
        [*(_next_info(name, graph.input, state_inputs) for name in outputs), _scalar(LOSS)],
        list(graph.initializer) + b.constants,
    )
    result = helper.make_model(step_graph, opset_imports=[helper.make_opsetid("", opset)])
    result.ir_version = head.ir_version
    result.producer_name = "mlpersonalize"
    return result


def _dims(info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in info.type.tensor_type.shape.dim]


def _next_info(name: str, params: Sequence[onnx.ValueInfoProto], state: Sequence[onnx.ValueInfoProto]):
    source = next(i for i in [*params, *state] if i.name + NEXT == name)
    return helper.make_tensor_value_info(name, source.type.tensor_type.elem_type, _dims(source))


def _scalar(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [])


def build_forward(head: onnx.ModelProto, trainable: Sequence[str]) -> onnx.ModelProto:
    """The head with its trainable initializers as inputs: logits for given parameters."""
    return _parameter_graph(head, trainable)


class PortableSession:
    """A head's parameters and optimizer state, stepped by one ``InferenceSession.run`` each.

    The state (parameters, AdamW moments, step count) lives in two sets of numpy buffers bound to
    the session once (IOBinding): a step reads one set and writes the next state into the other,
    then the two swap. Fed and fetched as dicts, every step handed the whole state to ONNX Runtime
    and took new arrays back (10-12 us of a 36 us linear-head step: ``python -m benchmarks.engines
    --breakdown``)."""

    def __init__(self, head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> None:
        from .. import _ort  # lazy: onnxruntime (~0.1 s) only once a session opens

        self.trainable = list(trainable)
        step = build_train_step(head, self.trainable, params)
        inits = {i.name: numpy_helper.to_array(i) for i in head.graph.initializer}
        size = sum(int(inits[name].size) for name in self.trainable)
        self._threads = 1 if size <= ONE_THREAD_MAX_PARAMETERS else 0
        self._session = _ort.inference_session(step.SerializeToString(), self._threads)
        self._forward_model = build_forward(head, self.trainable)
        self._forward: Any = None
        state: dict[str, np.ndarray] = {}
        for name in self.trainable:
            state[name] = np.array(inits[name], np.float32, order="C")  # a writable copy: bound, set in place
        for name in state_names(self.trainable, params.optimizer):
            if name == STEP:
                state[STEP] = np.zeros(1, np.int64)
            else:
                state[name] = np.zeros_like(state[name.rsplit(".", 1)[0]])
        self._state = state  # the current state: what the next step reads
        self._spare = {name: np.empty_like(value) for name, value in state.items()}  # what it writes
        self._lr = np.array([params.learning_rate], np.float32)
        self._loss = np.zeros((), np.float32)
        self.bind()

    def bind(self) -> None:
        """Bind the state to the session: one binding per direction of the swap. Again after
        ``_session`` is replaced by a graph of the same inputs and outputs (benchmarks.engines)."""
        self._bindings = (self._bind(self._state, self._spare), self._bind(self._spare, self._state))
        self._turn = 0

    def _bind(self, read: dict[str, np.ndarray], write: dict[str, np.ndarray]) -> Any:
        """A binding that reads the state from ``read`` and writes the next one into ``write``."""
        binding = self._session.io_binding()
        for name, value in read.items():
            binding.bind_cpu_input(name, value)
            out = write[name]
            binding.bind_output(name + NEXT, "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        binding.bind_cpu_input(LR, self._lr)
        binding.bind_output(LOSS, "cpu", 0, np.float32, [], self._loss.ctypes.data)
        return binding

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        binding = self._bindings[self._turn]
        binding.bind_cpu_input(X, np.ascontiguousarray(x, np.float32))
        binding.bind_cpu_input(Y, np.ascontiguousarray(y, np.int64))
        self._session.run_with_iobinding(binding)
        self._state, self._spare = self._spare, self._state
        self._turn = 1 - self._turn
        return float(self._loss)

    def parameters(self) -> dict[str, np.ndarray]:
        return {name: self._state[name].copy() for name in self.trainable}

    def set_parameter(self, name: str, value: np.ndarray) -> None:
        if name not in self.trainable:
            raise KeyError(f"{name!r} is not a trainable parameter of this head")
        current = self._state[name]
        value = np.ascontiguousarray(value, np.float32)
        if value.shape != current.shape:
            raise ValueError(f"{name}: shape {value.shape} does not match {current.shape}")
        current[...] = value  # in place: the bound buffer

    def logits(self, x: np.ndarray) -> np.ndarray:
        from .. import _ort  # lazy: onnxruntime only when logits are asked for

        if self._forward is None:
            self._forward = _ort.inference_session(self._forward_model.SerializeToString(), self._threads)
        feeds = {name: self._state[name] for name in self.trainable}
        feeds["embedding"] = np.ascontiguousarray(x, np.float32)
        return np.asarray(self._forward.run(["logits"], feeds)[0], np.float32)

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
        self._forward = None


class PortableEngine:
    """Trains a head with a stock ``onnxruntime`` (no training package): see the module docstring."""

    name = "portable"

    def check(self, head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> None:
        """UnsupportedOpError (a ModelError naming the op and the ort engine) when the step
        cannot be built; a head's step builds in milliseconds."""
        build_train_step(head, trainable, params)

    def open(self, head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> PortableSession:
        return PortableSession(head, trainable, params)


ENGINE = PortableEngine()

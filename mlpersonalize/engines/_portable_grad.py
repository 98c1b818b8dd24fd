"""Reverse-mode differentiation of a head's forward ONNX graph, as more ONNX nodes.

The portable engine needs the gradient of the loss with respect to the head's trainable
initializers as plain default-domain ONNX (no ``com.microsoft`` gradient ops), so that any
inference runtime can run a training step. Heads are small and their shapes are known except
the batch dimension, so each op's vector-Jacobian product is written out with static shapes
wherever they are known (no runtime shape arithmetic), which keeps the step graph lean.

``onnx-ad`` (PyPI) was evaluated for this: its gradients were right on the cosine head, but it
emits runtime shape machinery (NonZero/Equal/Expand, 91 nodes where this gives 30) and is a
young single-maintainer package; the ops heads use are few, so their rules live here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelError

Dim = int | str  # a static size, or the name of a dimension known only at run time
Shape = tuple[Dim, ...]

SUPPORTED_OPS = (
    "Add",
    "Concat",
    "Div",
    "Flatten",
    "Gemm",
    "Identity",
    "MatMul",
    "Mul",
    "Neg",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Sqrt",
    "Sub",
    "Transpose",
)


class UnsupportedOpError(ModelError):
    """The head uses an op the portable engine cannot differentiate."""


ORT_HINT = (
    "The ONNX Runtime engine (--engine ort, with onnxruntime-training-cpu "
    "on CPython <= 3.12 x86_64) trains it"
)


def unsupported(op: str, why: str = "") -> UnsupportedOpError:
    detail = f" ({why})" if why else ""
    return UnsupportedOpError(
        f"the portable training engine cannot train this head: it has no gradient for the ONNX op "
        f"{op!r}{detail}; it supports {', '.join(SUPPORTED_OPS)}. {ORT_HINT}"
    )


def cannot_train(why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"the portable training engine cannot train this head: {why}. {ORT_HINT}")


def value_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Every value's shape as far as ONNX shape inference knows it (missing: unknown)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    shapes: dict[str, Shape] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        dims: list[Dim] = []
        for dim in tensor.shape.dim:
            dims.append(dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?"))
        shapes[info.name] = tuple(dims)
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


class Builder:
    """Appends nodes and constants with unique names under a prefix."""

    def __init__(self, prefix: str = "grad") -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{self.prefix}/{stem}_{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], stem: str = "", **attrs: Any) -> str:
        """One node with one output; the output's name."""
        name = self.name(stem or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], **attrs))
        return name

    def multi(self, op_type: str, inputs: Sequence[str], outputs: int, **attrs: Any) -> list[str]:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names

    def const(self, value: np.ndarray | float | Sequence[int], stem: str = "c") -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self.name(stem)
        self.constants.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), np.int64), "shape")


def _static(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


class Reverse:
    """The backward pass of ``graph``'s nodes for the loss seed ``seeds`` (value -> its gradient)."""

    def __init__(self, graph: onnx.GraphProto, shapes: dict[str, Shape], builder: Builder) -> None:
        self.graph = graph
        self.shapes = shapes
        self.b = builder
        self.inits = {init.name: init for init in graph.initializer}
        self.rules: dict[str, Callable[[onnx.NodeProto, str, list[bool]], list[str | None]]] = {
            "Add": self._add,
            "Sub": self._sub,
            "Mul": self._mul,
            "Div": self._div,
            "Neg": lambda n, g, need: [self.b.op("Neg", [g])],
            "Identity": lambda n, g, need: [g],
            "Sqrt": self._sqrt,
            "Relu": self._relu,
            "ReduceSum": self._reduce_sum,
            "Gemm": self._gemm,
            "MatMul": self._matmul,
            "Concat": self._concat,
            "Reshape": self._reshape,
            "Flatten": self._reshape,
            "Transpose": self._transpose,
        }

    # --- helpers ---------------------------------------------------------------------------

    def shape(self, name: str) -> Shape:
        if name not in self.shapes:
            raise cannot_train(f"the shape of {name!r} is unknown")
        return self.shapes[name]

    def shape_tensor(self, name: str) -> str:
        """A 1-D int64 tensor holding ``name``'s shape: a constant when it is static."""
        shape = self.shapes.get(name)
        if shape is not None and _static(shape):
            return self.b.ints([int(d) for d in shape])
        return self.b.op("Shape", [name])

    def unbroadcast(self, grad: str, grad_of: str, out: str) -> str:
        """Sum ``grad`` (shaped like ``out``) down to the shape of the operand ``grad_of``."""
        target, full = self.shape(grad_of), self.shape(out)
        lead = len(full) - len(target)
        axes = list(range(lead))
        for i, dim in enumerate(target):
            if dim == 1 and full[lead + i] != 1:
                axes.append(lead + i)
        if not axes:
            return grad
        summed = self.b.op("ReduceSum", [grad, self.b.ints(axes)], keepdims=1)
        if lead:
            summed = self.b.op("Reshape", [summed, self.shape_tensor(grad_of)])
        return summed

    # --- rules: each returns one gradient (or None) per input -----------------------------

    def _add(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        a, b = node.input
        out = node.output[0]
        return [
            self.unbroadcast(g, a, out) if need[0] else None,
            self.unbroadcast(g, b, out) if need[1] else None,
        ]

    def _sub(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        a, b = node.input
        out = node.output[0]
        return [
            self.unbroadcast(g, a, out) if need[0] else None,
            self.unbroadcast(self.b.op("Neg", [g]), b, out) if need[1] else None,
        ]

    def _mul(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        a, b = node.input
        out = node.output[0]
        if a == b:  # x * x: 2 x g
            two = self.b.const(np.float32(2))
            return [self.b.op("Mul", [self.b.op("Mul", [g, a]), two]), None]
        return [
            self.unbroadcast(self.b.op("Mul", [g, b]), a, out) if need[0] else None,
            self.unbroadcast(self.b.op("Mul", [g, a]), b, out) if need[1] else None,
        ]

    def _div(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        a, b = node.input
        out = node.output[0]
        if a == b:
            return [None, None]  # x / x is 1: no gradient
        g_over_b = self.b.op("Div", [g, b])
        grads: list[str | None] = [self.unbroadcast(g_over_b, a, out) if need[0] else None, None]
        if need[1]:  # d(a/b)/db = -(a/b)/b
            grads[1] = self.unbroadcast(self.b.op("Neg", [self.b.op("Mul", [g_over_b, out])]), b, out)
        return grads

    def _sqrt(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        half = self.b.const(np.float32(0.5))
        return [self.b.op("Mul", [self.b.op("Div", [g, node.output[0]]), half])]

    def _relu(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        positive = self.b.op("Greater", [node.output[0], self.b.const(np.float32(0))])
        return [self.b.op("Where", [positive, g, self.b.const(np.float32(0))])]

    def _reduce_sum(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        source = node.input[0]
        rank = len(self.shape(source))
        if len(node.input) > 1 and node.input[1]:
            if node.input[1] not in self.inits:
                raise unsupported("ReduceSum", "its axes are not a constant")
            axes = [int(a) for a in numpy_helper.to_array(self.inits[node.input[1]]).reshape(-1)]
        else:
            axes = [int(a) for a in attrs.get("axes", [])]
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [g]
            axes = list(range(rank))
        axes = sorted(a % rank for a in axes)
        if not attrs.get("keepdims", 1):
            g = self.b.op("Unsqueeze", [g, self.b.ints(axes)])
        return [self.b.op("Expand", [g, self.shape_tensor(source)])] + [None] * (len(node.input) - 1)

    def _gemm(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        ta, tb = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
        a, b = node.input[0], node.input[1]
        grads: list[str | None] = [None] * len(node.input)
        if need[0]:  # dA' = alpha g B'^T
            if not ta:
                grads[0] = self.b.op("Gemm", [g, b], alpha=alpha, transB=0 if tb else 1)
            else:
                grads[0] = self.b.op("Gemm", [b, g], alpha=alpha, transA=tb, transB=1)
        if need[1]:  # dB' = alpha A'^T g
            if not tb:
                grads[1] = self.b.op("Gemm", [a, g], alpha=alpha, transA=0 if ta else 1)
            else:
                grads[1] = self.b.op("Gemm", [g, a], alpha=alpha, transA=1, transB=ta)
        if len(node.input) > 2 and node.input[2] and need[2]:
            grad_c = self.unbroadcast(g, node.input[2], node.output[0])
            if beta != 1.0:
                grad_c = self.b.op("Mul", [grad_c, self.b.const(np.float32(beta))])
            grads[2] = grad_c
        return grads

    def _matmul(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        a, b = node.input
        if len(self.shape(a)) != 2 or len(self.shape(b)) != 2:
            raise unsupported("MatMul", "only 2-D operands")
        return [
            self.b.op("Gemm", [g, b], transB=1) if need[0] else None,
            self.b.op("Gemm", [a, g], transA=1) if need[1] else None,
        ]

    def _concat(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        axis = int(next(helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"))
        rank = len(self.shape(node.output[0]))
        axis %= rank
        sizes = [self.shape(name)[axis] for name in node.input]
        if not all(isinstance(s, int) for s in sizes):
            raise unsupported("Concat", "along a dimension known only at run time")
        parts = self.b.multi("Split", [g, self.b.ints([int(s) for s in sizes])], len(sizes), axis=axis)
        return [part if need[i] else None for i, part in enumerate(parts)]

    def _reshape(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        source = node.input[0]
        return [self.b.op("Reshape", [g, self.shape_tensor(source)])] + [None] * (len(node.input) - 1)

    def _transpose(self, node: onnx.NodeProto, g: str, need: list[bool]) -> list[str | None]:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rank = len(self.shape(node.input[0]))
        perm = [int(p) for p in attrs.get("perm", list(reversed(range(rank))))]
        inverse = [perm.index(i) for i in range(rank)]
        return [self.b.op("Transpose", [g], perm=inverse)]

    # --- the walk ------------------------------------------------------------------------

    def gradients(self, seeds: dict[str, str], wrt: Sequence[str]) -> dict[str, str]:
        """Gradients of the seeded loss with respect to ``wrt`` (values the nodes read)."""
        nodes = list(self.graph.node)
        active = set(wrt)  # values that depend on a trained parameter
        for node in nodes:
            if any(name in active for name in node.input):
                if node.domain not in ("", "ai.onnx") or node.op_type not in self.rules:
                    raise unsupported(node.op_type if not node.domain else f"{node.domain}.{node.op_type}")
                active.update(node.output)
        pending: dict[str, list[str]] = {name: [grad] for name, grad in seeds.items()}
        for node in reversed(nodes):
            if not any(name in active for name in node.input):
                continue
            contributions = pending.pop(node.output[0], [])
            if len(node.output) > 1 and any(pending.get(out) for out in node.output[1:]):
                raise unsupported(node.op_type, "gradient through a second output")
            if not contributions:
                continue
            grad = self._total(contributions)
            need = [name in active for name in node.input]
            for name, part in zip(node.input, self.rules[node.op_type](node, grad, need), strict=False):
                if part is not None and name in active:
                    pending.setdefault(name, []).append(part)
        result = {}
        for name in wrt:
            parts = pending.get(name)
            if not parts:
                raise cannot_train(f"the loss does not depend on the trainable {name!r}")
            result[name] = self._total(parts)
        return result

    def _total(self, parts: list[str]) -> str:
        return parts[0] if len(parts) == 1 else self.b.op("Sum", parts)

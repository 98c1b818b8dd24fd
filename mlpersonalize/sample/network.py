"""The sample drawing classifier's graphs, written with onnx.helper (no PyTorch).

The backbone is three conv blocks and a linear layer to an L2-normalised embedding; the
training graph adds a scaled-cosine classifier over the pretraining classes. Only ops whose
gradients ONNX Runtime training implements are used (no BatchNorm: its training-mode
statistics are not what an exported inference graph computes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9  # ONNX Runtime 1.19 loads IR ≤ 10; generate_artifacts wants ≤ 10 too
EPS = 1e-6


@dataclass(frozen=True)
class Shape:
    """Widths of the network: channels of the three conv blocks and the embedding size.

    ``convs`` is how many 3×3 convolutions (each with a ReLU) each block has before its pooling.
    """

    channels: tuple[int, int, int] = (32, 64, 128)
    embedding: int = 128
    convs: tuple[int, int, int] = (1, 1, 1)


def conv_names(shape: Shape) -> list[list[str]]:
    """Parameter prefixes of each block's convolutions: ``conv2``, then ``conv2_1``, ``conv2_2``…"""
    return [
        [f"conv{i}" if j == 0 else f"conv{i}_{j}" for j in range(n)] for i, n in enumerate(shape.convs, 1)
    ]


def blocks(weights: dict[str, np.ndarray]) -> list[list[str]]:
    """The same prefixes, read back from a set of weights (so a backbone needs no Shape)."""
    out = []
    for i in (1, 2, 3):
        names = [f"conv{i}"]
        while f"conv{i}_{len(names)}.w" in weights:
            names.append(f"conv{i}_{len(names)}")
        out.append(names)
    return out


def init_weights(shape: Shape, num_classes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He-initialised parameters of the backbone and a random cosine head."""
    w: dict[str, np.ndarray] = {}
    cin = 1
    for cout, names in zip(shape.channels, conv_names(shape), strict=True):
        for name in names:
            w[f"{name}.w"] = rng.normal(0, np.sqrt(2 / (cin * 9)), (cout, cin, 3, 3))
            w[f"{name}.b"] = np.zeros(cout)
            cin = cout
    flat = cin * 3 * 3
    w["fc.w"] = rng.normal(0, np.sqrt(1 / flat), (shape.embedding, flat))
    w["fc.b"] = np.zeros(shape.embedding)
    w["head.w"] = rng.normal(0, 1, (num_classes, shape.embedding))
    return {k: v.astype(np.float32) for k, v in w.items()}


def _normalize(nodes: list[onnx.NodeProto], x: str, out: str, axes: str) -> None:
    """out = x / sqrt(sum(x², axis 1) + eps), from ops with gradients in ORT training."""
    nodes += [
        helper.make_node("Mul", [x, x], [f"{out}.sq"]),
        helper.make_node("ReduceSum", [f"{out}.sq", axes], [f"{out}.ss"], keepdims=1),
        helper.make_node("Add", [f"{out}.ss", "eps"], [f"{out}.ss_eps"]),
        helper.make_node("Sqrt", [f"{out}.ss_eps"], [f"{out}.norm"]),
        helper.make_node("Div", [x, f"{out}.norm"], [out]),
    ]


def build(weights: dict[str, np.ndarray], *, with_head: bool, logit_scale: float = 16.0) -> onnx.ModelProto:
    """The backbone (input "image" → output "embedding") or, with_head, the training graph.

    The training graph's first output is "logits" = scale · cos(embedding, head rows), the
    form ``_ort.generate_head_artifacts`` puts a cross-entropy loss on.
    """
    nodes: list[onnx.NodeProto] = []
    x = "image"
    for i, names in enumerate(blocks(weights), 1):
        for j, name in enumerate(names):
            tag = f"{i}" if j == 0 else f"{i}_{j}"  # one conv per block: the original node names
            nodes += [
                helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"c{tag}"], pads=[1, 1, 1, 1]),
                helper.make_node("Relu", [f"c{tag}"], [f"r{tag}"]),
            ]
            x = f"r{tag}"
        nodes.append(helper.make_node("MaxPool", [x], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2]))
        x = f"p{i}"
    nodes += [
        helper.make_node("Flatten", [x], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["fc"], transB=1),
    ]
    _normalize(nodes, "fc", "embedding", "axes1")
    consts = [
        numpy_helper.from_array(np.array([EPS], np.float32), "eps"),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
    ]
    names = [k for k in weights if with_head or not k.startswith("head.")]
    inits = [numpy_helper.from_array(weights[k].astype(np.float32), k) for k in names] + consts
    dim = weights["fc.w"].shape[0]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])]
    if with_head:
        _normalize(nodes, "head.w", "head.wn", "axes1")
        nodes += [
            helper.make_node("Gemm", ["embedding", "head.wn"], ["cos"], transB=1),
            helper.make_node("Mul", ["cos", "scale"], ["logits"]),
        ]
        inits.append(numpy_helper.from_array(np.array([logit_scale], np.float32), "scale"))
        classes = weights["head.w"].shape[0]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])]
    graph = helper.make_graph(
        nodes,
        "doodle_training" if with_head else "doodle_backbone",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        outputs,
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mlpersonalize"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def trainable(weights: dict[str, np.ndarray]) -> list[str]:
    """Names of every parameter the pretraining updates (all of them)."""
    return list(weights)

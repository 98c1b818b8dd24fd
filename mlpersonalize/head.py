"""The updatable classification head and the inference model built around it, as ONNX graphs.

The head is a scaled-cosine classifier: ``logits = s * normalize(e) @ normalize(W).T``, with one
row of ``W`` per label. Cosine rows make weight imprinting exact (a new row is the normalised mean
embedding of its examples) and keep old and new labels on the same scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    from .params import UpdateParams

OPSET = 17
ML_OPSET = 2
IR_VERSION = 9  # ONNX Runtime 1.19 reads up to 10; 9 keeps older runtimes happy too
WEIGHT = "head.weight"
EPS = 1e-12


def _normalize_nodes(source: str, target: str, prefix: str) -> list[onnx.NodeProto]:
    """Row-wise L2 normalisation from basic ops (each has a gradient in ORT training)."""
    return [
        helper.make_node("Mul", [source, source], [f"{prefix}_sq"]),
        helper.make_node("ReduceSum", [f"{prefix}_sq", "head.axes"], [f"{prefix}_ss"], keepdims=1),
        helper.make_node("Add", [f"{prefix}_ss", "head.eps"], [f"{prefix}_sse"]),
        helper.make_node("Sqrt", [f"{prefix}_sse"], [f"{prefix}_norm"]),
        helper.make_node("Div", [source, f"{prefix}_norm"], [target]),
    ]


def _head_parts(
    weight: np.ndarray, logit_scale: float, embedding: str, logits: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes = _normalize_nodes(WEIGHT, "head.wn", "head_w")
    nodes += _normalize_nodes(embedding, "head.en", "head_e")
    nodes += [
        helper.make_node("Gemm", ["head.en", "head.wn"], ["head.cos"], transB=1),
        helper.make_node("Mul", ["head.cos", "head.scale"], [logits]),
    ]
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(weight, dtype=np.float32), WEIGHT),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "head.axes"),
        numpy_helper.from_array(np.array(EPS, dtype=np.float32), "head.eps"),
        numpy_helper.from_array(np.array(logit_scale, dtype=np.float32), "head.scale"),
    ]
    return nodes, inits


def build_head(weight: np.ndarray, logit_scale: float) -> onnx.ModelProto:
    """The forward-only head: "embedding" [N, D] -> "logits" [N, C]; the trainable part."""
    classes, dim = weight.shape
    return head_model(*_head_parts(weight, logit_scale, "embedding", "logits"), dim, classes)


def head_model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], dim: int, classes: int
) -> onnx.ModelProto:
    """Wrap a head's nodes as a model: "embedding" [N, dim] -> "logits" [N, classes]."""
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def build_inference_model(
    backbone: onnx.ModelProto,
    weight: np.ndarray,
    logit_scale: float,
    labels: list[str],
    embedding_output: str = "embedding",
    kind: str = "cosine",
    features: onnx.ModelProto | None = None,
) -> onnx.ModelProto:
    """Backbone + head + softmax + label lookup: a plain ONNX classifier any runtime can run.

    Outputs: "label" (string per example), "probabilities" [N, C] and the backbone's embedding.
    ``kind`` "linear" takes ``weight`` as ``[C, D + 1]`` (bias last; see linear_head.py);
    "branch" also the head's ``features`` part, which reads "embedding" (branch_head.py).
    """
    if kind == "branch":
        from . import branch_head

        assert features is not None, "a branch head needs its features part"
        nodes, inits = branch_head.head_parts(features, weight, 0, 0, "head.logits")
        classes = weight.shape[0]
        dim = backbone.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    elif kind == "linear":
        from . import linear_head

        nodes, inits = linear_head.head_parts(weight, 0, embedding_output, "head.logits")
        classes, dim = weight.shape[0], weight.shape[1] - 1
    else:
        nodes, inits = _head_parts(weight, logit_scale, embedding_output, "head.logits")
        classes, dim = weight.shape
    if classes != len(labels):
        raise ValueError(f"head has {classes} rows but there are {len(labels)} labels")
    graph = backbone.graph
    nodes += [
        helper.make_node("Softmax", ["head.logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["head.index"], axis=1, keepdims=0),
        helper.make_node(
            "LabelEncoder",
            ["head.index"],
            ["label"],
            domain="ai.onnx.ml",
            keys_int64s=list(range(classes)),
            values_strings=list(labels),
            default_string="unknown",
        ),
    ]
    outputs = [
        helper.make_tensor_value_info("label", TensorProto.STRING, ["N"]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
        helper.make_tensor_value_info(embedding_output, TensorProto.FLOAT, ["N", dim]),
    ]
    merged = helper.make_graph(
        list(graph.node) + nodes,
        "classifier",
        list(graph.input),
        outputs,
        list(graph.initializer) + inits,
    )
    # A brought backbone may use a newer opset (up to 21, which needs IR 10); the head's ops are
    # the same there, so the merged model takes the newer of the two.
    opset = max([OPSET] + [o.version for o in backbone.opset_import if o.domain in ("", "ai.onnx")])
    if features is not None:
        opset = max([opset] + [o.version for o in features.opset_import if o.domain in ("", "ai.onnx")])
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("ai.onnx.ml", ML_OPSET)]
    opsets += [o for o in backbone.opset_import if o.domain not in ("", "ai.onnx", "ai.onnx.ml")]
    model = helper.make_model(merged, opset_imports=opsets, producer_name="mlpersonalize")
    model.ir_version = IR_VERSION if opset <= OPSET else max(IR_VERSION, min(backbone.ir_version, 10))
    onnx.checker.check_model(model)
    return model


def head_weight(head: onnx.ModelProto) -> np.ndarray:
    """The weight rows stored in a head model."""
    for init in head.graph.initializer:
        if init.name == WEIGHT:
            return numpy_helper.to_array(init).astype(np.float32)
    raise ValueError(f"head model has no initializer named {WEIGHT}")


def optimizer_block(params: UpdateParams) -> Any:
    """The optimizer graph for ``params`` (ORT's enum optimizers fix betas/eps/decay; this does not)."""
    from . import _ort

    optim = _ort.onnxblock_api().optim
    if params.optimizer == "sgd":
        return optim.SGD()  # ORT's SGD has no momentum: params.momentum is not used
    return optim.AdamW(betas=(params.beta1, params.beta2), eps=params.eps, weight_decay=params.weight_decay)


def generate_artifacts(weight: np.ndarray, scale: float, params: UpdateParams, directory: Path) -> None:
    """Head training artifacts into ``directory``; the eval model also outputs the logits."""
    from . import _ort

    _ort.generate_head_artifacts(
        build_head(weight, scale), [WEIGHT], directory, optimizer_block(params), extra_outputs=("logits",)
    )

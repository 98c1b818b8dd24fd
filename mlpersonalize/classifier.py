"""The inference model built around a head, and the ONNX versions every head graph uses.

model.onnx is backbone + head + softmax + label lookup: a plain ONNX classifier any runtime can
run. What the head's nodes are is the head kind's business (``heads``); they arrive here as nodes
and initializers reading the embedding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import deferred

if TYPE_CHECKING:
    import onnx
    from onnx import helper
else:  # onnx (~30 ms): imported when a model is built, which predict and inspect never do
    onnx, helper = deferred("onnx", "onnx.helper")

OPSET = 17
ML_OPSET = 2
SCORES = "head.scores"  # a head's per-label open-set score, if it gives one
IR_VERSION = 9  # ONNX Runtime 1.19 reads up to 10; 9 keeps older runtimes happy too


def head_model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], dim: int, classes: int
) -> onnx.ModelProto:
    """Wrap a head's nodes as a model: "embedding" [N, dim] -> "logits" [N, classes]."""
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["N", dim])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def build_inference_model(
    backbone: onnx.ModelProto,
    head: tuple[list[onnx.NodeProto], list[onnx.TensorProto]],
    classes: int,
    dim: int,
    labels: list[str],
    embedding_output: str = "embedding",
    features: onnx.ModelProto | None = None,
) -> onnx.ModelProto:
    """Backbone + head + softmax + label lookup: a plain ONNX classifier any runtime can run.

    ``head`` is the head's nodes and initializers from ``embedding_output`` ([N, ``dim``]) to
    "head.logits" ([N, ``classes``]); ``features`` is a part of the head whose opsets count too.
    Outputs: "label" (string per example), "probabilities" [N, C], the backbone's embedding and,
    when the head's nodes give "head.scores" [N, C] (a cosine head: the cosine to each label's
    best row), "scores", the open-set score predict compares with the calibrated thresholds.
    A head with more rows than labels gives per-label logits all the same (heads/cosine.py).
    """
    nodes, inits = head
    nodes = list(nodes)
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
        helper.make_tensor_value_info("label", onnx.TensorProto.STRING, ["N"]),
        helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["N", classes]),
        helper.make_tensor_value_info(embedding_output, onnx.TensorProto.FLOAT, ["N", dim]),
    ]
    if any(SCORES in node.output for node in nodes):
        nodes.append(helper.make_node("Identity", [SCORES], ["scores"]))
        outputs.append(helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["N", classes]))
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

"""Read a user's ONNX classifier safely, find its last linear layer and cut the model there.

The head is the last Gemm (or MatMul, with or without an Add) before the output, possibly
followed by Softmax/LogSoftmax/Identity/Flatten/Reshape. Its input becomes the embedding; what
computes that input becomes backbone.onnx. Everything here raises ModelError (the file) or
UsageError (a flag naming something the model does not have); nothing prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter
from onnx.external_data_helper import (
    ExternalDataInfo,
    _get_all_tensors,
    load_external_data_for_model,
    uses_external_data,
)

from .errors import ModelError, UsageError

MIN_OPSET, MAX_OPSET = 11, 21  # what ONNX Runtime 1.19 runs (opset 21 is its newest)
TARGET_OPSET = 17  # older models are converted up to the opset of the head's graphs
MAX_IR = 10  # ONNX Runtime 1.19 reads IR versions up to 10
_IR11_TYPES = {23}  # FLOAT4E2M1 needs IR 11: such a model cannot be stamped down
PASSTHROUGH = {"Softmax", "LogSoftmax", "Identity", "Flatten", "Reshape", "Squeeze", "Dropout"}
MAX_MODEL_BYTES = 2 * 1024**3 - 1  # protobuf's limit for one message


def _check_external(model: onnx.ModelProto, folder: Path) -> None:
    """Every external-data file must be a regular file inside the model's folder (no links out)."""
    root = folder.resolve()
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        parts = Path(location).parts
        if not location or Path(location).is_absolute() or ".." in parts or "\\" in location:
            raise ModelError(
                f"tensor {tensor.name!r} keeps its data at {location!r}, outside the model's folder; refused"
            )
        path = folder
        for part in parts:
            path = path / part
            if path.is_symlink():
                raise ModelError(
                    f"tensor {tensor.name!r}: its data file {location!r} is a symbolic link; refused"
                )
        if not path.resolve().is_relative_to(root) or not path.is_file():
            raise ModelError(f"tensor {tensor.name!r}: its data file {location!r} is missing from {folder}")


def load_model(path: Path) -> onnx.ModelProto:
    """The model with every weight inline; external data only from files inside its folder."""
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node:
        raise ModelError(f"{path} is not an ONNX model (its graph has no nodes)")
    _check_external(model, path.parent)
    try:
        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read its external data ({exc})") from exc
    return model


def default_opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def make_compatible(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Opset within 11..21 (below 17 converted up to 17) and IR ≤ 10 (stamped down when it can be)."""
    opset = default_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelError(
            f"{where} uses ONNX opset {opset}; supported are {MIN_OPSET} to {MAX_OPSET} "
            "(export it again with an opset in that range)"
        )
    if model.ir_version > MAX_IR:
        used = {t.data_type for t in model.graph.initializer}
        used |= {v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
        if used & _IR11_TYPES or model.functions:
            raise ModelError(
                f"{where} has IR version {model.ir_version} and uses features newer than IR {MAX_IR}, "
                f"the newest ONNX Runtime {MAX_IR} reads; export it again with IR ≤ {MAX_IR}"
            )
        model.ir_version = MAX_IR  # its ops all exist at opset ≤ 21, which IR 10 covers
    if opset < TARGET_OPSET:
        try:
            model = version_converter.convert_version(model, TARGET_OPSET)
        except Exception as exc:
            raise ModelError(f"{where}: cannot convert opset {opset} to {TARGET_OPSET} ({exc})") from exc
    return model


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values by name."""
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


@dataclass(frozen=True)
class Head:
    """The last linear layer: ``logits = embedding @ weight.T + bias``."""

    nodes: tuple[str, ...]  # names of the nodes that make it (for the record)
    op: str
    embedding: str
    weight: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    params: tuple[str, ...]
    output: str


def candidates(model: onnx.ModelProto) -> list[str]:
    """Parameter names a user could mean: those of Gemm/MatMul/Conv/Add layers, last first."""
    names = {t.name for t in model.graph.initializer}
    out: list[str] = []
    for node in reversed(model.graph.node):
        if node.op_type in ("Gemm", "MatMul", "Add", "Conv", "BatchNormalization"):
            out += [name for name in node.input if name in names and name not in out]
    return out


def _describe_candidates(model: onnx.ModelProto) -> str:
    names = candidates(model)
    shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
    return shown or "none (the model has no weight initializers)"


def _linear(node: onnx.NodeProto, producers: dict, const: dict) -> Head | None:
    """The Head a Gemm / Add(MatMul) / MatMul node computes, or None if it is not one."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and len(node.input) >= 2 and node.input[1] in const and not attrs.get("transA"):
        b = const[node.input[1]].astype(np.float32)
        weight = (b if attrs.get("transB") else b.T) * float(attrs.get("alpha", 1.0))
        bias = np.zeros(weight.shape[0], np.float32)
        params = [node.input[1]]
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in const:
                return None
            bias = bias + float(attrs.get("beta", 1.0)) * const[node.input[2]].astype(np.float32).reshape(-1)
            params.append(node.input[2])
        return Head((node.name,), "Gemm", node.input[0], weight, bias, tuple(params), node.output[0])
    if node.op_type == "Add" and len(node.input) == 2:
        for data, bias_name in (node.input, node.input[::-1]):
            matmul = producers.get(data)
            if bias_name in const and matmul is not None and matmul.op_type == "MatMul":
                inner = _linear(matmul, producers, const)
                if inner is not None:
                    bias = np.broadcast_to(const[bias_name].astype(np.float32).reshape(-1), inner.bias.shape)
                    nodes = (*inner.nodes, node.name)
                    return Head(nodes, "MatMul+Add", inner.embedding, inner.weight, bias.copy(),
                                (*inner.params, bias_name), node.output[0])  # fmt: skip
        return None
    if node.op_type == "MatMul" and node.input[1] in const and const[node.input[1]].ndim == 2:
        weight = const[node.input[1]].astype(np.float32).T
        zeros = np.zeros(weight.shape[0], np.float32)
        return Head((node.name,), "MatMul", node.input[0], weight, zeros, (node.input[1],), node.output[0])
    return None


def find_head(model: onnx.ModelProto, trainable: tuple[str, ...] = (), embedding: str | None = None) -> Head:
    """The last linear layer before the first output; checks ``--trainable`` / ``--embedding`` names."""
    graph = model.graph
    const = constants(model)
    producers = {out: node for node in graph.node for out in node.output}
    if trainable:
        unknown = [name for name in trainable if name not in const]
        if unknown:
            raise UsageError(
                f"--trainable: the model has no parameter named {', '.join(unknown)}; "
                f"candidates: {_describe_candidates(model)}"
            )
    tensor = graph.output[0].name
    node = producers.get(tensor)
    while node is not None and node.op_type in PASSTHROUGH:
        node = producers.get(node.input[0])
    head = _linear(node, producers, const) if node is not None else None
    if head is None:
        what = f"a {node.op_type} node" if node is not None else "no node"
        raise ModelError(
            f"no updatable head found: output {tensor!r} is computed by {what}, not a linear layer "
            f"(Gemm, or MatMul with an Add, with constant weights); parameters: {_describe_candidates(model)}"
        )
    if embedding is not None and embedding != head.embedding:
        raise UsageError(
            f"--embedding {embedding!r}: the last linear layer reads {head.embedding!r}; "
            "give that tensor (or leave --embedding out)"
        )
    if head.weight.ndim != 2 or head.bias.shape != (head.weight.shape[0],):
        raise ModelError(f"the last linear layer has weights of shape {head.weight.shape}; expected [C, D]")
    return head


@dataclass(frozen=True)
class Branch:
    """The layers between the cut and the last linear layer, when ``--trainable`` names some.

    The backbone computes ``cut``; ``nodes`` (indices into the graph, in its order) compute the
    last linear layer's input from it, and ``params`` are the parameters among theirs that train.
    """

    cut: str
    nodes: tuple[int, ...]
    params: tuple[str, ...]


def ancestors(graph: onnx.GraphProto, tensor: str) -> tuple[set[int], set[str]]:
    """(indices of the nodes that ``tensor`` depends on, every tensor name on the way)."""
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
    keep: set[int] = set()
    todo = [tensor]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        index = producers.get(name)
        if index is not None and index not in keep:
            keep.add(index)
            todo += [t for t in graph.node[index].input if t]
    return keep, seen


def find_branch(model: onnx.ModelProto, head: Head, trainable: tuple[str, ...]) -> Branch | None:
    """The layers ``trainable`` names before the last linear layer, and where to cut (None: none named).

    The cut is the one tensor every path into those layers passes through: naming a layer inside
    a residual block moves the cut back to the block's input, so the skip path trains with it.
    """
    extra = tuple(name for name in dict.fromkeys(trainable) if name not in head.params)
    if not extra:
        return None
    graph = model.graph
    const = constants(model)
    floats = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    if [name for name in extra if name not in floats]:
        bad = ", ".join(name for name in extra if name not in floats)
        raise UsageError(f"--trainable {bad}: not a float32 weight initializer; only those can train")
    before, _ = ancestors(graph, head.embedding)
    used = {name for i in before for name in graph.node[i].input}
    unused = [name for name in extra if name not in used]
    if unused:
        raise UsageError(
            f"--trainable {', '.join(unused)}: not used to compute the last linear layer's input "
            f"{head.embedding!r}; candidates: {_describe_candidates(model)}"
        )
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
    region = {i for i in before if set(graph.node[i].input) & set(extra)}
    for i in sorted(before):  # graph order is topological: one pass finds every descendant
        if any(producers.get(t) in region for t in graph.node[i].input):
            region.add(i)
    while True:
        inputs = {t for i in region for t in graph.node[i].input if t and t not in const}
        entering = {t for t in inputs if producers.get(t) not in region}
        if len(entering) <= 1:
            break
        inner = [t for t in entering if t in producers]
        if not inner:
            raise ModelError(
                f"the layers {', '.join(extra)} read more than one model input; cannot cut there"
            )
        region.add(producers[max(inner, key=producers.__getitem__)])  # step back past the latest
    if not entering:
        raise ModelError(f"the layers {', '.join(extra)} do not depend on the image input")
    subgraphs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    for node in (graph.node[i] for i in region):
        if any(a.type in subgraphs for a in node.attribute):
            raise ModelError(f"node {node.name or node.op_type!r} holds a subgraph; cannot train through it")
    return Branch(entering.pop(), tuple(sorted(region)), extra)


def split_backbone(model: onnx.ModelProto, head: Head, branch: Branch | None = None) -> onnx.ModelProto:
    """The part of ``model`` that computes the embedding, as output "embedding" ``[N, D]``.

    The embedding is ``head.embedding``, or with a ``branch`` its cut tensor flattened (its width
    is then left symbolic "D"; make_updatable measures it).
    """
    graph = model.graph
    tensor = branch.cut if branch is not None else head.embedding
    keep, seen = ancestors(graph, tensor)
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits and i.name in seen | {tensor}]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelError(f"the embedding must depend on exactly one image input; it depends on: {names}")
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for i, n in enumerate(graph.node) if i in keep]
    produced = {out for node in nodes for out in node.output}
    for reserved in ("embedding", "label", "probabilities"):
        if reserved in produced and reserved != tensor:
            raise ModelError(f"the model already has a tensor named {reserved!r}; rename it and try again")
    image = onnx.ValueInfoProto.FromString(inputs[0].SerializeToString())
    dims = image.type.tensor_type.shape.dim
    if image.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ModelError(f"input {image.name!r} is not float32; only float image inputs are supported")
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
        dims[0].dim_param = "N"  # a batch fixed at 1 would make every update one image per run
        region = [graph.node[i] for i in branch.nodes] if branch is not None else []
        for node in [*nodes, *region]:  # Reshape([1, -1]) would then fold the batch: copy dim 0 instead
            if node.op_type == "Reshape":
                _unfix_batch(node, graph)
    if branch is not None:
        nodes.append(helper.make_node("Flatten", [tensor], ["embedding"], name="mlp_embedding", axis=1))
    elif tensor != "embedding":
        nodes.append(helper.make_node("Identity", [tensor], ["embedding"], name="mlp_embedding"))
    used = {t for node in nodes for t in node.input}
    initializers = [t for t in graph.initializer if t.name in used]
    dim: int | str = int(head.weight.shape[1]) if branch is None else "D"
    out = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])
    infos = [v for v in graph.value_info if v.name in produced]
    backbone_graph = helper.make_graph(nodes, "backbone", [image], [out], initializers, value_info=infos)
    backbone = helper.make_model(backbone_graph, opset_imports=list(model.opset_import))
    backbone.ir_version = model.ir_version
    return backbone


def _unfix_batch(node: onnx.NodeProto, graph: onnx.GraphProto) -> None:
    for init in graph.initializer:
        if init.name == node.input[1]:
            shape = numpy_helper.to_array(init)
            if shape.ndim == 1 and len(shape) >= 2 and shape[0] == 1:
                shape = shape.copy()
                shape[0] = 0  # 0 = "same as the input's dim" (allowzero is 0 by default)
                init.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), init.name))

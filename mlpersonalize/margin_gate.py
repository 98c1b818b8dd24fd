"""The margin gate of a brought model: new labels give way wherever the brought model is sure.

A brought model comes without the data of its labels, so nothing an update sees tells a new
row where those labels' inputs lie. What the model itself does tell is how sure it is: its own
inputs get a wide margin between its best and second-best logit, while inputs of labels it
never learned get a narrow one (the max-logit baseline of out-of-distribution detection). So
the backbone of a brought package also outputs ``relu(margin - t)`` for a ladder of thresholds
``t``, computed with the brought head's own (frozen) weights, and every row an update adds gets
a steep negative weight on the rung just above most of its examples' margins: it keeps those
examples and gives way on any input the brought model is clearly surer of. The brought rows
weigh these features 0, so their decision function is bit-for-bit the model's.

The features are appended to the embedding, so ``head.onnx``, ``model.onnx`` and ONNX Runtime
training see an ordinary ``[C, D + J + 1]`` linear head; only the update loop knows that the
last ``J`` embedding columns are the gate, whose weights it sets instead of training them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import ModelError
from .manifest import DISTANCE_COLUMNS, OWN_COLUMNS

# Thresholds: the brought head's median margin on noise images times 2**(k/4), from 1/8 to 16
# times it. A rung per quarter octave keeps the chosen threshold within 19% above the wanted one.
LADDER = tuple(2.0 ** (k / 4) for k in range(-12, 17))
# A new row's gate rung: the margin below which this share of the added labels' examples lie
# (measured on tests/test_byo.py's architectures: 0.8 keeps ≥ 0.99 of the brought labels'
# predictions on three of four; "all examples" lets an outlier open the gate wide).
QUANTILE = 0.8
STEEPNESS = 100.0  # logits a new row loses per logit of margin above its rung: a near-hard gate
# The distance features (DISTANCE_COLUMNS, manifest.py; packages made since they exist, see
# ``record``): the brought head's best logit and the embedding's squared length, after the rungs.
# With them an added row can score ``best + k * (r**2 - |e - mean|**2)``: it wins exactly inside a
# ball around its examples' mean, whatever the brought head's scale (see heads/linear.py's
# ``distance_rows``). With examples of every brought label (make-updatable --examples), one more
# (OWN_COLUMNS): the squared distance to the nearest of them ("mlp_gate.own"), so an added row can
# win only where its examples' mean is nearer than a share of that.


def margins(emb: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Best minus second-best logit of the head ``(weight, bias)`` for each embedding."""
    scores = np.asarray(emb, np.float32) @ np.asarray(weight, np.float32).T + bias
    top = np.sort(scores, axis=1)
    return top[:, -1] - top[:, -2]


def ladder(noise_emb: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> tuple[float, ...]:
    """The thresholds for a head: its median margin on noise embeddings times LADDER."""
    if weight.shape[0] < 2 or not len(noise_emb):
        return ()  # one output has no margin
    unit = float(np.median(margins(noise_emb, weight, bias)))
    if not np.isfinite(unit) or unit <= 0:
        unit = 1.0
    return tuple(float(np.float32(unit * step)) for step in LADDER)


def gate_parts(
    source: str, target: str, weight: np.ndarray, bias: np.ndarray, thresholds: tuple[float, ...]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing ``target`` = relu(margin - t) per threshold from the embedding ``source``."""
    inits = [
        numpy_helper.from_array(np.asarray(weight, np.float32), "mlp_gate.weight"),
        numpy_helper.from_array(np.asarray(bias, np.float32), "mlp_gate.bias"),
        numpy_helper.from_array(np.array([2], np.int64), "mlp_gate.k"),
        numpy_helper.from_array(np.array([0], np.int64), "mlp_gate.first"),
        numpy_helper.from_array(np.array([1], np.int64), "mlp_gate.second"),
        numpy_helper.from_array(np.array(thresholds, np.float32), "mlp_gate.thresholds"),
    ]
    nodes = [
        helper.make_node("Gemm", [source, "mlp_gate.weight", "mlp_gate.bias"], ["mlp_gate.logits"], transB=1),
        helper.make_node("TopK", ["mlp_gate.logits", "mlp_gate.k"], ["mlp_gate.top", "mlp_gate.at"], axis=1),
        helper.make_node("Gather", ["mlp_gate.top", "mlp_gate.first"], ["mlp_gate.best"], axis=1),
        helper.make_node("Gather", ["mlp_gate.top", "mlp_gate.second"], ["mlp_gate.next"], axis=1),
        helper.make_node("Sub", ["mlp_gate.best", "mlp_gate.next"], ["mlp_gate.margin"]),
        helper.make_node("Sub", ["mlp_gate.margin", "mlp_gate.thresholds"], ["mlp_gate.over"]),
        helper.make_node("Relu", ["mlp_gate.over"], [target]),
    ]
    return nodes, inits


def distance_parts(source: str, dim: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing "mlp_gate.sq" ``[N, 1]``, the squared length of ``source`` (after gate_parts,
    whose "mlp_gate.best" is the other distance feature). Mul and MatMul: the same in every opset."""
    inits = [numpy_helper.from_array(np.ones((dim, 1), np.float32), "mlp_gate.ones")]
    nodes = [
        helper.make_node("Mul", [source, source], ["mlp_gate.squares"]),
        helper.make_node("MatMul", ["mlp_gate.squares", "mlp_gate.ones"], ["mlp_gate.sq"]),
    ]
    return nodes, inits


def own_parts(source: str, own: np.ndarray) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing "mlp_gate.own" ``[N, 1]``: the squared distance from ``source`` to the nearest
    row of ``own`` (|e|**2 - 2 e.x + |x|**2, after distance_parts' "mlp_gate.sq"; the smallest via
    TopK of its negation, whose form is the same in opsets 11-21, unlike ReduceMin's)."""
    own = np.asarray(own, np.float32)
    lengths = (own.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(-2.0 * own.T), "mlp_gate.own_t"),
        numpy_helper.from_array(lengths, "mlp_gate.own_sq"),
        numpy_helper.from_array(np.array([1], np.int64), "mlp_gate.one"),
    ]
    nodes = [
        helper.make_node("MatMul", [source, "mlp_gate.own_t"], ["mlp_gate.own_dot"]),
        helper.make_node("Add", ["mlp_gate.own_dot", "mlp_gate.own_sq"], ["mlp_gate.own_part"]),
        helper.make_node("Add", ["mlp_gate.own_part", "mlp_gate.sq"], ["mlp_gate.own_all"]),
        helper.make_node("Neg", ["mlp_gate.own_all"], ["mlp_gate.own_neg"]),
        helper.make_node(
            "TopK", ["mlp_gate.own_neg", "mlp_gate.one"], ["mlp_gate.own_top", "mlp_gate.own_at"]
        ),
        helper.make_node("Neg", ["mlp_gate.own_top"], ["mlp_gate.own_raw"]),
        helper.make_node("Relu", ["mlp_gate.own_raw"], ["mlp_gate.own"]),  # round-off below 0
    ]
    return nodes, inits


def own_distance(emb: np.ndarray, own: np.ndarray) -> np.ndarray:
    """What ``own_parts`` computes, in numpy: ``[N]`` squared distances to the nearest row of ``own``."""
    emb, own = np.asarray(emb, np.float64), np.asarray(own, np.float64)
    near = (emb**2).sum(axis=1)[:, None] - 2 * emb @ own.T + (own**2).sum(axis=1)[None]
    return np.maximum(near.min(axis=1), 0.0)


def add_to_backbone(
    backbone: onnx.ModelProto,
    weight: np.ndarray,
    bias: np.ndarray,
    thresholds: tuple[float, ...],
    distance: bool = False,
    own: np.ndarray | None = None,
) -> onnx.ModelProto:
    """``backbone`` whose "embedding" output gains ``len(thresholds)`` gate features, and with
    ``distance`` the two distance features after them, and with ``own`` (embeddings of the
    brought labels' examples, needs ``distance``) the squared distance to the nearest of them."""
    if not thresholds:
        return backbone
    graph = backbone.graph
    out = graph.output[0]
    dim = int(weight.shape[1])
    names = {name for node in graph.node for name in [*node.input, *node.output]}
    if any(name.startswith("mlp_gate.") for name in names):
        raise ModelError("the model has tensors named mlp_gate.*; rename them and try again")
    rename = {out.name: "mlp_gate.in"}  # the embedding so far feeds the gate and the concatenation
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename.get(name, name) for name in node.output]
    for info in graph.value_info:
        info.name = rename.get(info.name, info.name)
    nodes, inits = gate_parts("mlp_gate.in", "mlp_gate.features", weight, bias, thresholds)
    blocks = ["mlp_gate.in", "mlp_gate.features"]
    if distance:
        more_nodes, more_inits = distance_parts("mlp_gate.in", dim)
        nodes += more_nodes
        inits += more_inits
        blocks += ["mlp_gate.best", "mlp_gate.sq"]
        if own is not None:
            more_nodes, more_inits = own_parts("mlp_gate.in", own)
            nodes += more_nodes
            inits += more_inits
            blocks.append("mlp_gate.own")
    nodes.append(helper.make_node("Concat", blocks, [out.name], axis=1))
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    width = dim + len(thresholds) + (DISTANCE_COLUMNS if distance else 0)
    width += OWN_COLUMNS if distance and own is not None else 0
    widened = helper.make_tensor_value_info(out.name, TensorProto.FLOAT, ["N", width])
    graph.output[0].CopyFrom(widened)
    return backbone


def strip_embeddings(emb: np.ndarray, dim: int) -> np.ndarray:
    """Embeddings ``[N, dim + J]`` without the gate features: what the head trains on."""
    return np.ascontiguousarray(np.asarray(emb, np.float32)[:, :dim])


def strip_rows(aug: np.ndarray, dim: int) -> np.ndarray:
    """Head rows ``[C, dim + J + 1]`` without their gate weights: ``[C, dim + 1]``."""
    aug = np.asarray(aug, np.float32)
    return np.ascontiguousarray(np.concatenate([aug[:, :dim], aug[:, -1:]], axis=1))


def rungs(
    emb: np.ndarray,
    idx: np.ndarray,
    frozen: np.ndarray,
    thresholds: tuple[float, ...],
    renewed: set[int],
    previous: list[int | None],
) -> list[int | None]:
    """The gate rung of each added row (``len(frozen)`` on): one for the labels this update taught.

    The rows in ``renewed`` (labels with examples in this update) share the lowest threshold above
    QUANTILE of those examples' margins (``emb`` real embeddings without gate columns, ``idx``
    their rows, ``frozen`` the brought rows ``[F, D + 1]``); None when no threshold is that high
    (the examples look like the brought labels' own inputs to the model: no gate). Rows this update
    has no examples of keep the rung an earlier update gave them (``previous``, one per added row).
    """
    chosen: int | None = None
    mine = np.isin(idx, sorted(renewed))
    if thresholds and mine.any():
        level = float(np.quantile(margins(emb[mine], frozen[:, :-1], frozen[:, -1]), QUANTILE))
        chosen = next((i for i, t in enumerate(thresholds) if t >= level), None)
    start = len(frozen)
    return [chosen if row in renewed else step for row, step in enumerate(previous, start=start)]


def rungs_of(aug: np.ndarray, frozen_rows: int, dim: int, columns: int) -> list[int | None]:
    """The rung each added row of a head ``[C, dim + J + 1]`` weighs (None: not gated)."""
    gates = np.asarray(aug)[frozen_rows:, dim : dim + columns]
    return [int(np.flatnonzero(row)[0]) if row.any() else None for row in gates]


def attach(core: np.ndarray, original: np.ndarray, rungs: list[int | None], columns: int) -> np.ndarray:
    """Head rows ``[C, D + J + 1]`` from trained rows ``[C, D + 1]`` and the added rows' rungs.

    Brought rows come back exactly as ``original`` had them (weight 0 on every gate feature);
    every added row weighs its rung ``-STEEPNESS`` and the rest 0.
    """
    core = np.asarray(core, np.float32)
    frozen_rows = len(core) - len(rungs)
    gates = np.zeros((len(core), columns), np.float32)
    for row, step in enumerate(rungs, start=frozen_rows):
        if step is not None:
            gates[row, step] = -STEEPNESS
    out = np.concatenate([core[:, :-1], gates, core[:, -1:]], axis=1)
    out[:frozen_rows] = original[:frozen_rows]
    return out


def record(thresholds: tuple[float, ...], distance: bool = False, own: int = 0) -> dict[str, Any]:
    """What the manifest keeps about the gate (the update loop reads it back); ``own``: how many
    examples the own-distance feature measures to (0: none)."""
    out: dict[str, Any] = {"thresholds": list(thresholds), "quantile": QUANTILE, "steepness": STEEPNESS}
    if distance:
        out["distance"] = True
        if own:
            out["own_examples"] = int(own)
    return out

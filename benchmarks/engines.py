"""Training time of the two engines on the same head and the same mini-batches, same run.

Run ``python -m benchmarks.engines [--repeats N]``. Data: the bundled doodles model's cosine head
(43 rows, 256-d) with 3 imprinted rows, and its exemplar memory's embeddings (860). Three
bundled labels' exemplars (3 each) stand in for the new labels' examples: the step time does
not depend on what the numbers are. The linear head is the brought-model kind: the same rows
as ``[W | b]`` with the 43 old rows frozen (``heads.linear.build_head``).

Cases: the seed's update (the rehearsal set first, then 9 new examples, each epoch drawn by
``fitting.EpochPlan`` as an update draws it, batch 16, 10 epochs, as many trainings as the
update's history lists: 3, 870 steps) and 1,000 examples x 10 epochs. Each engine is timed from
opening (building its graphs or artifacts; the ORT engine builds its models once per head shape
and process, so its median open is the cached one) and over the steps alone; the ratio is of
the steps' times. The ORT engine needs onnxruntime-training-cpu; without it only the portable
engine is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from mlpersonalize.engines.portable import NEXT, PortableEngine, build_train_step
from mlpersonalize.fitting import EpochPlan
from mlpersonalize.heads import StoredHead
from mlpersonalize.heads import linear as linear_head
from mlpersonalize.heads.cosine import WEIGHT, CosineHead, head_weight, imprint
from mlpersonalize.params import UpdateParams


def OrtReference(head: onnx.ModelProto, trainable: Sequence[str], params: UpdateParams) -> Any:
    """ONNX Runtime's on-device training over ``head`` (the "ort" engine's session)."""
    from mlpersonalize.engines.ort import ENGINE

    return ENGINE.open(head, trainable, params)


def ort_available() -> bool:
    from mlpersonalize import _ort

    return _ort.has_training()


def bundled_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(head weight [43, 256], exemplar embeddings [860, 256], their labels)."""
    from mlpersonalize.package import load_package
    from mlpersonalize.store import bundled_model_path

    package = load_package(bundled_model_path())
    emb, idx = package.exemplars()
    return head_weight(onnx.load(str(package.path / "head.onnx"))), emb, idx


def cases(weight: np.ndarray, emb: np.ndarray, idx: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The heads and batch sequences to time."""
    rng = np.random.default_rng(seed)
    old = len(weight)
    new_emb = np.concatenate([emb[idx == k][:3] for k in range(3)])
    new_idx = np.repeat(np.arange(old, old + 3), 3)
    rows = imprint(new_emb, new_idx, list(range(old, old + 3)))
    cosine = np.concatenate([weight, rows])
    aug = np.concatenate([cosine, np.zeros((len(cosine), 1), np.float32)], axis=1)
    heads = {
        "cosine": (CosineHead.graph(StoredHead(cosine, 20.0)), [WEIGHT]),
        "linear": (linear_head.build_head(aug, old), [linear_head.WEIGHT, linear_head.BIAS]),
    }
    all_emb = np.concatenate([emb, new_emb]).astype(np.float32)
    all_idx = np.concatenate([idx, new_idx]).astype(np.int64)

    def batches(
        e: np.ndarray, i: np.ndarray, rehearsed: int, trainings: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        plan = EpochPlan.of(i, rehearsed)
        out = []
        for _ in range(trainings):
            for epoch in range(UpdateParams().epochs):
                order = plan.order(epoch, rng)
                out += [(e[order[s : s + 16]], i[order[s : s + 16]]) for s in range(0, len(order), 16)]
        return out

    picked = rng.integers(0, len(all_emb), 1000)  # 1,000 examples drawn from the same data
    shuffled = []
    for _ in range(10):
        order = picked[rng.permutation(1000)]
        shuffled += [(all_emb[order[s : s + 16]], all_idx[order[s : s + 16]]) for s in range(0, 1000, 16)]
    return {
        "heads": heads,
        "batches": {
            f"seed update (3 trainings x {UpdateParams().epochs} epochs)": batches(
                all_emb, all_idx, len(emb), 3
            ),
            "1,000 examples x 10 epochs": shuffled,
        },
    }


def time_engine(
    make: Any, head: onnx.ModelProto, trainable: list[str], params: UpdateParams, batches: list
) -> tuple[float, float]:
    """(seconds to open, seconds for the steps)."""
    start = time.perf_counter()
    session = make(head, trainable, params)
    opened = time.perf_counter()
    for x, y in batches:
        session.step(x, y)
    done = time.perf_counter()
    session.close()
    return opened - start, done - opened


def carry_only(step: onnx.ModelProto) -> onnx.ModelProto:
    """A graph with the portable step's inputs and outputs that does no arithmetic: each ``p.next``
    is an Identity of ``p``, the loss the learning rate. What a step costs to feed in and fetch out
    the parameters and optimizer state (and to run one ``InferenceSession.run``)."""
    graph = step.graph
    outputs = [o.name for o in graph.output]
    nodes = [
        helper.make_node("Identity", [name[: -len(NEXT)]], [name]) for name in outputs if name.endswith(NEXT)
    ]
    loss = next(name for name in outputs if not name.endswith(NEXT))
    nodes.append(helper.make_node("ReduceSum", ["learning_rate"], [loss], keepdims=0))
    model = helper.make_model(
        helper.make_graph(nodes, "carry_only", list(graph.input), list(graph.output)),
        opset_imports=list(step.opset_import),
    )
    model.ir_version = step.ir_version
    return model


def breakdown(data: dict[str, Any], params: UpdateParams, repeats: int) -> None:
    """Why the engines' steps differ: graph sizes, and the portable step's cost with no arithmetic."""
    from mlpersonalize import _ort

    case, batches = next(iter(data["batches"].items()))
    print(f"\nbreakdown over the {case} case ({len(batches)} steps), median of {repeats}:")
    print(f"{'head':8} {'portable nodes':>14} {'ort nodes':>9} ", end="")
    print(f"{'carry us/step':>13} {'step us/step':>12} {'carry share':>11}")
    for head_name, (head, trainable) in data["heads"].items():
        step = build_train_step(head, trainable, params)
        ort_nodes = "-"
        if ort_available():
            from mlpersonalize.engines.ort import MODELS

            folder = MODELS.models(head, trainable, params)
            ort_nodes = str(
                sum(
                    len(onnx.load(str(folder / f)).graph.node)
                    for f in ("training_model.onnx", "optimizer_model.onnx")
                )
            )
        carry = _ort.inference_session(carry_only(step).SerializeToString(), 1)
        runs: dict[str, list[float]] = {"carry": [], "step": []}
        for _ in range(repeats):
            for kind in runs:
                session = PortableEngine().open(head, trainable, params)
                if kind == "carry":  # the same bindings and Python path, no arithmetic
                    session._session = carry
                    session.bind()
                start = time.perf_counter()
                for x, y in batches:
                    session.step(x, y)
                runs[kind].append(time.perf_counter() - start)
                session.close()
        us = {kind: statistics.median(times) / len(batches) * 1e6 for kind, times in runs.items()}
        print(
            f"{head_name:8} {len(step.graph.node):14d} {ort_nodes:>9} {us['carry']:13.1f} {us['step']:12.1f} "
            f"{us['carry'] / us['step']:11.0%}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timings per engine and case (median shown)")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also: graph sizes and the portable step's cost with no arithmetic",
    )
    args = parser.parse_args(argv)
    weight, emb, idx = bundled_data()
    data = cases(weight, emb, idx)
    params = UpdateParams()
    engines: dict[str, Any] = {"portable": PortableEngine().open}
    if ort_available():
        engines["ort"] = OrtReference
    else:
        print("onnxruntime-training-cpu is not installed: timing the portable engine only")
    print(f"{'head':8} {'case':38} {'steps':>5} {'engine':8} {'open s':>7} {'steps s':>8} {'ms/step':>8}")
    for head_name, (head, trainable) in data["heads"].items():
        for case, batches in data["batches"].items():
            runs: dict[str, list[tuple[float, float]]] = {engine: [] for engine in engines}
            for _ in range(args.repeats):  # engines alternate, so load on the machine hits both
                for engine, make in engines.items():
                    runs[engine].append(time_engine(make, head, trainable, params, batches))
            times = {}
            for engine, timings in runs.items():
                opened = statistics.median(r[0] for r in timings)
                stepped = statistics.median(r[1] for r in timings)
                times[engine] = stepped
                print(
                    f"{head_name:8} {case:38} {len(batches):5d} {engine:8} {opened:7.3f} {stepped:8.3f} "
                    f"{stepped / len(batches) * 1000:8.3f}"
                )
            if "ort" in times:
                print(f"{'':8} {'':38} {'':5} portable/ort steps: {times['portable'] / times['ort']:.2f}x")
    if args.breakdown:
        breakdown(data, params, args.repeats)


if __name__ == "__main__":
    main()

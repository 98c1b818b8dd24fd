"""Small real-architecture classifiers built with the onnx helper API, "trained" on the spot.

Each model's convolutional / hidden part has random-but-fixed weights; its last linear layer is
fitted by ridge regression on synthetic gratings (one orientation and period per class), so the
model really knows its OLD classes. Shared by tests/test_byo.py and test_cli_make_updatable.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mlpersonalize import _ort

SIZE = 16
# (kind, angle, period) per class: the first four are the model's own labels, the last two new.
SPECS = [
    ("grating", 0.0, 4.0),
    ("grating", np.pi / 2, 4.0),
    ("grating", np.pi / 4, 6.0),
    ("grating", 3 * np.pi / 4, 6.0),
    ("checker", 0.0, 8.0),
    ("grating", np.pi / 2, 12.0),
]
OLD = [0, 1, 2, 3]
NEW = [4, 5]


def gratings(
    classes: list[int], per_class: int, channels: int = 1, seed: int = 0, jitter: float = np.pi
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 examples (N, SIZE, SIZE, channels) of the classes' gratings, noisy, random phase."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    images, ids = [], []
    for k in classes:
        kind, angle, period = SPECS[k]
        for _ in range(per_class):
            a = angle + rng.normal(0, 0.08)
            phase = rng.uniform(-jitter, jitter)
            wave = np.cos(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period + phase)
            if kind == "checker":
                other = np.cos(
                    2 * np.pi * (yy * np.cos(a) - xx * np.sin(a)) / period + rng.uniform(-jitter, jitter)
                )
                wave = np.sign(wave * other)
            img = 128 + 90 * wave + rng.normal(0, 20, wave.shape)
            gains = 1 + rng.normal(0, 0.05, channels)
            images.append(np.clip(img[:, :, None] * gains, 0, 255).astype(np.uint8))
            ids.append(k)
    return np.stack(images), np.array(ids)


def to_input(pixels: np.ndarray, layout: str = "nchw") -> np.ndarray:
    x = pixels.astype(np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "nchw" else x)


class _Net:
    """Accumulates nodes and initializers with fixed random weights."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, value: np.ndarray, name: str) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        self.n += 1
        out = f"{op.lower()}{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, stride: int = 1) -> str:
        fan = cin // group * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan)).astype(np.float32)
        name = self.const(w, f"conv{self.n + 1}.weight")
        return self.node(
            "Conv", [x, name], kernel_shape=[k, k], pads=[k // 2] * 4, group=group, strides=[stride] * 2
        )

    def bn(self, x: str, c: int) -> str:
        p = self.n + 1
        scale = self.const((1 + 0.1 * self.rng.standard_normal(c)).astype(np.float32), f"bn{p}.scale")
        bias = self.const((0.1 * self.rng.standard_normal(c)).astype(np.float32), f"bn{p}.bias")
        mean = self.const((0.1 * self.rng.standard_normal(c)).astype(np.float32), f"bn{p}.mean")
        var = self.const((1 + 0.1 * self.rng.random(c)).astype(np.float32), f"bn{p}.var")
        return self.node("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-5)

    def relu6(self, x: str) -> str:
        lo = self.const(np.array(0, np.float32), f"clip{self.n + 1}.min")
        hi = self.const(np.array(6, np.float32), f"clip{self.n + 1}.max")
        return self.node("Clip", [x, lo, hi])

    def model(self, inp: onnx.ValueInfoProto, out: str, dims: list, opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "net",
            [inp],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, dims)],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return model


def mobilenet(net: _Net, x: str) -> tuple[str, int]:
    """Conv-BN-ReLU6, depthwise Conv(group=C)-BN-ReLU6, pointwise Conv-BN-ReLU, GAP, Flatten."""
    x = net.relu6(net.bn(net.conv(x, 3, 16), 16))
    x = net.relu6(net.bn(net.conv(x, 16, 16, group=16), 16))
    x = net.node("Relu", [net.bn(net.conv(x, 16, 32, k=1), 32)])
    return net.node("Flatten", [net.node("GlobalAveragePool", [x])]), 32


def resnet(net: _Net, x: str) -> tuple[str, int]:
    """Stem Conv-BN-Relu, one basic block (Conv-BN-Relu-Conv-BN + skip Add, Relu), GAP, Flatten."""
    stem = net.node("Relu", [net.bn(net.conv(x, 1, 24), 24)])
    y = net.node("Relu", [net.bn(net.conv(stem, 24, 24), 24)])
    y = net.bn(net.conv(y, 24, 24), 24)
    x = net.node("Relu", [net.node("Add", [y, stem])])
    return net.node("Flatten", [net.node("GlobalAveragePool", [x])]), 24


def mlp(net: _Net, x: str) -> tuple[str, int]:
    """Flatten, MatMul + Add, Relu: a random hidden layer of 128 units."""
    flat = net.node("Flatten", [x])
    w = net.const((net.rng.standard_normal((SIZE * SIZE, 128)) / SIZE).astype(np.float32), "hidden.weight")
    b = net.const(np.zeros(128, np.float32), "hidden.bias")
    return net.node("Relu", [net.node("Add", [net.node("MatMul", [flat, w]), b])]), 128


def nhwc(net: _Net, x: str) -> tuple[str, int]:
    """Transpose NHWC → NCHW, then Conv-Relu, GAP, Flatten."""
    x = net.node("Transpose", [x], perm=[0, 3, 1, 2])
    x = net.node("Relu", [net.conv(x, 3, 24)])
    return net.node("Flatten", [net.node("GlobalAveragePool", [x])]), 24


ARCHS: dict[str, tuple[Callable[[_Net, str], tuple[str, int]], int, str, str]] = {
    # name: (body, channels, layout, head style)
    "mobilenet": (mobilenet, 3, "nchw", "gemm+softmax"),
    "resnet": (resnet, 1, "nchw", "gemm+softmax"),
    "mlp": (mlp, 1, "nchw", "matmul+add+softmax"),
    "nhwc": (nhwc, 3, "nhwc", "gemm"),
}


def build(arch: str, seed: int = 0, opset: int = 17, batch: int | str = "N") -> onnx.ModelProto:
    """The trained classifier: body with random weights, last layer fitted to the OLD classes."""
    body, channels, layout, style = ARCHS[arch]
    shape = [batch, channels, SIZE, SIZE] if layout == "nchw" else [batch, SIZE, SIZE, channels]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)
    net = _Net(seed)
    feat, dim = body(net, "input")
    features = net.model(inp, feat, ["N", dim])
    pixels, ids = gratings(OLD, 40, channels, seed=seed + 1, jitter=np.pi if arch != "mlp" else 0.3)
    session = _ort.inference_session(features.SerializeToString())
    emb = session.run(None, {"input": to_input(pixels, layout)})[0]
    mu, sd = emb.mean(0), emb.std(0) + 1e-6
    z = np.concatenate([(emb - mu) / sd, np.ones((len(emb), 1))], axis=1)  # standardised: a fair ridge
    target = np.eye(len(OLD))[ids] * 2 - 1
    sol = np.linalg.solve(z.T @ z + 1.0 * np.eye(z.shape[1]), z.T @ target)
    weight = (sol[:-1] / sd[:, None]).astype(np.float32)  # [D, C], undoing the standardisation
    bias = (sol[-1] - mu @ (sol[:-1] / sd[:, None])).astype(np.float32)
    if style.startswith("gemm"):
        w = net.const(weight.T.copy(), "fc.weight")
        logits = net.node("Gemm", [feat, w, net.const(bias, "fc.bias")], transB=1)
    else:
        logits = net.node(
            "Add", [net.node("MatMul", [feat, net.const(weight, "fc.weight")]), net.const(bias, "fc.bias")]
        )
    out = net.node("Softmax", [logits], axis=1) if style.endswith("softmax") else logits
    return net.model(inp, out, ["N", len(OLD)], opset)


def predict(
    model: onnx.ModelProto | str, pixels: np.ndarray, layout: str, output: str | None = None
) -> np.ndarray:
    """Argmax of a model's first (or named) output on uint8 examples."""
    source = model if isinstance(model, str) else model.SerializeToString()
    session = _ort.inference_session(source)
    name = session.get_inputs()[0].name
    out = session.run([output] if output else None, {name: to_input(pixels, layout)})[0]
    return np.asarray(out).reshape(len(pixels), -1).argmax(1)


@dataclass
class Measured:
    """One make-updatable + update run on an architecture, and what it kept and learned."""

    model: onnx.ModelProto
    made: Path  # the package make-updatable wrote
    out: Path  # the package after the update
    update: object  # updater.UpdateResult
    old_input: np.ndarray  # held-out examples of the OLD classes, as the model's input
    original: np.ndarray  # the brought model's predictions on them
    probabilities: np.ndarray  # the updated package's on them
    embedding: np.ndarray  # the updated package's embeddings of them
    retention: float  # share of the brought model's predictions kept
    learned: float  # share of held-out examples of the NEW classes labelled right


# Earlier layers each architecture's branch test trains (make-updatable --trainable): the last
# conv or hidden layer, with a batch norm's scale; in the ResNet a conv inside the residual block.
BRANCH = {
    "mobilenet": ("conv7.weight", "bn8.scale", "fc.weight", "fc.bias"),
    "resnet": ("conv7.weight",),
    "mlp": ("hidden.weight", "hidden.bias"),
    "nhwc": ("conv2.weight",),
}


def measure(
    arch: str,
    folder: Path,
    seed: int = 0,
    batch_seed: int = 7,
    per_class: int = 5,
    trainable: tuple[str, ...] = (),
) -> Measured:
    """Make ``arch`` (built with ``seed``) updatable in ``folder`` (training ``trainable``), update
    it with ``per_class`` examples of each NEW class (drawn with ``batch_seed``), and measure on
    30 held-out examples a class.
    """
    from mlpersonalize import updater
    from mlpersonalize.batch import Batch, save_batch
    from mlpersonalize.byo import ByoOptions, make_updatable
    from mlpersonalize.manifest import MODEL_FILE
    from mlpersonalize.package import load_package

    _, channels, layout, _ = ARCHS[arch]
    jitter = 0.3 if arch == "mlp" else np.pi  # the MLP is not shift-invariant: gratings in phase
    model = build(arch, seed)
    onnx.save(model, folder / "m.onnx")
    made = make_updatable(folder / "m.onnx", folder / "pkg", ByoOptions(trainable=trainable)).path
    pixels, ids = gratings(NEW, per_class, channels, seed=batch_seed, jitter=jitter)
    names = tuple(f"new{k}" for k in ids)
    save_batch(folder / "b.npz", Batch.from_pixels(pixels, names, load_package(made).manifest), force=True)
    update = updater.update([folder / "b.npz"], updater.UpdateOptions(model=made, output=folder / "out"))
    out = load_package(folder / "out")
    old, _ = gratings(OLD, 30, channels, seed=99 + seed, jitter=jitter)
    new, new_ids = gratings(NEW, 30, channels, seed=98 + seed, jitter=jitter)
    original = predict(model, old, layout)
    session = _ort.inference_session(out.path / MODEL_FILE)
    x = to_input(old, layout)
    probs, emb = session.run(["probabilities", "embedding"], {session.get_inputs()[0].name: x})
    after_new = predict(str(out.path / MODEL_FILE), new, layout, "probabilities")
    learned = np.mean([out.manifest.labels[p] == f"new{k}" for p, k in zip(after_new, new_ids, strict=True)])
    retention = float(np.mean(probs.argmax(1) == original))
    return Measured(model, made, out.path, update, x, original, probs, emb, retention, float(learned))


def main(seeds: int = 5, branch: bool = False) -> None:
    """Print retention / new-label accuracy per architecture over ``seeds`` batches (and bodies).

    Run: ``.venv/bin/python tests/byo_models.py [SEEDS] [branch]``. The first table varies only the
    update's batch (the test's model); the second also the random body of each architecture.
    With "branch", the layers in BRANCH train too.
    """
    import tempfile

    for title, vary_model in (("batch seeds 7..", False), ("model and batch seeds", True)):
        print(f"{title}: old predictions kept / new labels right, per seed (min, mean)")
        for arch in ARCHS:
            runs = []
            trainable = BRANCH[arch] if branch else ()
            for i in range(seeds):
                with tempfile.TemporaryDirectory() as folder:
                    m = measure(arch, Path(folder), i if vary_model else 0, 7 + i, trainable=trainable)
                    runs.append((m.retention, m.learned))
            kept, new = np.array(runs).T
            print(
                f"  {arch:9s} kept {' '.join(f'{v:.3f}' for v in kept)} ({kept.min():.3f}, {kept.mean():.3f})"
                f"  new {' '.join(f'{v:.2f}' for v in new)} ({new.min():.2f}, {new.mean():.2f})"
            )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5, "branch" in sys.argv[2:])

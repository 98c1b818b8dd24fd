"""Train the bring-your-own-model test fixtures with PyTorch and export them to ONNX.

    .venv/bin/pip install -e '.[fixtures]'      # torch==2.13.0, CPU build
    .venv/bin/python scripts/build_byo_fixtures.py [--out tests/fixtures/byo] [--epochs N]

Four small classifiers of the kinds users bring, trained on the project's procedural doodles
(``mlpersonalize.sample.doodles``: each drawing goes through ``images.preprocess``, the same path
as ``prepare`` and ``predict``), exported with opset 17 and a dynamic batch dimension:

* ``resnet``: CNN with batch norm and residual blocks (one with a 1x1 projection), softmax output;
* ``mobilenet``: depthwise-separable convolutions, BN, ReLU6, logits output;
* ``mlp``: flattened pixels through two hidden layers, softmax output;
* ``nhwc``: an NHWC RGB input (transposed inside the model) of dark strokes on a light ground,
  32x32, logits output, as a TensorFlow-style export looks.

Every model has its own labels (named doodles) and never sees ``NEW_LABELS`` (novel doodles),
which tests and ``benchmarks/byo.py`` teach it. Pixels are scaled to 0..1. Seeds are fixed and
training runs on one thread, so a rebuild gives the same files on the same torch version.
The script writes ``<name>.onnx``, ``<name>.labels.txt`` and ``fixtures.json`` (labels, image
format, held-out accuracy measured here) into the output folder. Nothing at run time or in the
tests imports torch.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from mlpersonalize.images import ImageConstraint, to_model_input
from mlpersonalize.sample.doodles import NOVEL_LABELS, make_dataset

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "byo"
TRAIN_SEED = 101  # drawings the models are trained on
VALID_SEED = 202  # held-out drawings the reported accuracy is measured on
TRAIN_PER_LABEL = 100
VALID_PER_LABEL = 100
NEW_LABELS = NOVEL_LABELS[:5]  # never seen by any fixture: the labels an update adds


@dataclass(frozen=True)
class Spec:
    name: str
    labels: tuple[str, ...]
    constraint: ImageConstraint
    output: str  # "probabilities" (softmax inside) or "logits"
    description: str


SPECS = (
    Spec(
        "resnet",
        ("circle", "target", "clock", "sun", "smiley face", "balloon", "lollipop", "eye"),
        ImageConstraint(28, 28, "gray", ink="light"),
        "probabilities",
        "ResNet-style CNN: Conv-BN-ReLU stem, 3 residual blocks (BN, 1x1 projection), GAP, Linear, Softmax",
    ),
    Spec(
        "mobilenet",
        ("square", "triangle", "diamond", "pentagon", "hexagon", "cross", "plus", "check mark"),
        ImageConstraint(28, 28, "gray", ink="light"),
        "logits",
        "MobileNet-style: Conv-BN-ReLU6, 3 depthwise-separable blocks (dw 3x3 + pw 1x1, BN, ReLU6), "
        "GAP, Linear (logits)",
    ),
    Spec(
        "mlp",
        ("star", "heart", "moon", "cloud", "fish", "raindrop", "mushroom", "snowman"),
        ImageConstraint(28, 28, "gray", ink="light"),
        "probabilities",
        "MLP on flattened pixels: 784-64-64-C, ReLU, Softmax",
    ),
    Spec(
        "nhwc",
        ("zigzag", "wave", "infinity", "target", "flag", "clock"),
        ImageConstraint(32, 32, "rgb", ink="dark", layout="nhwc"),
        "logits",
        "NHWC RGB 32x32, dark ink on light: Transpose, 3 x (Conv-BN-ReLU), 2 MaxPool, GAP, Linear (logits)",
    ),
)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(), *_conv_bn(cout, cout))
        self.skip = (
            nn.Identity() if stride == 1 and cin == cout else nn.Sequential(*_conv_bn(cin, cout, 1, stride))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class Net(nn.Module):
    """features -> Linear; ``softmax`` appends the Softmax; ``nhwc`` transposes the input first."""

    def __init__(self, features: nn.Module, dim: int, classes: int, softmax: bool, nhwc: bool) -> None:
        super().__init__()
        self.features, self.fc = features, nn.Linear(dim, classes)
        self.softmax, self.nhwc = softmax, nhwc

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        return self.fc(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits(x)
        return torch.softmax(out, dim=1) if self.softmax else out


def build(spec: Spec) -> Net:
    c = len(spec.labels)
    pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if spec.name == "resnet":
        body = [*_conv_bn(1, 16), nn.ReLU(), Residual(16, 16, 1), Residual(16, 32, 2), Residual(32, 32, 2)]
        return Net(nn.Sequential(*body, *pool), 32, c, True, False)
    if spec.name == "mobilenet":

        def separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [*_conv_bn(cin, cin, 3, stride, cin), nn.ReLU6(), *_conv_bn(cin, cout, 1), nn.ReLU6()]

        body = [*_conv_bn(1, 16, 3, 1), nn.ReLU6(), *separable(16, 32, 2), *separable(32, 64, 2)]
        return Net(nn.Sequential(*body, *separable(64, 64, 1), *pool), 64, c, False, False)
    if spec.name == "mlp":
        hidden = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        return Net(hidden, 64, c, True, False)
    body = [*_conv_bn(3, 16), nn.ReLU(), nn.MaxPool2d(2), *_conv_bn(16, 32), nn.ReLU(), nn.MaxPool2d(2)]
    return Net(nn.Sequential(*body, *_conv_bn(32, 48), nn.ReLU(), *pool), 48, c, False, True)


def drawings(spec: Spec, per_label: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs (float32, the model's layout, 0..1) and class ids of generated drawings."""
    pixels, ids = make_dataset(spec.labels, per_label, seed, spec.constraint, workers=2)
    return to_model_input(pixels, spec.constraint), ids


def train(spec: Spec, epochs: int, per_label: int, seed: int) -> tuple[Net, float, float]:
    torch.manual_seed(seed)
    x, y = drawings(spec, per_label, TRAIN_SEED)
    xv, yv = drawings(spec, VALID_PER_LABEL, VALID_SEED)
    net = build(spec)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            loss = nn.functional.cross_entropy(net.logits(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        train_acc = float((net.logits(xt).argmax(1) == yt).float().mean())
        valid_acc = float((net.logits(torch.from_numpy(xv)).argmax(1).numpy() == yv).mean())
    return net, train_acc, valid_acc


def export(spec: Spec, net: Net, path: Path) -> None:
    c = spec.constraint
    shape = (1, c.height, c.width, c.channels) if c.layout == "nhwc" else (1, c.channels, c.height, c.width)
    warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
    torch.onnx.export(
        net,
        (torch.zeros(shape),),
        str(path),
        input_names=["image"],
        output_names=[spec.output],
        dynamic_axes={"image": {0: "batch"}, spec.output: {0: "batch"}},
        opset_version=17,
        # The residual CNN keeps its BatchNormalization nodes (as an export without constant folding
        # does); the others have BN folded into the convolutions (the exporter's default).
        do_constant_folding=spec.name != "resnet",
        dynamo=False,
    )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    model.doc_string = f"{spec.description}. Trained by scripts/build_byo_fixtures.py."
    onnx.save(model, str(path))


def check(spec: Spec, net: Net, path: Path) -> float:
    """ONNX Runtime's answers on held-out drawings match torch's; returns their accuracy."""
    x, y = drawings(spec, VALID_PER_LABEL, VALID_SEED)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    if not np.allclose(got, want, atol=1e-4, rtol=1e-3):
        raise SystemExit(f"{spec.name}: ONNX Runtime disagrees with torch (max {np.abs(got - want).max()})")
    return float((got.argmax(1) == y).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-label", type=int, default=TRAIN_PER_LABEL)
    parser.add_argument("--only", action="append", help="build only these fixtures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    index_path = args.out / "fixtures.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index.setdefault("fixtures", {})
    for i, spec in enumerate(SPECS):
        if args.only and spec.name not in args.only:
            continue
        start = time.perf_counter()
        net, train_acc, valid_acc = train(spec, args.epochs, args.per_label, seed=i)
        path = args.out / f"{spec.name}.onnx"
        export(spec, net, path)
        onnx_acc = check(spec, net, path)
        (args.out / f"{spec.name}.labels.txt").write_text("\n".join(spec.labels) + "\n", encoding="utf-8")
        c = spec.constraint
        index["fixtures"][spec.name] = {
            "file": path.name,
            "labels_file": f"{spec.name}.labels.txt",
            "labels": list(spec.labels),
            "description": spec.description,
            "input": {"width": c.width, "height": c.height, "color": c.color, "layout": c.layout},
            "ink": c.ink,
            "output": spec.output,
            "parameters": sum(p.numel() for p in net.parameters()),
            "bytes": path.stat().st_size,
            "train_accuracy": round(train_acc, 4),
            "heldout_accuracy": round(onnx_acc, 4),
        }
        print(
            f"{spec.name}: {len(spec.labels)} labels, train {train_acc:.3f}, held-out {valid_acc:.3f} "
            f"(ONNX {onnx_acc:.3f}), {path.stat().st_size / 1024:.0f} kB, "
            f"{time.perf_counter() - start:.0f} s"
        )
    index.update(
        {
            "new_labels": list(NEW_LABELS),
            "train": {"seed": TRAIN_SEED, "per_label": args.per_label, "epochs": args.epochs},
            "heldout": {"seed": VALID_SEED, "per_label": VALID_PER_LABEL},
            "torch": torch.__version__,
            "made_by": "python scripts/build_byo_fixtures.py",
        }
    )
    index_path.write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

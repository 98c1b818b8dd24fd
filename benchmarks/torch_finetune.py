"""The PyTorch baseline of `mlpersonalize update`, run as its own process (``import torch`` counts).

    python benchmarks/torch_finetune.py PACKAGE BATCH OUT.npy --epochs E --batch-size B --lr F
        [--cached] [--threads N]

The package's ``backbone.onnx`` is run with torch ops built from its ONNX nodes (weights read
with onnx.numpy_helper), frozen; the cosine head (old rows from ``head.onnx``, one random row
per new label) is fine-tuned with Adam and cross-entropy on the batch, like a PyTorch user would
write it. Default: the frozen backbone runs inside the loop every epoch (the plain way);
``--cached``: it runs once and the head trains on cached embeddings (the same algorithm as
mlpersonalize, without rehearsal, guard or package writing). The trained rows go to OUT.npy.
"""

from __future__ import annotations

import argparse
import time

T0 = time.perf_counter()

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402

T_IMPORT = time.perf_counter() - T0


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class OnnxModule(torch.nn.Module):
    """The ops a frozen drawing backbone uses, interpreted node by node with torch functions."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        self.consts = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
        self.nodes = list(graph.node)
        self.input = graph.input[0].name
        self.output = graph.output[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        v = {**self.consts, self.input: x}
        for node in self.nodes:
            a, i = _attrs(node), [v[n] if n else None for n in node.input]
            op = node.op_type
            if op == "Conv":
                pads = a.get("pads", [0, 0, 0, 0])
                out = F.conv2d(i[0], i[1], i[2] if len(i) > 2 else None, a.get("strides", 1), pads[:2])
            elif op == "Relu":
                out = F.relu(i[0])
            elif op == "MaxPool":
                out = F.max_pool2d(i[0], a["kernel_shape"], a.get("strides", a["kernel_shape"]))
            elif op == "AveragePool":
                out = F.avg_pool2d(i[0], a["kernel_shape"], a.get("strides", a["kernel_shape"]))
            elif op == "Flatten":
                out = torch.flatten(i[0], a.get("axis", 1))
            elif op == "Gemm":
                b = i[1].t() if a.get("transB", 0) else i[1]
                out = i[0] @ b + (i[2] if len(i) > 2 else 0)
            elif op == "MatMul":
                out = i[0] @ i[1]
            elif op in ("Mul", "Add", "Div"):
                out = {"Mul": torch.mul, "Add": torch.add, "Div": torch.div}[op](i[0], i[1])
            elif op == "Sqrt":
                out = torch.sqrt(i[0])
            elif op == "ReduceSum":
                out = torch.sum(i[0], dim=[int(d) for d in i[1].tolist()], keepdim=bool(a.get("keepdims", 1)))
            elif op == "LpNormalization":
                out = F.normalize(i[0], p=a.get("p", 2), dim=a.get("axis", -1))
            else:
                raise NotImplementedError(f"op {op} in the backbone")
            v[node.output[0]] = out
        return v[self.output]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("package")
    parser.add_argument("batch")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--scale", type=float, default=16.0)
    parser.add_argument("--cached", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)

    backbone = OnnxModule(onnx.load(f"{args.package}/backbone.onnx")).eval()
    head = onnx.load(f"{args.package}/head.onnx")
    old = next(numpy_helper.to_array(i) for i in head.graph.initializer if i.name == "head.weight")
    with np.load(args.batch, allow_pickle=False) as data:
        pixels, labels = data["pixels"], data["labels"]
    new_labels = sorted(set(labels.tolist()))
    target = torch.from_numpy(np.searchsorted(np.array(new_labels), labels) + len(old))
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
    weight = torch.nn.Parameter(
        torch.cat([torch.from_numpy(old.copy()), torch.randn(len(new_labels), old.shape[1])])
    )
    optimizer = torch.optim.Adam([weight], lr=args.lr)
    F = torch.nn.functional

    def logits(emb: torch.Tensor) -> torch.Tensor:
        return args.scale * F.normalize(emb, dim=1) @ F.normalize(weight, dim=1).t()

    cached = None
    if args.cached:
        with torch.no_grad():
            cached = torch.cat([backbone(x[i : i + 256]) for i in range(0, len(x), 256)])
    for _ in range(args.epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), args.batch_size):
            batch = order[i : i + args.batch_size]
            if cached is not None:
                emb = cached[batch]
            else:
                with torch.no_grad():  # frozen backbone, run every step
                    emb = backbone(x[batch])
            loss = F.cross_entropy(logits(emb), target[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    np.save(args.out, weight.detach().numpy())
    print(f'{{"import_seconds": {T_IMPORT:.4f}, "total_seconds": {time.perf_counter() - T0:.4f}}}')


if __name__ == "__main__":
    main()

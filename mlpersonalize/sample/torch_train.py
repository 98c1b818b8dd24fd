"""Pretraining with PyTorch on the CPU (the ``sample`` extra): the same network as ``network.py``.

The graph is the one :func:`network.build` writes (three blocks of 3×3 convolutions with ReLU and
2×2 max pooling, a linear layer to an L2-normalised embedding, a scaled-cosine head), with the same
parameter names and layouts, so the trained weights go straight into the ONNX backbone. Only
``make sample-model`` uses it; the runtime never imports torch.

Deterministic: fixed seeds, ``torch.use_deterministic_algorithms``, a fixed thread count and
batches drawn from a NumPy generator, so the same configuration gives the same bytes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from . import network


def train(
    weights: dict[str, np.ndarray],
    inputs: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    ids: np.ndarray,
    *,
    epochs: int,
    batch: int,
    lr: float,
    weight_decay: float,
    logit_scale: float,
    label_smoothing: float,
    margin: float = 0.0,
    affine: float = 0.0,
    rotation_aux: float = 0.0,
    seed: int,
    threads: int,
    log: Callable[[str], None],
) -> dict[str, np.ndarray]:
    """AdamW with a one-cycle schedule over every parameter; returns the trained weights.

    ``inputs(indices, rng)`` gives the float32 NCHW batch of those examples (augmented).
    ``margin`` is an additive cosine margin (CosFace): the true class's logit is
    ``logit_scale * (cos - margin)`` in training, which pulls each class tighter around its row.
    """
    # lazy: torch is optional (the `sample` extra)
    import torch
    import torch.nn.functional as F  # noqa: N812

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in weights.items()}

    layout = network.blocks(weights)

    if rotation_aux:
        g = torch.Generator().manual_seed(seed + 17)
        params["head.rot.w"] = torch.nn.Parameter(torch.randn(4, weights["fc.w"].shape[0], generator=g))

    def embed(x: torch.Tensor) -> torch.Tensor:
        for names in layout:
            for name in names:
                x = F.relu(F.conv2d(x, params[f"{name}.w"], params[f"{name}.b"], padding=1))
            x = F.max_pool2d(x, 2)
        e = F.linear(x.flatten(1), params["fc.w"], params["fc.b"])
        return e / torch.sqrt((e * e).sum(1, keepdim=True) + 1e-6)

    def warp(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        n = x.shape[0]
        ang = np.deg2rad(rng.uniform(-affine, affine, n))
        scale = 1.0 + rng.uniform(-1, 1, n) * affine / 100.0
        shear = rng.uniform(-1, 1, n) * affine / 60.0
        c, s_ = np.cos(ang) / scale, np.sin(ang) / scale
        theta = np.zeros((n, 2, 3), np.float32)
        theta[:, 0, 0], theta[:, 0, 1] = c, -s_ + shear
        theta[:, 1, 0], theta[:, 1, 1] = s_, c
        grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")

    def forward(x: torch.Tensor) -> torch.Tensor:
        e = embed(x)
        w = params["head.w"]
        w = w / torch.sqrt((w * w).sum(1, keepdim=True) + 1e-6)
        return logit_scale * (e @ w.T)

    decay = [p for k, p in params.items() if k.endswith(".w")]
    no_decay = [p for k, p in params.items() if not k.endswith(".w")]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    steps_per_epoch = len(ids) // batch
    total = steps_per_epoch * epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.15)
    rng = np.random.default_rng([seed, 0x70C4])
    labels = torch.from_numpy(ids.astype(np.int64))
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(ids))
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * batch : (b + 1) * batch]
            x = torch.from_numpy(inputs(idx, rng))
            if affine:
                x = warp(x, rng)
            y = labels[idx]
            logits = forward(x)
            if margin:
                logits = logits - (logit_scale * margin) * F.one_hot(y, logits.shape[1]).to(logits.dtype)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            if rotation_aux:
                half = x[: len(x) // 2]
                k = rng.integers(0, 4, len(half))
                rot = torch.stack([torch.rot90(im, int(t), (1, 2)) for im, t in zip(half, k, strict=True)])
                w = params["head.rot.w"]
                rl = logit_scale * (embed(rot) @ (w / torch.sqrt((w * w).sum(1, keepdim=True) + 1e-6)).T)
                loss = loss + rotation_aux * F.cross_entropy(rl, torch.from_numpy(k))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        log(
            f"epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.3f} "
            f"({time.perf_counter() - start:.0f} s, torch {torch.__version__})"
        )
        if not math.isfinite(float(np.mean(losses))):
            raise RuntimeError("pretraining diverged (loss is not finite)")
    return {k: p.detach().numpy().astype(np.float32) for k, p in params.items()}

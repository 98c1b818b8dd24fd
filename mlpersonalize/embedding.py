"""Embeddings through the frozen backbone: the one plain-inference run per example an update makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _ort
from .images import ImageConstraint, to_model_input

EMBED_BATCH = 256  # examples per backbone run: big enough to amortise call overhead, small in memory


def embed(
    backbone: bytes | Path, pixels: np.ndarray, constraint: ImageConstraint, batch: int = EMBED_BATCH
) -> np.ndarray:
    """Embeddings (float32 [N, D]) of uint8 examples through the frozen backbone, one session."""
    session = _ort.inference_session(backbone)
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    output = "embedding" if "embedding" in outputs else outputs[0]
    parts = [
        session.run([output], {input_name: to_model_input(pixels[i : i + batch], constraint)})[0]
        for i in range(0, len(pixels), batch)
    ]
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(parts).astype(np.float32)

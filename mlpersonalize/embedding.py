"""Embeddings through the frozen backbone: the one plain-inference run per example an update makes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import _ort
from .images import ImageConstraint, to_model_input

if TYPE_CHECKING:
    from .batch import PixelFile

# Examples per backbone run: the bundled CNN costs the same CPU per example from 64 to 256 (10,000
# examples), and at 256 its activations take ~75 MB more at the peak than at 64.
EMBED_BATCH = 64


def embed(
    backbone: bytes | Path,
    pixels: np.ndarray | Sequence[np.ndarray | PixelFile],
    constraint: ImageConstraint,
    batch: int = EMBED_BATCH,
    order: np.ndarray | None = None,
    ahead: int = 0,
) -> np.ndarray:
    """Embeddings (float32 [N, D]) of uint8 examples through the frozen backbone, one session.

    ``pixels`` is one array or several (a batch file each), or a batch file's ``PixelFile`` (its
    pixels read from the file as they are embedded): they are read in chunks of ``batch`` and
    never joined, and the embeddings are written into one array allocated once, so the memory an
    update holds is the pixels it was given (one chunk of a streamed file's) plus N x D floats.
    With ``order`` (a permutation of the examples, counted across the parts; arrays only), row k
    is example ``order[k]``'s.
    ``ahead`` rows are left unwritten before the first embedding ([ahead + N, D]): room for the
    caller's own rows (the exemplar memory), so joining the two needs no second copy of N x D.
    """
    parts: list[np.ndarray | PixelFile] = [pixels] if isinstance(pixels, np.ndarray) else list(pixels)
    total = sum(len(p) for p in parts)
    session = _ort.inference_session(backbone)
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    output = "embedding" if "embedding" in outputs else outputs[0]
    out: np.ndarray | None = None
    for row, pixel_chunk in _chunks(parts, total, batch, order):
        chunk = session.run([output], {input_name: to_model_input(pixel_chunk, constraint)})[0]
        chunk = chunk.reshape(len(chunk), -1)
        if out is None:
            out = np.empty((ahead + total, chunk.shape[1]), np.float32)
        out[ahead + row : ahead + row + len(chunk)] = chunk
    return out if out is not None else np.zeros((0, 0), np.float32)


def _chunks(
    parts: list[np.ndarray | PixelFile], total: int, batch: int, order: np.ndarray | None
) -> Iterator[tuple[int, np.ndarray]]:
    """(first output row, pixels of up to ``batch`` examples) in output order."""
    if order is None:
        row = 0
        for part in parts:
            pieces = (
                (part[i : i + batch] for i in range(0, len(part), batch))
                if isinstance(part, np.ndarray)
                else part.chunks(batch)
            )
            for piece in pieces:
                yield row, piece
                row += len(piece)
        return
    arrays = [part for part in parts if isinstance(part, np.ndarray)]
    if len(arrays) != len(parts):
        raise TypeError("embedding in a given order needs the pixels in memory")
    starts = np.cumsum([0] + [len(p) for p in arrays])
    for row in range(0, total, batch):
        wanted = np.asarray(order[row : row + batch], np.int64)
        which = np.searchsorted(starts, wanted, side="right") - 1
        chunk = np.empty((len(wanted), *arrays[0].shape[1:]), arrays[0].dtype)
        for k in np.unique(which):
            here = which == k
            chunk[here] = arrays[k][wanted[here] - starts[k]]
        yield row, chunk

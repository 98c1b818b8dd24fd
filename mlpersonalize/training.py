"""Train the updatable head on cached embeddings with ONNX Runtime's on-device training API.

The backbone is frozen, so it runs once per example as plain inference (:func:`embed`); every
epoch then trains only the cosine head (``head.weight``) on those cached embeddings through the
head's training artifacts (CheckpointState / Module / Optimizer). New labels get a row each,
initialised by weight imprinting (the normalised mean embedding of their examples), and the
exemplar memory of known labels is rehearsed with the new data so old labels are not forgotten.
No printing here: progress goes to a callback.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _ort
from .head import generate_artifacts
from .images import ImageConstraint, to_model_input
from .names import escape
from .params import UpdateParams

EMBED_BATCH = 256  # examples per backbone run: big enough to amortise call overhead, small in memory
# Defaults tuned for "3 drawings of each new label" (see docs/update.md): imprinting does most of
# the work, a few epochs at a small rate separate new rows from old examples without moving old rows far.
# After each epoch, known labels' rows are pulled this far back towards their values before the
# update (an L2-SP-like anchor): rehearsal keeps them right, the anchor keeps them from drifting.
ANCHOR = 0.5

EpochCallback = Callable[[int, float], None]


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


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


def cosine_logits(emb: np.ndarray, weight: np.ndarray, scale: float) -> np.ndarray:
    """The head's logits in numpy (same formula as head.onnx) for quick evaluation."""
    return float(scale) * normalize(emb) @ normalize(weight).T


def imprint(emb: np.ndarray, idx: np.ndarray, rows: list[int]) -> np.ndarray:
    """One row per label index in ``rows``: the normalised mean of its examples' embeddings."""
    out = np.zeros((len(rows), emb.shape[1]), np.float32)
    unit = normalize(emb)
    for i, row in enumerate(rows):
        members = unit[idx == row]
        if len(members):
            out[i] = normalize(members.mean(axis=0, keepdims=True))[0]
    return out


def accuracy_by_label(pred: np.ndarray, idx: np.ndarray, labels: tuple[str, ...]) -> dict[str, float]:
    """Top-1 accuracy per label that has examples."""
    return {labels[k]: float(np.mean(pred[idx == k] == k)) for k in np.unique(idx)}


def overall(pred: np.ndarray, idx: np.ndarray) -> float | None:
    return float(np.mean(pred == idx)) if len(idx) else None


def split_holdout(idx: np.ndarray, rng: np.random.Generator, every: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) positions: about 1 in ``every`` of each label with ≥ 2 examples is held out."""
    train: list[int] = []
    held: list[int] = []
    for label in np.unique(idx):
        members = rng.permutation(np.flatnonzero(idx == label))
        n_held = min(max(1, len(members) // every), len(members) - 1) if len(members) >= 2 else 0
        held += members[:n_held].tolist()
        train += members[n_held:].tolist()
    return np.array(sorted(train), np.int64), np.array(sorted(held), np.int64)


def balanced_order(idx: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """One epoch of positions where every label appears as often as the most frequent one.

    Three drawings of a new label against twenty exemplars of each old one would otherwise be
    drowned out; cycling each label's examples to the same count balances them without a
    weighted loss (the ORT cross-entropy block has none).
    """
    labels, counts = np.unique(idx, return_counts=True)
    target = int(counts.max()) if len(counts) else 0
    parts = []
    for label in labels:
        members = np.flatnonzero(idx == label)
        if rng is not None:
            members = rng.permutation(members)
        parts.append(np.resize(members, target))
    if not parts:
        return np.zeros(0, np.int64)
    order = np.stack(parts, axis=1).reshape(-1)  # interleaved: each mini-batch mixes labels
    return rng.permutation(order) if rng is not None else order


@dataclass
class FitResult:
    """What one training run produced."""

    weight: np.ndarray
    losses: list[float] = field(default_factory=list)
    branch: dict[str, np.ndarray] = field(default_factory=dict)  # a "branch" head's trained layers

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")

    @property
    def finite(self) -> bool:
        arrays = [self.weight, *self.branch.values()]
        return all(bool(np.all(np.isfinite(a))) for a in arrays) and all(np.isfinite(v) for v in self.losses)


class HeadTrainer:
    """The head's training session: artifacts in a private temp folder, Module and Optimizer."""

    def __init__(self, weight: np.ndarray, scale: float, params: UpdateParams) -> None:
        self.scale = float(scale)
        self.params = params
        self._tmp = tempfile.TemporaryDirectory(prefix="mlp-train-")
        folder = Path(self._tmp.name)
        self._generate(weight, folder)
        api = _ort.training_api()
        self.state = api.CheckpointState.load_checkpoint(str(folder / "checkpoint"))
        self.module = api.Module(
            str(folder / "training_model.onnx"), self.state, str(folder / "eval_model.onnx"), device="cpu"
        )
        self.optimizer = api.Optimizer(str(folder / "optimizer_model.onnx"), self.module)
        self.optimizer.set_learning_rate(float(params.learning_rate))

    def _generate(self, weight: np.ndarray, folder: Path) -> None:
        generate_artifacts(weight, self.scale, self.params, folder)

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> HeadTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def weight(self) -> np.ndarray:
        return np.array(self.state.parameters["head.weight"].data, dtype=np.float32)

    def _set_weight(self, weight: np.ndarray) -> None:
        self.state.parameters["head.weight"] = np.ascontiguousarray(weight, dtype=np.float32)

    def logits(self, emb: np.ndarray) -> np.ndarray:
        """Logits from the engine's eval model (what the portability test compares against)."""
        if len(emb) == 0:
            return np.zeros((0, self.weight.shape[0]), np.float32)
        self.module.eval()
        out = self.module(np.ascontiguousarray(emb, np.float32), np.zeros(len(emb), np.int64))
        return np.asarray(out[1], np.float32)

    def fit(
        self,
        emb: np.ndarray,
        idx: np.ndarray,
        anchor_rows: int = 0,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult:
        """Train for ``params.epochs`` on label-balanced epochs; rows below ``anchor_rows`` are anchored."""
        params = self.params
        rng = np.random.default_rng(params.seed) if params.shuffle else None
        emb = np.ascontiguousarray(emb, np.float32)
        idx = np.asarray(idx, np.int64)
        start = self.weight
        result = FitResult(start)
        for epoch in range(1, params.epochs + 1):
            self.module.train()
            order = balanced_order(idx, rng)
            total = 0.0
            for i in range(0, len(order), params.batch_size):
                batch = order[i : i + params.batch_size]
                out = self.module(emb[batch], idx[batch])
                loss = float(np.asarray(out[0] if isinstance(out, (list, tuple)) else out))
                self.optimizer.step()
                self.module.lazy_reset_grad()
                total += loss * len(batch)
            mean = total / max(1, len(order))
            if anchor_rows and ANCHOR:
                w = self.weight
                w[:anchor_rows] = start[:anchor_rows] + (1 - ANCHOR) * (w[:anchor_rows] - start[:anchor_rows])
                self._set_weight(w)
            result.losses.append(mean)
            if on_epoch is not None:
                on_epoch(epoch, mean)
            if not np.isfinite(mean):
                break  # NaN/inf never recovers; the guard refuses the result
        result.weight = self.weight
        return result


def train_head(
    weight: np.ndarray,
    scale: float,
    emb: np.ndarray,
    idx: np.ndarray,
    params: UpdateParams,
    anchor_rows: int = 0,
    on_epoch: EpochCallback | None = None,
    kind: str = "cosine",
    frozen_rows: int = 0,
    fixed_columns: int = 0,
) -> FitResult:
    """Fine-tune ``weight`` on (emb, idx) and return the trained rows and per-epoch losses.

    ``kind`` "linear": ``weight`` is ``[C, D + 1]``, rows below ``frozen_rows`` never change and
    neither do the last ``fixed_columns`` weights of the others.
    """
    if params.epochs == 0 or len(idx) == 0:
        return FitResult(np.asarray(weight, np.float32))
    if kind == "linear":
        from . import linear_head as lin

        centre, spread = lin.spread(emb)  # train in standardised units (see linear_head.spread)
        start = lin.to_standard(weight, centre, spread)
        with lin.LinearTrainer(start, scale, params, frozen_rows, fixed_columns) as linear:
            result = linear.fit((emb - centre) / spread, idx, anchor_rows, on_epoch)
        result.weight = lin.from_standard(result.weight, centre, spread)
        result.weight[:frozen_rows] = weight[:frozen_rows]  # exactly as brought, no round-off
        return result
    with HeadTrainer(weight, scale, params) as trainer:
        return trainer.fit(emb, idx, anchor_rows, on_epoch)


# --- one update: imprint, rehearse, train, guard ----------------------------------------------


@dataclass
class Outcome:
    """The trained head, its labels, the new exemplar memory and the history entry."""

    labels: tuple[str, ...]
    added: tuple[str, ...]
    weight: np.ndarray
    exemplar_embeddings: np.ndarray
    exemplar_labels: np.ndarray
    params: UpdateParams
    history: dict[str, Any]
    branch: dict[str, np.ndarray] = field(default_factory=dict)  # a "branch" head's trained layers


def select_exemplars(emb: np.ndarray, idx: np.ndarray, per_label: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep, per label, the ``per_label`` examples closest to the label's mean (its prototype)."""
    keep: list[np.ndarray] = []
    unit = normalize(emb)
    for label in np.unique(idx):
        members = np.flatnonzero(idx == label)
        centre = normalize(unit[members].mean(axis=0, keepdims=True))[0]
        closest = members[np.argsort(-(unit[members] @ centre), kind="stable")[:per_label]]
        keep.append(np.sort(closest))
    chosen = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return emb[chosen].astype(np.float32), idx[chosen].astype(np.int64)


def _predict(emb: np.ndarray, weight: np.ndarray, scale: float, kind: str = "cosine") -> np.ndarray:
    if len(emb) == 0:
        return np.zeros(0, np.int64)
    if kind == "linear":
        from .linear_head import logits

        return np.argmax(logits(emb, weight), axis=1)
    return np.argmax(cosine_logits(emb, weight, scale), axis=1)


def _rounded(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


class CosineHead:
    """The bundled kind: rehearse the exemplar memory, imprint new rows, train every row."""

    kind = "cosine"
    trains_as = "cosine"  # which train_head / _predict formula the rows follow
    fixed_columns = 0  # a linear head's trailing weights of added rows that are set, not trained

    def __init__(self, package: Any, labels: tuple[str, ...], params: UpdateParams) -> None:
        import onnx

        from .head import head_weight
        from .package import HEAD_FILE

        self.old_weight = head_weight(onnx.load(str(package.path / HEAD_FILE)))
        self.frozen = package.manifest.frozen_labels
        self.scale = package.manifest.logit_scale

    def rehearsal(self, ex_emb: np.ndarray, ex_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ex_emb, ex_idx

    def start(
        self, emb: np.ndarray, idx: np.ndarray, rows: list[int], rehearse_emb: np.ndarray
    ) -> np.ndarray:
        return np.concatenate([self.old_weight, imprint(emb, idx, rows)])

    def train_input(self, emb: np.ndarray) -> np.ndarray:
        return emb

    def finish(
        self, result: FitResult, real_emb: np.ndarray, real_idx: np.ndarray, taught: np.ndarray
    ) -> None:
        """Nothing is set by hand in a cosine head."""

    def fit(
        self,
        emb: np.ndarray,
        idx: np.ndarray,
        rows: list[int],
        rehearse: tuple[np.ndarray, np.ndarray],
        real: tuple[np.ndarray, np.ndarray],
        params: UpdateParams,
        on_epoch: EpochCallback | None = None,
    ) -> FitResult:
        """Train on the examples (emb, idx) with the rehearsal set; ``rows`` are the labels added.

        ``real`` is the exemplar memory: real examples of known labels (``rehearse`` may add
        stand-ins), which set what a brought head sets by hand.
        """
        rehearse_emb, rehearse_idx = rehearse
        result = train_head(
            self.start(emb, idx, rows, rehearse_emb),
            self.scale,
            self.train_input(np.concatenate([rehearse_emb, emb])),
            np.concatenate([rehearse_idx, idx]),
            params,
            len(self.old_weight),  # the known labels' rows are anchored
            on_epoch,
            self.trains_as,
            self.frozen,
            self.fixed_columns,
        )
        self.finish(result, np.concatenate([real[0], emb]), np.concatenate([real[1], idx]), idx)
        return result

    def predict(self, emb: np.ndarray, result: FitResult | None = None) -> np.ndarray:
        """Top-1 row per embedding, with the trained ``result`` or (None) the head as it was."""
        return _predict(emb, self.old_weight if result is None else result.weight, self.scale, self.trains_as)


def head_for(package: Any, labels: tuple[str, ...], params: UpdateParams) -> CosineHead:
    """The update procedure of the package's head kind."""
    kind = package.manifest.head_kind
    if kind == "branch":
        from .branch_head import BranchHead

        return BranchHead(package, labels, params)
    if kind == "linear":
        from .linear_head import BroughtHead

        return BroughtHead(package, labels, params)
    return CosineHead(package, labels, params)


def guard_reason(
    first: FitResult,
    final: FitResult,
    known: tuple[float | None, float | None],
    memory: tuple[float | None, float | None],
    max_drop: float,
) -> str:
    """Why the update must not be published ("" when it may): divergence, or a drop of more than
    ``max_drop`` in the known labels' accuracy (pass one) or the exemplar memory's (pass two)."""
    if not (first.finite and final.finite):
        return "training diverged (loss is NaN or infinite)"
    for (before, after), what in (
        (known, "known labels' accuracy"),
        (memory, "the exemplar memory's accuracy"),
    ):
        if before is not None and after is not None and before - after > max_drop:
            return f"{what} would fall from {before:.1%} to {after:.1%} (more than {max_drop * 100:g} points)"
    return ""


def personalize(
    package: Any,
    batches: list[Any],
    paths: Any,
    params: UpdateParams,
    max_drop: float,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> Outcome:
    """Train ``package``'s head on the batches (new labels appended) and judge the result.

    Two passes: the first trains on all but a held-out part of the new examples and is judged
    by the guard (held-out accuracy; known labels' accuracy on exemplars and held-out examples,
    before vs after). The second, from the same start, trains on every example, so three
    drawings all count; it is the one written, and the guard checks its memory accuracy too.
    """
    from .package import BACKBONE_FILE, normalize_label

    emit = on_event or (lambda event: None)
    manifest = package.manifest
    old_labels = tuple(manifest.labels)
    batch_labels = [normalize_label(label) for batch in batches for label in batch.labels]
    added = tuple(dict.fromkeys(label for label in batch_labels if label not in old_labels))
    labels = old_labels + added
    position = {label: i for i, label in enumerate(labels)}
    idx = np.array([position[label] for label in batch_labels], np.int64)
    pixels = np.concatenate([batch.pixels for batch in batches])
    emit(
        {
            "event": "began",
            "model": str(package.path),
            "examples": len(idx),
            "labels_added": list(added),
            "epochs": params.epochs,
            "passes": 2,
            "params": params.to_dict(),
        }
    )

    emb = embed(package.path / BACKBONE_FILE, pixels, manifest.constraint)  # the examples' one run
    head = head_for(package, labels, params)
    ex_emb, ex_idx = package.exemplars()
    rehearse_emb, rehearse_idx = head.rehearsal(ex_emb, ex_idx)
    rng = np.random.default_rng(params.seed)
    train_pos, held_pos = split_holdout(idx, rng)
    n_old = len(old_labels)
    known_held = held_pos[idx[held_pos] < n_old]
    new_rows = list(range(n_old, len(labels)))

    def fit(pos: np.ndarray, pass_no: int) -> FitResult:
        return head.fit(
            emb[pos],
            idx[pos],
            new_rows,
            (rehearse_emb, rehearse_idx),
            (ex_emb, ex_idx),
            params,
            lambda epoch, loss: emit({"event": "epoch_end", "pass": pass_no, "epoch": epoch, "loss": loss}),
        )

    def accuracy_on(emb_: np.ndarray, idx_: np.ndarray, result: FitResult | None) -> float | None:
        return overall(head.predict(emb_, result), idx_)

    known_emb = np.concatenate([ex_emb, emb[known_held]])
    known_idx = np.concatenate([ex_idx, idx[known_held]])
    first = fit(train_pos, 1)
    before_known = accuracy_on(known_emb, known_idx, None)
    after_known = accuracy_on(known_emb, known_idx, first)
    held_pred = head.predict(emb[held_pos], first)
    held_before = accuracy_on(emb[held_pos], idx[held_pos], None)
    final = fit(np.arange(len(idx)), 2) if len(held_pos) else first
    final_known = accuracy_on(ex_emb, ex_idx, final)
    before_memory = accuracy_on(ex_emb, ex_idx, None)
    reason = guard_reason(first, final, (before_known, after_known), (before_memory, final_known), max_drop)

    all_emb = np.concatenate([ex_emb, emb])
    all_idx = np.concatenate([ex_idx, idx])
    memory_emb, memory_idx = select_exemplars(all_emb, all_idx, manifest.exemplars_per_label)
    accuracy = {
        "held_out_examples": len(held_pos),
        "held_out_before": _rounded(held_before),
        "held_out_after": _rounded(overall(held_pred, idx[held_pos])),
        "held_out_by_label": accuracy_by_label(held_pred, idx[held_pos], labels),
        "known_before": _rounded(before_known),
        "known_after": _rounded(after_known),
        "exemplars_before": _rounded(before_memory),
        "exemplars_after": _rounded(final_known),
    }
    guard = {"max_drop": max_drop, "passed": not reason, "reason": reason, "forced": False}
    history = _history(batch_labels, paths, added, params, final, accuracy, guard)
    return Outcome(labels, added, final.weight, memory_emb, memory_idx, params, history, final.branch)


def _history(
    batch_labels: list[str],
    paths: Any,
    added: tuple[str, ...],
    params: UpdateParams,
    final: FitResult,
    accuracy: dict[str, Any],
    guard: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's history entry of one update."""
    from .batch import file_sha256
    from .package import now_iso, producer

    counts = {
        label: int(n)
        for label, n in zip(*np.unique(np.array(batch_labels, dtype=object), return_counts=True), strict=True)
    }
    return {
        "time": now_iso(),
        "kind": "update",
        "batches": [{"file": escape(Path(str(p)).name), "sha256": file_sha256(Path(str(p)))} for p in paths],
        "examples_per_label": counts,
        "labels_added": list(added),
        "epochs": params.epochs,
        "params": params.to_dict(),
        "final_loss": _rounded(final.final_loss),
        "losses": [_rounded(v) for v in final.losses],
        "accuracy": accuracy,
        "guard": guard,
        "producer": producer(),
    }

"""One update's algorithm, top to bottom: embed once, grow, train, guard, rehearse, history.

1. **Embed once.** The backbone is frozen, so each example runs through it once
   (embedding.py); everything after works on cached embeddings.
2. **Grow.** Every new label gets a row, imprinted from its examples (the head kind decides how:
   ``heads``).
3. **Train.** Label-balanced epochs over the new examples and the rehearsal set (the exemplar
   memory of known labels, plus stand-ins where a kind has none), through a training engine.
4. **Guard.** Two passes from the same start: the first trains on all but a held-out part of
   the new examples and is judged (held-out accuracy; known labels' accuracy on exemplars and
   held-out examples, before vs after); the second trains on every example, so three drawings
   all count, and is the one written. :func:`guard_reason` says why a result must not be
   published.
5. **Rehearse next time.** The new exemplar memory keeps, per label, the examples closest to
   its prototype.
6. **History.** What was learned and measured, as the manifest's history entry; the caller
   (updater.py) adds what needs I/O (batch file hashes, the time, the producer).

A head kind with ``selects`` (the cosine kind) replaces steps 2-4 with :func:`personalize_rows`:

* **Conflicts** (reteach.py): batch drawings the model is sure are another known label are
  counted per label and refused (ConflictError, exit 6) unless ``force``; forced, the user's
  labels win for them.
* **Style rows**: a known label whose batch drawings the model misreads gets one more row,
  imprinted from those drawings (manifest ``head.row_labels``).
* **Never worse than imprinting** (selection.py): 3-fold cross-validation on the batch and the
  exemplar memory decides between the imprinted head (new, style and earlier updates' rows the
  normalised mean of their drawings) and the trained one; the trained one must clearly win on the
  batch and lose nothing on the known labels. Earlier updates' labels are re-imprinted from their
  exemplars each round, so the second update does not undo the first.
* **Calibrated unknown** (calibration.py): per-label thresholds on the cosine to a label's best
  row, from the memory and the batch, stored in the manifest's ``unknown``.
* **Learned nothing** (reteach.judge_learning): held-out accuracy on the batch before vs after,
  with the likely reason, in the history's ``learned``.

No printing and no file writes here: progress goes to ``on_event``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from . import calibration, engines, selection
from .embedding import embed
from .errors import ConflictError
from .heads import FitResult, HeadKind, StoredHead, kind_of
from .heads.base import RowHead
from .heads.cosine import normalize
from .manifest import BACKBONE_FILE, normalize_label
from .params import UpdateParams
from .reteach import Conflict, find_conflicts, judge_learning, plan_style_rows

if TYPE_CHECKING:
    from .batch import Batch
    from .engines import Engine
    from .package import ModelPackage

Event = Callable[[dict[str, Any]], None]


@dataclass
class Outcome:
    """The trained head, its labels, the new exemplar memory and the history entry."""

    labels: tuple[str, ...]
    added: tuple[str, ...]
    head: StoredHead
    exemplar_embeddings: np.ndarray
    exemplar_labels: np.ndarray
    params: UpdateParams
    history: dict[str, Any]
    unknown: dict[str, Any] = field(default_factory=dict)  # the manifest's calibrated ``unknown``

    @property
    def weight(self) -> np.ndarray:
        return self.head.weight


def personalize(
    package: ModelPackage,
    batches: Sequence[Batch],
    params: UpdateParams,
    max_drop: float,
    on_event: Event | None = None,
    engine: Engine | None = None,
    force: bool = False,
) -> Outcome:
    """Train ``package``'s head on the batches (new labels appended) and judge the result.

    ``force``: conflicting drawings are learned as labelled instead of refused (ConflictError).
    """
    emit = on_event or (lambda event: None)
    manifest = package.manifest
    old_labels = tuple(manifest.labels)
    batch_labels = [normalize_label(label) for batch in batches for label in batch.labels]
    added = tuple(dict.fromkeys(label for label in batch_labels if label not in old_labels))
    labels = old_labels + added
    position = {label: i for i, label in enumerate(labels)}
    idx = np.array([position[label] for label in batch_labels], np.int64)
    pixels = np.concatenate([batch.pixels for batch in batches])
    head: HeadKind = kind_of(manifest)(package, labels, params, engine or engines.get(None))
    emit(
        {
            "event": "began",
            "model": str(package.path),
            "examples": len(idx),
            "labels_added": list(added),
            "epochs": params.epochs,
            "passes": selection.FOLDS + 1 if head.selects else 2,
            "params": params.to_dict(),
        }
    )

    # 1. Embed once.
    emb = embed(package.path / BACKBONE_FILE, pixels, manifest.constraint)
    if head.selects:
        return personalize_rows(
            package, cast(RowHead, head), emb, idx, labels, added, batch_labels, params, max_drop, emit, force
        )
    ex_emb, ex_idx = package.exemplars()
    rehearse = head.rehearsal(ex_emb, ex_idx)
    train_pos, held_pos = split_holdout(idx, np.random.default_rng(params.seed))
    n_old = len(old_labels)
    known_held = held_pos[idx[held_pos] < n_old]
    new_rows = list(range(n_old, len(labels)))  # 2. Grow: one row per label added

    def fit(pos: np.ndarray, pass_no: int) -> FitResult:  # 3. Train
        return head.fit(
            emb[pos],
            idx[pos],
            new_rows,
            rehearse,
            (ex_emb, ex_idx),
            params,
            lambda epoch, loss: emit({"event": "epoch_end", "pass": pass_no, "epoch": epoch, "loss": loss}),
        )

    def accuracy_on(emb_: np.ndarray, idx_: np.ndarray, result: FitResult | None) -> float | None:
        return overall(head.predict(emb_, result), idx_)

    # 4. Guard: pass one, judged on what it did not see; pass two, on every example.
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

    # 5. The exemplar memory the next update rehearses.
    all_emb = np.concatenate([ex_emb, emb])
    all_idx = np.concatenate([ex_idx, idx])
    memory_emb, memory_idx = select_exemplars(all_emb, all_idx, manifest.exemplars_per_label)

    # 6. History.
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
    history = _history(batch_labels, added, params, final, accuracy, guard)
    before_right = head.predict(emb[held_pos], None) == idx[held_pos]
    # No floor here: the brought models' one-in-four held-out split leaves a label one or two
    # drawings, too few to call it unlearned; only "held-out accuracy did not rise" counts.
    learning = judge_learning(before_right, held_pred == idx[held_pos], idx[held_pos], labels, floor=0.0)
    history["learned"] = {"learned": learning.learned, "reason": learning.reason}
    stored = head.stored(final)
    unknown = type(head).calibrate(stored, memory_emb, memory_idx, len(labels))
    return Outcome(labels, added, stored, memory_emb, memory_idx, params, history, unknown)


def conflict_entries(conflicts: list[Conflict], labels: tuple[str, ...]) -> list[dict[str, Any]]:
    """Conflicts as the events and history name them: label, how many of its drawings, read as what."""
    return [
        {
            "label": labels[c.label],
            "drawings": c.count,
            "of": c.total,
            "read_as": {labels[other]: n for other, n in c.read_as.items()},
        }
        for c in conflicts
    ]


def conflict_message(entries: list[dict[str, Any]]) -> str:
    """One line: what contradicts what, and how to proceed."""
    parts = [
        f"{e['drawings']} of {e['of']} drawings labelled {e['label']!r} look like "
        + " and ".join(f"{other!r} ({n})" for other, n in e["read_as"].items())
        for e in entries
    ]
    return (
        "update refused, the model was not changed: the batch's labels contradict what the model is "
        f"sure of: {'; '.join(parts)}. Run again with --force to re-teach these labels your way, "
        "or move the drawings to the right folders and prepare the batch again"
    )


def taught_labels(manifest_history: tuple[dict[str, Any], ...], labels: tuple[str, ...]) -> set[int]:
    """Indices of the labels earlier updates added (re-imprinted from their exemplars each round)."""
    position = {label: i for i, label in enumerate(labels)}
    names = {label for entry in manifest_history for label in entry.get("labels_added", []) or []}
    return {position[name] for name in names if name in position}


def personalize_rows(
    package: ModelPackage,
    head: RowHead,
    emb: np.ndarray,
    idx: np.ndarray,
    labels: tuple[str, ...],
    added: tuple[str, ...],
    batch_labels: list[str],
    params: UpdateParams,
    max_drop: float,
    emit: Event,
    force: bool,
) -> Outcome:
    """Steps 2-6 for a kind whose rows are unit vectors with labels (see the module docstring)."""
    n_labels = len(labels)
    n_old = n_labels - len(added)
    old_rows = np.asarray(head.old_weight, np.float32)
    old_rl = np.asarray(head.row_label, np.int64)
    ex_emb, ex_idx = package.exemplars()

    # Conflicts: drawings the model is sure are another known label.
    conflicts, _ = find_conflicts(emb, idx, old_rows, old_rl, head.scale, ex_emb, ex_idx, new_from=n_old)
    named = conflict_entries(conflicts, labels)
    if named:
        emit({"event": "conflicts", "conflicts": named, "forced": force})
        if not force:
            raise ConflictError(conflict_message(named), named)

    # Style rows for known labels the model misreads, then one row per new label.
    plan = plan_style_rows(emb, idx, old_rows, old_rl, head.scale)
    dim = old_rows.shape[1]
    start_rows = np.concatenate([plan.rows, np.zeros((len(added), dim), np.float32)])
    row_label = np.concatenate([plan.row_label, np.arange(n_old, n_labels)])
    head.adopt(row_label)

    # The pool cross-validation and training see: the batch, then the exemplar memory.
    pool_emb = np.concatenate([emb, ex_emb]).astype(np.float32)
    pool_lab = np.concatenate([idx, ex_idx]).astype(np.int64)
    in_batch = np.arange(len(pool_lab)) < len(idx)
    unit = normalize(pool_emb)
    sources: dict[int, np.ndarray] = {}  # row -> pool positions it is imprinted from
    for label in sorted(taught_labels(package.manifest.history, labels) | set(range(n_old, n_labels))):
        own = np.flatnonzero(row_label == label)
        if len(own) == 1:  # a label's style rows keep their own drawings; its one row takes them all
            sources[int(own[0])] = np.flatnonzero(pool_lab == label)
    for row, members in plan.added.items():
        sources[int(row)] = np.asarray(members, np.int64)

    def imprint(positions: np.ndarray) -> np.ndarray:
        rows = start_rows.copy()
        kept = np.zeros(len(pool_lab), bool)
        kept[positions] = True
        for row, members in sources.items():
            inside = members[kept[members]]
            use = inside if len(inside) else members  # all of a style's drawings held out: rare
            if len(use):
                rows[row] = normalize(unit[use].mean(axis=0, keepdims=True))[0]
        return rows

    fits: list[FitResult] = []

    def train(positions: np.ndarray) -> np.ndarray:
        pass_no = len(fits) + 1
        start = imprint(positions)
        x, y = pool_emb[positions], head.target_rows(start, pool_emb[positions], pool_lab[positions])
        result = head.train(
            start,
            x,
            y,
            params,
            lambda epoch, loss: emit({"event": "epoch_end", "pass": pass_no, "epoch": epoch, "loss": loss}),
        )
        fits.append(result)
        return np.asarray(result.weight, np.float32) if result.finite else start

    choice = selection.choose_head(
        pool_emb,
        pool_lab,
        in_batch,
        row_label,
        head.scale,
        imprint,
        train,
        seed=params.seed,
        style_rows=bool(plan.added),
    )
    # Guard: the known labels' exemplars before vs after. Imprinted rows that take more of the
    # known labels' drawings than the guard allows give way to the trained head when it passes:
    # ten new generated labels from one drawing each were otherwise refused in 5 of 5 seeds.
    before_memory = _mean_right(head.predict(ex_emb, None), ex_idx)
    after_memory = _mean_right(head.predict_labels(ex_emb, choice.rows), ex_idx)
    if choice.blend == 0.0 and _drops(before_memory, after_memory, max_drop) and params.epochs > 0:
        trained = train(np.arange(len(pool_lab)))
        trained_memory = _mean_right(head.predict_labels(ex_emb, trained), ex_idx)
        if fits[-1].finite and not _drops(before_memory, trained_memory, max_drop):
            choice.blend, choice.rows, choice.guarded = 1.0, trained, True
            after_memory = trained_memory
    final = FitResult(choice.rows, fits[-1].losses if choice.blend > 0.0 and fits else [])
    diverged = next((f for f in fits if not f.finite), final)
    reason = guard_reason(
        diverged, final, (before_memory, after_memory), (before_memory, after_memory), max_drop
    )

    # Learned anything? Held-out batch drawings (cross-validation), or all of them in-sample when no
    # label has two drawings to hold one out.
    held = choice.heldout[in_batch[choice.heldout]]
    after_right = choice.heldout_right[in_batch[choice.heldout]]
    if len(held) == 0:
        held = np.arange(len(idx))
        after_right = head.predict_labels(emb, choice.rows) == idx
    before_right = head.predict(emb[held], None) == idx[held]
    learning = judge_learning(
        before_right, after_right, idx[held], labels, conflicts or None, emb[held], choice.rows, row_label
    )

    # Calibrated unknown, the exemplar memory (per row, so style drawings stay), history.
    cal = calibration.calibrate(
        pool_emb, pool_lab, choice.rows, row_label, n_labels, sources, target_frr=calibration.TARGET_FRR
    )
    memory_emb, memory_idx = select_exemplars(
        pool_emb, pool_lab, package.manifest.exemplars_per_label, choice.rows, row_label
    )
    by_label = {
        labels[k]: round(float(np.mean(after_right[idx[held] == k])), 6) for k in np.unique(idx[held])
    }
    accuracy = {
        "held_out_examples": int(len(held)),
        "held_out_before": _rounded(_mean_right(before_right, None)),
        "held_out_after": _rounded(_mean_right(after_right, None)),
        "held_out_by_label": by_label,
        "known_before": _rounded(before_memory),
        "known_after": _rounded(after_memory),
        "exemplars_before": _rounded(before_memory),
        "exemplars_after": _rounded(after_memory),
    }
    guard = {"max_drop": max_drop, "passed": not reason, "reason": reason, "forced": False}
    history = _history(batch_labels, added, params, final, accuracy, guard)
    history["selection"] = choice.summary()
    history["style_rows"] = {
        labels[int(row_label[r])]: int(np.sum(row_label[len(old_rl) :] == row_label[r])) for r in plan.added
    }
    history["conflicts"] = named
    history["learned"] = {"learned": learning.learned, "reason": learning.reason}
    stored = head.stored(final)
    return Outcome(labels, added, stored, memory_emb, memory_idx, params, history, cal.to_manifest())


def _drops(before: float | None, after: float | None, max_drop: float) -> bool:
    return before is not None and after is not None and before - after > max_drop


def _mean_right(pred_or_right: np.ndarray, idx: np.ndarray | None) -> float | None:
    """Share right: of predictions against ``idx``, or of a right/wrong mask (``idx`` None)."""
    right = pred_or_right == idx if idx is not None else np.asarray(pred_or_right, bool)
    return float(np.mean(right)) if len(right) else None


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


def select_exemplars(
    emb: np.ndarray,
    idx: np.ndarray,
    per_label: int,
    rows: np.ndarray | None = None,
    row_label: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep, per label, the ``per_label`` examples closest to the label's mean (its prototype).

    With ``rows``/``row_label`` (a head with style rows), per row: each example goes to its label's
    nearest row and each row keeps its ``per_label`` closest, so a style's drawings are never
    dropped for the label's standard ones (a label keeps up to rows x ``per_label``).
    """
    keep: list[np.ndarray] = []
    unit = normalize(emb)
    group = idx.astype(np.int64)
    if rows is not None and row_label is not None and len(rows) != len(np.unique(row_label)):
        cos = unit @ normalize(rows).T
        own = np.asarray(row_label)[None, :] == idx[:, None]
        group = np.where(own, cos, -np.inf).argmax(axis=1)
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        centre = normalize(unit[members].mean(axis=0, keepdims=True))[0]
        closest = members[np.argsort(-(unit[members] @ centre), kind="stable")[:per_label]]
        keep.append(np.sort(closest))
    chosen = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return emb[chosen].astype(np.float32), idx[chosen].astype(np.int64)


def accuracy_by_label(pred: np.ndarray, idx: np.ndarray, labels: tuple[str, ...]) -> dict[str, float]:
    """Top-1 accuracy per label that has examples."""
    return {labels[k]: float(np.mean(pred[idx == k] == k)) for k in np.unique(idx)}


def overall(pred: np.ndarray, idx: np.ndarray) -> float | None:
    return float(np.mean(pred == idx)) if len(idx) else None


def _rounded(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def _history(
    batch_labels: list[str],
    added: tuple[str, ...],
    params: UpdateParams,
    final: FitResult,
    accuracy: dict[str, Any],
    guard: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's history entry of one update, without what needs I/O (see updater.py)."""
    counts = {
        label: int(n)
        for label, n in zip(*np.unique(np.array(batch_labels, dtype=object), return_counts=True), strict=True)
    }
    return {
        "examples_per_label": counts,
        "labels_added": list(added),
        "epochs": params.epochs,
        "params": params.to_dict(),
        "final_loss": _rounded(final.final_loss),
        "losses": [_rounded(v) for v in final.losses],
        "accuracy": accuracy,
        "guard": guard,
    }

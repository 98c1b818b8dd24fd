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
  batch and lose nothing on the known labels. A clear win on the known labels alone keeps the
  taught labels' rows at their imprints next to the trained rows of the model's own labels.
  Earlier updates' labels are re-imprinted from their exemplars each round, so the second update
  does not undo the first.
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

from . import _arrays, calibration, engines, repeats, selection
from ._arrays import distinct
from .embedding import embed
from .errors import ConflictError, NothingNew
from .heads import FitResult, HeadKind, StoredHead, kind_of
from .heads.base import RowHead
from .heads.cosine import nearest_own_row, normalize
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
    release_pixels: bool = False,
    force: bool = False,
) -> Outcome:
    """Train ``package``'s head on the batches (new labels appended) and judge the result.

    With ``release_pixels`` the batches' pixels are let go once embedded (``Batch.release_pixels``):
    a caller that loaded them for this update alone holds the embeddings only while it trains.
    ``force``: conflicting drawings are learned as labelled instead of refused (ConflictError)."""
    emit = on_event or (lambda event: None)
    manifest = package.manifest
    old_labels = tuple(manifest.labels)
    labels, idx = label_indices(old_labels, [batch.labels for batch in batches])
    added = labels[len(old_labels) :]
    head: HeadKind = kind_of(manifest)(package, labels, params, engine or engines.get(None))
    emit(
        {
            "event": "began",
            "model": str(package.path),
            "examples": len(idx),
            "labels_added": list(added),
            "epochs": params.epochs,
            "passes": selection.rounds(idx, np.ones(len(idx), bool), selection.FOLDS) + 1
            if head.selects
            else 2,
            "params": params.to_dict(),
        }
    )

    # 1. Embed once, into one array (pass two reads it whole, in the batches' order; pass one a
    # copy of its part).
    # A row kind trains on the exemplar memory followed by the batch: the embeddings are written
    # after room for the memory, so that pool is this one array (at 100,000 examples of the 256-d
    # backbone, joining them afterwards took a second 100 MB copy: 361 MiB peak instead of 260).
    memory = package.exemplars()  # read once: the row kinds' pool, the other kinds' rehearsal
    ahead = len(memory[1]) if head.selects else 0
    pixels = [batch.pixel_source() for batch in batches]  # a streamed batch's file: read as embedded
    embedded = [embed(package.path / BACKBONE_FILE, pixels, manifest.constraint, ahead=ahead)]
    del pixels
    if release_pixels:
        for batch in batches:
            batch.release_pixels()
    # Drawings the model already learned (the same batch again, a batch grown by --append) are
    # left out: as new examples they were copies in the memory and the calibration (repeats.py).
    idx, left_out = _without_repeats(embedded, ahead, memory, idx, [d for b in batches for d in b.sha256])
    train_pos, held_pos = split_holdout(idx, np.random.default_rng(params.seed))
    if head.selects:  # the embeddings' only reference goes along, so personalize_rows can let them go
        outcome = personalize_rows(
            package,
            cast(RowHead, head),
            embedded.pop(),
            idx,
            labels,
            added,
            params,
            max_drop,
            emit,
            force,
            memory=memory,
        )
        outcome.history["repeated"] = left_out
        return outcome
    emb = embedded[0]
    ex_emb, ex_idx = memory
    rehearse = head.rehearsal(ex_emb, ex_idx)
    n_old = len(old_labels)
    known_held = held_pos[idx[held_pos] < n_old]
    new_rows = list(range(n_old, len(labels)))  # 2. Grow: one row per label added

    def fit(pos: np.ndarray | None, pass_no: int) -> FitResult:  # 3. Train (None: every example)
        return head.fit(
            emb if pos is None else emb[pos],
            idx if pos is None else idx[pos],
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
    final = fit(None, 2) if len(held_pos) else first
    final_known = accuracy_on(ex_emb, ex_idx, final)
    before_memory = accuracy_on(ex_emb, ex_idx, None)
    brought = len(head.stand_in_embeddings()) > 0  # a brought model: judged by brought_reason
    judged = (None, None) if brought else (before_known, after_known)
    reason = guard_reason(first, final, judged, (before_memory, final_known), max_drop)
    if not reason and brought:
        reason = brought_reason(head, first, final, known_emb, known_idx, max_drop)

    # 5. The exemplar memory the next update rehearses.
    memory_emb, memory_idx = select_exemplars_of([(ex_emb, ex_idx), (emb, idx)], manifest.exemplars_per_label)

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
    history = _history(labels, idx, added, params, final, accuracy, guard)
    history["training_steps"] = [training_steps(first), training_steps(final) if final is not first else 0]
    history["repeated"] = left_out
    # "Learned nothing" is judged for the cosine kind only (personalize_rows): brought models'
    # one-in-four held-out split leaves too few drawings to judge, and their added rows answer only
    # inside a ball around their examples.
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


def _without_repeats(
    embedded: list[np.ndarray],
    ahead: int,
    memory: tuple[np.ndarray, np.ndarray],
    idx: np.ndarray,
    digests: list[str],
) -> tuple[np.ndarray, int]:
    """Leave out the examples that repeat a drawing the model holds (repeats.py): the embeddings
    are moved down in place in ``embedded[0]`` (its first ``ahead`` rows stay); returns the kept
    examples' label indices and how many were left out. NothingNew when none is left."""
    emb = embedded[0]
    repeated = repeats.repeated(memory, emb[ahead:], idx, digests)
    count = int(repeated.sum())
    if count == len(idx):
        raise NothingNew(
            f"every one of the batch's {count} examples is a drawing the model already learned "
            "(the same batch again?): nothing to learn, the model was not changed"
        )
    if count:
        keep = ~repeated
        body = emb[ahead:]
        body[: len(idx) - count] = body[keep]
        embedded[0] = emb[: ahead + len(idx) - count]
        idx = idx[keep]
    return idx, count


def personalize_rows(
    package: ModelPackage,
    head: RowHead,
    emb: np.ndarray,
    idx: np.ndarray,
    labels: tuple[str, ...],
    added: tuple[str, ...],
    params: UpdateParams,
    max_drop: float,
    emit: Event,
    force: bool,
    memory: tuple[np.ndarray, np.ndarray] | None = None,
    calibration_extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> Outcome:
    """Steps 2-6 for a kind whose rows are unit vectors with labels (see the module docstring).

    ``calibration_extra``: (embeddings, label indices) that join the calibration's examples only,
    never a row, the training or the exemplar memory (benchmarks/quality_rows.py ``--part augment``
    measures augmented variants of the batch's drawings this way).

    ``memory``: the package's exemplar memory, already read, for which ``emb`` holds that many free
    rows before the batch's (``embedding.embed``'s ``ahead``): it is written there and ``emb`` is
    the training pool itself. None: read from the package and joined to ``emb`` (the batch's only).
    """
    n_labels = len(labels)
    n_old = n_labels - len(added)
    old_rows = np.asarray(head.old_weight, np.float32)
    old_rl = np.asarray(head.row_label, np.int64)
    ex_emb, ex_idx = memory if memory is not None else package.exemplars()
    # The pool cross-validation and training see: the exemplar memory, then the batch (the order
    # fitting.train wants, so the final training reads the pool itself, not a copy). From here on
    # the batch's embeddings are the pool's last rows (a view): one copy of them, not two.
    n_ex = len(ex_idx)
    if memory is not None and len(emb) == n_ex + len(idx) and emb.dtype == np.float32:
        pool_emb = emb
        pool_emb[:n_ex] = ex_emb
    else:  # no room made for the memory (a caller's own embeddings): join them
        pool_emb = np.concatenate([ex_emb, emb[len(emb) - len(idx) :]], dtype=np.float32)
    del emb
    emb = pool_emb[n_ex:]

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

    pool_lab = np.concatenate([ex_idx, idx]).astype(np.int64)
    in_batch = np.arange(len(pool_lab)) >= n_ex
    sources: dict[int, np.ndarray] = {}  # row -> pool positions it is imprinted from
    for label in sorted(taught_labels(package.manifest.history, labels) | set(range(n_old, n_labels))):
        own = np.flatnonzero(row_label == label)
        if len(own) == 1:  # a label's style rows keep their own drawings; its one row takes them all
            sources[int(own[0])] = np.flatnonzero(pool_lab == label)
    for row, members in plan.added.items():
        sources[int(row)] = np.asarray(members, np.int64) + n_ex  # batch positions -> pool positions

    def imprint(positions: np.ndarray) -> np.ndarray:
        rows = start_rows.copy()
        kept = np.zeros(len(pool_lab), bool)
        kept[positions] = True
        for row, members in sources.items():
            inside = members[kept[members]]
            use = inside if len(inside) else members  # all of a style's drawings held out: rare
            if len(use):
                rows[row] = normalize(normalize(pool_emb[use]).mean(axis=0, keepdims=True))[0]
        return rows

    fits: list[FitResult] = []

    def train(positions: np.ndarray) -> np.ndarray:
        pass_no = len(fits) + 1
        start = imprint(positions)
        # The rehearsal set (exemplars) first, as fitting's epoch plan expects (``rehearsed``).
        order = np.concatenate([positions[~in_batch[positions]], positions[in_batch[positions]]])
        head.rehearsed = int(np.sum(~in_batch[positions]))
        whole = len(order) == len(pool_lab) and bool(np.all(order == np.arange(len(order))))
        swaps: list[tuple[np.ndarray, np.ndarray]] = []
        if whole:
            x, x_lab = pool_emb, pool_lab
        elif pool_emb[: len(order)].nbytes < IN_PLACE_FROM:  # a small fold's training copies its part
            x, x_lab = pool_emb[order], pool_lab[order]
        else:  # a large one moves its part to the pool's front (undone below): no copy of it
            swaps, slots = gather_in_place(pool_emb, order, head.rehearsed)
            x, x_lab = pool_emb[: len(order)], pool_lab[slots]

        def on_epoch(epoch: int, loss: float) -> None:
            emit({"event": "epoch_end", "pass": pass_no, "epoch": epoch, "loss": loss})

        try:
            result = head.train(start, x, head.target_rows(start, x, x_lab), params, on_epoch)
        finally:
            del x
            undo_in_place(pool_emb, swaps)
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
        taught_rows=np.isin(np.arange(len(row_label)), [r for r in sources if r not in plan.added]),
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
    final = FitResult(choice.rows, fits[-1].losses if choice.blend != 0.0 and fits else [])
    diverged = next((f for f in fits if not f.finite), final)
    reason = guard_reason(
        diverged, final, (before_memory, after_memory), (before_memory, after_memory), max_drop
    )

    # Learned anything? Held-out batch drawings (cross-validation), or all of them in-sample when no
    # label has two drawings to hold one out.
    held = choice.heldout[in_batch[choice.heldout]] - n_ex  # batch positions
    after_right = choice.heldout_right[in_batch[choice.heldout]]
    if len(held) == 0:
        held = np.arange(len(idx))
        after_right = head.predict_labels(emb, choice.rows) == idx
    ordered = np.argsort(held, kind="stable")  # in batch order, so all of them need no copy
    held, after_right = held[ordered], after_right[ordered]
    # folds hold each drawing out once: all of them, or a part read in place (a copy of a third of
    # the batch's embeddings was the peak of a 100,000-example update)
    held_emb = emb if len(held) == len(idx) else cast(np.ndarray, Gathered(emb, held))
    before_right = (
        np.concatenate(
            [
                head.predict(emb[held[at : at + _arrays.CHUNK]], None)
                for at in range(0, len(held), _arrays.CHUNK)
            ]
            or [np.zeros(0, np.int64)]
        )
        == idx[held]
    )
    learning = judge_learning(
        before_right, after_right, idx[held], labels, conflicts or None, held_emb, choice.rows, row_label
    )
    del held_emb

    # Calibrated unknown, the exemplar memory (per row, so style drawings stay), history.
    cal_emb, cal_lab = pool_emb, pool_lab
    if calibration_extra is not None and len(calibration_extra[1]):
        cal_emb = np.concatenate([pool_emb, calibration_extra[0]], dtype=np.float32)
        cal_lab = np.concatenate([pool_lab, np.asarray(calibration_extra[1], np.int64)])
    cal = calibration.calibrate(
        cal_emb, cal_lab, choice.rows, row_label, n_labels, sources, target_frr=calibration.TARGET_FRR
    )
    del cal_emb, cal_lab
    memory_emb, memory_idx = select_exemplars_rows(
        pool_emb, pool_lab, package.manifest.exemplars_per_label, choice.rows, row_label, after=n_ex
    )
    by_label = {labels[k]: round(float(np.mean(after_right[idx[held] == k])), 6) for k in distinct(idx[held])}
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
    history = _history(labels, idx, added, params, final, accuracy, guard)
    history["training_steps"] = [training_steps(f) for f in fits]
    history["selection"] = choice.summary()
    history["style_rows"] = {
        labels[int(row_label[r])]: int(np.sum(row_label[len(old_rl) :] == row_label[r])) for r in plan.added
    }
    history["conflicts"] = named
    history["learned"] = {"learned": learning.learned, "reason": learning.reason}
    stored = head.stored(final)
    return Outcome(labels, added, stored, memory_emb, memory_idx, params, history, cal.to_manifest())


# A fold's training set of at least this many bytes is gathered at the front of the pool (rows
# swapped, then swapped back) instead of copied: at 100,000 examples of a 256-d backbone the copy was
# 68 MB. Smaller folds copy, as before, so their training (which rows each epoch draws) is unchanged.
IN_PLACE_FROM = 16 * 1024**2


def gather_in_place(
    pool: np.ndarray, order: np.ndarray, rehearsed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Move the rows at ``order`` (ascending: its first ``rehearsed`` the rehearsal set's, all before
    the others in the pool) to the pool's first ``len(order)`` slots by swapping rows, the
    rehearsal set's first. Returns the swaps (for :func:`undo_in_place`) and, per front slot, the
    pool position its row came from."""
    order = np.asarray(order, np.int64)
    slots = np.arange(len(pool), dtype=np.int64)
    swaps: list[tuple[np.ndarray, np.ndarray]] = []
    for lo, hi, members in ((0, rehearsed, order[:rehearsed]), (rehearsed, len(order), order[rehearsed:])):
        wanted = np.zeros(len(pool), bool)
        wanted[members] = True
        holes = lo + np.flatnonzero(~wanted[lo:hi])  # front slots holding a row not wanted there
        movers = members[members >= hi]  # wanted rows outside the front
        pair = (holes, movers)
        _swap(pool, *pair)
        slots[holes], slots[movers] = slots[movers], slots[holes]
        swaps.append(pair)
    return swaps, slots[: len(order)]


def undo_in_place(pool: np.ndarray, swaps: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Put the rows :func:`gather_in_place` moved back where they were."""
    for holes, movers in reversed(swaps):
        _swap(pool, holes, movers)
    swaps.clear()


def _swap(pool: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    for at in range(0, len(a), _arrays.CHUNK):  # a block of rows at a time: bounded temporaries
        i, j = a[at : at + _arrays.CHUNK], b[at : at + _arrays.CHUNK]
        pool[i], pool[j] = pool[j], pool[i].copy()


class Gathered:
    """Rows ``positions`` of ``emb``, read only when indexed (``rows[mask]``): what a caller that
    picks a few of them needs, without a copy of them all."""

    def __init__(self, emb: np.ndarray, positions: np.ndarray) -> None:
        self.emb, self.positions = emb, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: np.ndarray) -> np.ndarray:
        return self.emb[self.positions[key]]


def _drops(before: float | None, after: float | None, max_drop: float) -> bool:
    return before is not None and after is not None and before - after > max_drop


def _mean_right(pred_or_right: np.ndarray, idx: np.ndarray | None) -> float | None:
    """Share right: of predictions against ``idx``, or of a right/wrong mask (``idx`` None)."""
    right = pred_or_right == idx if idx is not None else np.asarray(pred_or_right, bool)
    return float(np.mean(right)) if len(right) else None


def label_indices(
    old_labels: tuple[str, ...], batch_labels: Sequence[Sequence[str]]
) -> tuple[tuple[str, ...], np.ndarray]:
    """(every label: the known ones, then the new ones in order of appearance; each example's
    label index). Labels are normalised once per distinct label, not once per example."""
    labels = list(old_labels)
    position = {label: i for i, label in enumerate(labels)}
    total = sum(len(b) for b in batch_labels)
    idx = np.empty(total, np.int64)
    row = 0
    for names in batch_labels:
        distinct, inverse = np.unique(np.asarray(names, dtype=object), return_inverse=True)
        first = np.full(len(distinct), len(names), np.int64)
        np.minimum.at(first, inverse, np.arange(len(names)))
        rows = np.empty(len(distinct), np.int64)
        for k in np.argsort(first, kind="stable"):  # new labels numbered in order of appearance
            label = normalize_label(str(distinct[k]))
            if label not in position:
                position[label] = len(labels)
                labels.append(label)
            rows[k] = position[label]
        idx[row : row + len(names)] = rows[inverse.reshape(-1)]
        row += len(names)
    return tuple(labels), idx


def split_holdout(idx: np.ndarray, rng: np.random.Generator, every: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) positions: about 1 in ``every`` of each label with ≥ 2 examples is held out."""
    train: list[int] = []
    held: list[int] = []
    for label in distinct(idx):
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


def brought_reason(
    head: HeadKind,
    first: FitResult,
    final: FitResult,
    known_emb: np.ndarray,
    known_idx: np.ndarray,
    max_drop: float,
) -> str:
    """Why an update of a brought model must not be published, judged on whatever old data exist.

    With known-label examples (exemplars, held-out examples of known labels in the batch), pass
    one's known-labels accuracy, counted in examples: a drop must exceed ``max_drop`` and be more
    than one example, since one of a few examples (12.5 points of 8) is no evidence of a fall of
    2 points. Without any, the model's own answers on its stand-ins (``stand_in_reason``).
    """
    if not len(known_idx):
        return stand_in_reason(head, final, max_drop) or head.own_labels_reason(final, max_drop)
    before = head.predict(known_emb, None) == known_idx
    after = head.predict(known_emb, first) == known_idx
    lost = int(np.sum(before & ~after)) - int(np.sum(~before & after))
    if lost > max(max_drop * len(known_idx), 1):
        return (
            f"known labels' accuracy would fall from {before.mean():.1%} to {after.mean():.1%} "
            f"({lost} of {len(known_idx)} examples; more than {max_drop * 100:g} points)"
        )
    return ""


def stand_in_reason(head: HeadKind, final: FitResult, max_drop: float) -> str:
    """Without real data of the known labels, why an update must not be published: the share of
    the kind's stand-ins (a brought model's noise images) whose answer it would change."""
    stand_ins = head.stand_in_embeddings()
    if not len(stand_ins):
        return ""
    changed = float(np.mean(head.predict(stand_ins, final) != head.predict(stand_ins, None)))
    if changed > max_drop:
        return (
            f"the model's own answers would change on {changed:.1%} of its stand-in inputs "
            f"(more than {max_drop * 100:g} points)"
        )
    return ""


def select_exemplars(emb: np.ndarray, idx: np.ndarray, per_label: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep, per label, the ``per_label`` examples closest to the label's mean (its prototype)."""
    return select_exemplars_of([(emb, idx)], per_label)


def select_exemplars_of(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], per_label: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`select_exemplars` over the parts taken as one (in order), one label's rows at a time:
    no copy of all the embeddings is made."""
    labels = distinct(np.concatenate([part_idx for _, part_idx in parts])) if parts else np.zeros(0, np.int64)
    kept_emb: list[np.ndarray] = []
    kept_idx: list[np.ndarray] = []
    for label in labels:
        rows = np.concatenate([part_emb[part_idx == label] for part_emb, part_idx in parts])
        rows = rows.astype(np.float32, copy=False)
        unit = normalize(rows)
        centre = normalize(unit.mean(axis=0, keepdims=True))[0]
        closest = np.sort(np.argsort(-(unit @ centre), kind="stable")[:per_label])
        kept_emb.append(rows[closest])
        kept_idx.append(np.full(len(closest), label, np.int64))
    if not kept_emb:
        width = parts[0][0].shape[1] if parts and parts[0][0].ndim == 2 else 0
        return np.zeros((0, width), np.float32), np.zeros(0, np.int64)
    return np.concatenate(kept_emb), np.concatenate(kept_idx)


def select_exemplars_rows(
    emb: np.ndarray,
    idx: np.ndarray,
    per_label: int,
    rows: np.ndarray,
    row_label: np.ndarray,
    after: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`select_exemplars` for a head with style rows (``rows``/``row_label``), per row: each
    example goes to its label's nearest row and each row keeps its ``per_label`` closest, so a
    style's drawings are never dropped for the label's standard ones (a label keeps up to rows x
    ``per_label``). Within a row the kept examples stay in order, except that the first ``after``
    (personalize_rows' exemplar memory, which its pool holds first) come after the others.
    """
    keep: list[np.ndarray] = []
    row_label = np.asarray(row_label, np.int64)
    group = idx.astype(np.int64)
    if len(rows) != len(distinct(row_label)):  # the row each example is nearest to, among its label's
        group = nearest_own_row(emb, idx, rows, row_label)
    for g in distinct(group):
        members = np.flatnonzero(group == g)
        # one group's rows at a time, _arrays.CHUNK of them normalised at once (float64 temporaries)
        parts = [members[at : at + _arrays.CHUNK] for at in range(0, len(members), _arrays.CHUNK)]
        total = np.sum([normalize(emb[part]).sum(axis=0, keepdims=True) for part in parts], axis=0)
        centre = normalize(total / len(members))[0]
        near = np.concatenate([normalize(emb[part]) @ centre for part in parts])
        closest = np.sort(members[np.argsort(-near, kind="stable")[:per_label]])
        keep.append(np.concatenate([closest[closest >= after], closest[closest < after]]))
    chosen = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    return emb[chosen].astype(np.float32), idx[chosen].astype(np.int64)


def training_steps(result: FitResult) -> int | None:
    """The optimizer steps a pass took (None if the head kind's training did not count them)."""
    steps = getattr(result.losses, "steps", None)
    return int(steps) if steps is not None else None


def accuracy_by_label(pred: np.ndarray, idx: np.ndarray, labels: tuple[str, ...]) -> dict[str, float]:
    """Top-1 accuracy per label that has examples."""
    return {labels[k]: float(np.mean(pred[idx == k] == k)) for k in distinct(idx)}


def overall(pred: np.ndarray, idx: np.ndarray) -> float | None:
    return float(np.mean(pred == idx)) if len(idx) else None


def _rounded(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def _history(
    labels: tuple[str, ...],
    idx: np.ndarray,
    added: tuple[str, ...],
    params: UpdateParams,
    final: FitResult,
    accuracy: dict[str, Any],
    guard: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's history entry of one update, without what needs I/O (see updater.py)."""
    present, n = np.unique(idx, return_counts=True)
    counts = dict(sorted((labels[k], int(c)) for k, c in zip(present, n, strict=True)))
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

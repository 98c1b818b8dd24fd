"""One device of a fleet, on its own store: train, evaluate a candidate head, adopt it.

Everything here reads and writes the device's own ``MLPERSONALIZE_HOME``; what it returns
for the network is a :class:`~.aggregate.Contribution` (rows and counts) or a few numbers.
Pixels and embeddings stay in this module's locals and in the device's store.

* :func:`train`: the device's pending batches (``*.npz`` made by ``mlpersonalize prepare``)
  train its current model with the update's own code (``update_algorithm.personalize``: embed
  once, grow, train, guard). A refused guard sends nothing. Shared are the rows of the labels
  the fleet already has and of labels with at least ``min_examples`` examples here; a label
  taught here from fewer examples, or taught only by an earlier local update, stays private.
* :func:`evaluate`: a candidate global head scored on the device's own exemplar memory and
  pending examples, against the device's current head on the same examples.
* :func:`adopt`: the candidate (plus the device's private labels) becomes the next version
  of the personalized model, under the model's lock, unless the device's guard refuses it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import repeats, store
from ..batch import Batch, check_batch_fits, load_batch
from ..embedding import embed
from ..errors import ModelError, NothingNew, UsageError
from ..heads import kind_of
from ..heads.cosine import cosine_logits
from ..manifest import BACKBONE_FILE, normalize_label
from ..package import ModelPackage, load_package
from ..update_algorithm import personalize, select_exemplars
from ..updater import DEFAULT_MAX_DROP
from .aggregate import Contribution
from .privacy import DpConfig
from .publish import publish_head


@dataclass(frozen=True)
class DeviceConfig:
    """Where a device's store, model and pending batches are, and its guard's limits."""

    pending: Path  # a folder of batch files: what this device's users taught and the fleet may learn
    home: Path | None = None  # the device's MLPERSONALIZE_HOME (None: the environment's)
    model: Path | None = None  # the original package (None: the bundled model)
    min_examples: int = 2  # a label is shared only when this device has this many examples of it
    max_drop: float = DEFAULT_MAX_DROP
    keep: int = store.DEFAULT_KEEP
    dp: DpConfig | None = None  # local differential privacy on the rows it sends (None: off)

    def __post_init__(self) -> None:
        if self.min_examples < 1:
            raise UsageError(f"min-examples must be at least 1, got {self.min_examples}")
        if not 0.0 <= self.max_drop <= 1.0:
            raise UsageError(f"max-drop must be within [0, 1], got {self.max_drop}")


@dataclass(frozen=True)
class TrainReport:
    contribution: Contribution | None  # None: nothing to share (guard refused, or no rows)
    reason: str = ""
    examples: int = 0
    labels_added: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    examples: int
    candidate: float | None
    current: float | None


@dataclass(frozen=True)
class Adoption:
    adopted: bool
    version: str | None
    reason: str = ""
    accuracy: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def device_home(config: DeviceConfig) -> Iterator[None]:
    """``MLPERSONALIZE_HOME`` set to the device's for the block (the store reads the environment)."""
    if config.home is None:
        yield
        return
    before = os.environ.get("MLPERSONALIZE_HOME")
    os.environ["MLPERSONALIZE_HOME"] = str(config.home)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLPERSONALIZE_HOME", None)
        else:
            os.environ["MLPERSONALIZE_HOME"] = before


def original(config: DeviceConfig) -> ModelPackage:
    package = load_package(config.model or store.bundled_model_path())
    if package.manifest.head_kind != "cosine":
        raise ModelError(
            f"{package.path}: fleet personalization averages cosine heads; this model's head is "
            f"{package.manifest.head_kind!r}"
        )
    return package


def model_root(config: DeviceConfig, source: ModelPackage) -> Path:
    """The device's personalized copy of ``source`` (the folder with versions, current, lock)."""
    bundled = store.bundled_model_path().resolve()
    if config.model is None or source.path.resolve() == bundled:
        return store.model_home(store.BUNDLED_NAME)
    return store.model_home(source.manifest.name)


def working(config: DeviceConfig) -> tuple[Path, ModelPackage, ModelPackage]:
    """(model root, the original, the package the device uses now: its current version or the original)."""
    source = original(config)
    root = model_root(config, source)
    current = store.current_path(root)
    return root, source, (load_package(current) if current is not None else source)


def pending_batches(config: DeviceConfig, package: ModelPackage) -> list[Batch]:
    """The device's pending batch files, checked against its model; none when the folder is empty."""
    if not config.pending.is_dir():
        return []
    batches = []
    for path in sorted(config.pending.glob("*.npz")):
        batch = load_batch(path)
        check_batch_fits(batch, package.manifest, str(path))
        batches.append(batch)
    return batches


def _weight(package: ModelPackage) -> np.ndarray:
    """The head's rows, one per label, as its kind reads them."""
    weight = kind_of(package.manifest).read(package).weight
    if len(weight) != len(package.manifest.labels):
        raise ModelError(f"{package.path}: {len(weight)} head rows for {len(package.manifest.labels)} labels")
    return np.asarray(weight, np.float32)


def _pending_examples(package: ModelPackage, batches: Sequence[Batch]) -> tuple[np.ndarray, list[str]]:
    if not batches:
        return np.zeros((0, package.manifest.embedding_dim), np.float32), []
    pixels = np.concatenate([b.pixels for b in batches])
    labels = [normalize_label(label) for b in batches for label in b.labels]
    return embed(package.path / BACKBONE_FILE, pixels, package.manifest.constraint), labels


def train(config: DeviceConfig, known: Sequence[str] = ()) -> TrainReport:
    """Train on the pending batches; the rows and counts to share (``known``: the fleet's labels)."""
    with device_home(config):
        _root, source, package = working(config)
        batches = pending_batches(config, package)
        counts: dict[str, int] = {}
        for batch in batches:
            for label in batch.labels:
                counts[normalize_label(label)] = counts.get(normalize_label(label), 0) + 1
        labels, weight = package.manifest.labels, _weight(package)
        added: tuple[str, ...] = ()
        if batches:
            params = package.manifest.update_defaults
            try:
                outcome = personalize(package, batches, params, config.max_drop)
            except NothingNew:  # an earlier round's adoption holds every pending drawing: share its rows
                outcome = None
            if outcome is not None:
                guard = outcome.history["guard"]
                if not guard["passed"]:
                    return TrainReport(None, f"this device's guard refused its update: {guard['reason']}")
                labels, weight, added = outcome.labels, outcome.head.weight, outcome.added
        shared = set(source.manifest.labels) | set(known)
        shared |= {label for label, n in counts.items() if n >= config.min_examples}
        keep = [i for i, label in enumerate(labels) if label in shared]
        contribution = Contribution(
            tuple(labels[i] for i in keep),
            np.asarray(weight, np.float32)[keep],
            tuple(counts.get(labels[i], 0) for i in keep),
        )
        return TrainReport(contribution, "", sum(counts.values()), tuple(added))


def _merged(
    package: ModelPackage, labels: Sequence[str], rows: np.ndarray
) -> tuple[tuple[str, ...], np.ndarray]:
    """The candidate's labels and rows, then the device's labels the candidate lacks (kept private)."""
    own = package.manifest.labels
    private = [i for i, label in enumerate(own) if label not in set(labels)]
    weight = np.concatenate([np.asarray(rows, np.float32), _weight(package)[private]])
    return tuple(labels) + tuple(own[i] for i in private), weight


def _own_examples(
    package: ModelPackage, batches: Sequence[Batch]
) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """(exemplar embeddings, their labels, pending embeddings, their labels) of this device."""
    ex_emb, ex_idx = package.exemplars()
    ex_labels = [package.manifest.labels[i] for i in ex_idx]
    pend_emb, pend_labels = _pending_examples(package, batches)
    return ex_emb, ex_labels, pend_emb, pend_labels


def _accuracy(
    emb: np.ndarray, truth: Sequence[str], labels: Sequence[str], weight: np.ndarray, scale: float
) -> float | None:
    """Top-1 accuracy of a cosine head on labelled embeddings (a label it lacks counts as wrong)."""
    if len(truth) == 0:
        return None
    pred = np.argmax(cosine_logits(emb, weight, scale), axis=1)
    return float(np.mean([labels[p] == t for p, t in zip(pred, truth, strict=True)]))


def evaluate(config: DeviceConfig, labels: Sequence[str], rows: np.ndarray) -> Evaluation:
    """The candidate head (with this device's private labels) vs the current one, on own examples."""
    with device_home(config):
        _root, _source, package = working(config)
        ex_emb, ex_labels, pend_emb, pend_labels = _own_examples(package, pending_batches(config, package))
        emb = np.concatenate([ex_emb, pend_emb])
        truth = ex_labels + pend_labels
        scale = package.manifest.logit_scale
        cand_labels, cand_weight = _merged(package, labels, rows)
        return Evaluation(
            len(truth),
            _accuracy(emb, truth, cand_labels, cand_weight, scale),
            _accuracy(emb, truth, package.manifest.labels, _weight(package), scale),
        )


def _without_repeats(
    ex: tuple[np.ndarray, list[str]], pending: tuple[np.ndarray, list[str]], batches: Sequence[Batch]
) -> tuple[np.ndarray, list[str]]:
    """The exemplars, then the pending drawings the memory does not already hold: after an
    adoption they are in it (stored in float16) and in the pending batches again (repeats.py)."""
    (ex_emb, ex_labels), (pend_emb, pend_labels) = ex, pending
    codes = {label: i for i, label in enumerate(dict.fromkeys(ex_labels + pend_labels))}
    ex_idx = np.array([codes[label] for label in ex_labels], np.int64)
    pend_idx = np.array([codes[label] for label in pend_labels], np.int64)
    digests = [digest for batch in batches for digest in batch.sha256]
    again = repeats.repeated((ex_emb, ex_idx), pend_emb, pend_idx, digests)
    kept = [label for label, repeat in zip(pend_labels, again.tolist(), strict=True) if not repeat]
    return np.concatenate([ex_emb, pend_emb[~again]]), ex_labels + kept


def adopt(
    config: DeviceConfig,
    labels: Sequence[str],
    rows: np.ndarray,
    entry: dict[str, Any] | None = None,
) -> Adoption:
    """Publish the candidate head as the device's next version unless the device's guard refuses it.

    The guard: on this device's own exemplars of the labels it knows, and on all its own
    examples (exemplars and pending), the candidate may cost at most ``max_drop`` of accuracy.
    """
    with device_home(config):
        root, source, _ = working(config)
        with store.ModelLock(root).acquire(True):
            store.clean_stale(root)
            current = store.current_path(root)
            package = load_package(current) if current is not None else source
            batches = pending_batches(config, package)
            ex_emb, ex_labels, pend_emb, pend_labels = _own_examples(package, batches)
            scale = package.manifest.logit_scale
            new_labels, new_weight = _merged(package, labels, rows)
            old = (package.manifest.labels, _weight(package))
            all_emb, all_truth = np.concatenate([ex_emb, pend_emb]), ex_labels + pend_labels
            accuracy = {
                "known_before": _rounded(_accuracy(ex_emb, ex_labels, *old, scale)),
                "known_after": _rounded(_accuracy(ex_emb, ex_labels, new_labels, new_weight, scale)),
                "own_before": _rounded(_accuracy(all_emb, all_truth, *old, scale)),
                "own_after": _rounded(_accuracy(all_emb, all_truth, new_labels, new_weight, scale)),
            }
            reason = _guard(accuracy, config.max_drop)
            if reason:
                return Adoption(False, None, f"kept this device's own model: {reason}", accuracy)
            memory_emb, memory_labels = _without_repeats(
                (ex_emb, ex_labels), (pend_emb, pend_labels), batches
            )
            position = {label: i for i, label in enumerate(new_labels)}
            keep = [i for i, label in enumerate(memory_labels) if label in position]
            idx = np.array([position[memory_labels[i]] for i in keep], np.int64)
            exemplars = select_exemplars(memory_emb[keep], idx, package.manifest.exemplars_per_label)
            added = tuple(label for label in new_labels if label not in package.manifest.labels)
            record = {
                "kind": "fleet",
                **(entry or {}),
                "labels_added": list(added),
                "accuracy": accuracy,
                "guard": {"max_drop": config.max_drop, "passed": True, "reason": "", "forced": False},
            }
            version = publish_head(root, package, new_labels, new_weight, exemplars, record, config.keep)
            return Adoption(True, version, "", accuracy)


def _guard(accuracy: dict[str, float | None], max_drop: float) -> str:
    for key, what in (("known", "known labels' accuracy"), ("own", "accuracy on this device's examples")):
        before, after = accuracy[f"{key}_before"], accuracy[f"{key}_after"]
        if before is not None and after is not None and before - after > max_drop:
            return f"{what} would fall from {before:.1%} to {after:.1%} (more than {max_drop * 100:g} points)"
    return ""


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)

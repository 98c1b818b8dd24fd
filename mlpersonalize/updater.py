"""One update, end to end: load → check → embed once → train → guard → write package → swap → history.

Like Core ML's MLUpdateTask: batches of labelled drawings update the head of a model package;
the result is written beside its destination and swapped in atomically (see store.py). The
package it started from is only read. Progress goes to ``on_event(dict)``; nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import engines, store
from .batch import Batch, check_batch_fits, check_update_size, file_sha256, load_batch
from .errors import BatchError, ModelError, RejectedError, UsageError
from .faults import fault_point
from .fsio import publish, storage_error
from .heads import kind_of
from .manifest import UNKNOWN, normalize_label
from .names import escape
from .package import ModelPackage, load_package, now_iso, producer, write_version
from .params import UpdateParams
from .update_algorithm import Outcome, personalize

Event = Callable[[dict[str, Any]], None]
DEFAULT_MAX_DROP = 0.02  # known labels may lose at most 2 accuracy points before the guard refuses


@dataclass(frozen=True)
class UpdateOptions:
    """What the caller chose; None means the manifest's default."""

    model: Path | None = None
    output: Path | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    seed: int | None = None
    shuffle: bool | None = None
    keep: int = store.DEFAULT_KEEP
    wait: bool = True
    force: bool = False
    max_drop: float = DEFAULT_MAX_DROP
    engine: str | None = None  # "ort" or "portable"; None: ort where installed (engines.get)

    def params(self, base: UpdateParams, ranges: dict[str, tuple[float, float]]) -> UpdateParams:
        """The manifest's defaults with these overrides, checked against the manifest's ranges."""
        changed = base.replace(
            epochs=self.epochs,
            learning_rate=self.learning_rate,
            batch_size=self.batch_size,
            seed=self.seed,
            shuffle=self.shuffle,
        )
        return changed.validate(ranges)


@dataclass(frozen=True)
class UpdateResult:
    """Where the updated model went and what the update measured."""

    model: Path
    version: str | None
    labels_added: tuple[str, ...]
    history: dict[str, Any]
    pruned: tuple[str, ...] = ()


def _load_batches(paths: Sequence[Path]) -> list[Batch]:
    if not paths:
        raise UsageError("give at least one batch file (made by `mlpersonalize prepare`)")
    check_update_size([Path(p) for p in paths])  # too many examples: refused before reading them
    # streamed: each batch's pixels are read from its file as they are embedded, never all at once
    return [load_batch(Path(p), streamed=True) for p in paths]


def _check_batches(batches: list[Batch], paths: Sequence[Path], package: ModelPackage) -> None:
    """Every batch must fit the model's image constraint and identity, before any training."""
    for batch, path in zip(batches, paths, strict=True):
        check_batch_fits(batch, package.manifest, str(path))
        for label in batch.labels:
            if normalize_label(label) == UNKNOWN and UNKNOWN not in package.manifest.labels:
                raise BatchError(f"{path}: the label {UNKNOWN!r} is reserved for rejected predictions")


def _check_options(options: UpdateOptions) -> None:
    if options.keep < 1:
        raise UsageError(f"keep must be at least 1, got {options.keep}")
    if not 0.0 <= options.max_drop <= 1.0:
        raise UsageError(f"max-drop must be within [0, 100] points, got {options.max_drop * 100:g}")
    out = options.output
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--output {out} exists and is not an empty folder")


def _write_package(temp: Path, package: ModelPackage, outcome: Outcome) -> None:
    """Write the new package into ``temp`` (fsynced), turning OS errors into StorageError."""
    exemplars = (outcome.exemplar_embeddings, outcome.exemplar_labels)
    try:
        write_version(
            temp,
            package,
            outcome.head,
            outcome.labels,
            exemplars,
            outcome.params,
            outcome.history,
            outcome.unknown,
        )
        fault_point("update:after-temp-write")
        # The temp folder's own entry in its parent needs no fsync of its own: the parent is
        # fsynced after the rename that names the folder (fsio.publish, store.commit).
        fault_point("update:after-fsync")
    except OSError as exc:
        raise storage_error("write the updated model to", temp, exc) from exc


def _engine(package: ModelPackage, options: UpdateOptions) -> engines.Engine:
    """The engine ``options`` asks for (or the one installed), after it confirmed it can train
    this package's head: refusals come before anything is embedded or locked."""
    engine = engines.get(options.engine)
    kind = kind_of(package.manifest)
    stored = kind.read(package)
    engine.check(kind.graph(stored), kind.trainable(stored), package.manifest.update_defaults)
    return engine


def _emit(on_event: Event | None, event: dict[str, Any]) -> None:
    if on_event is not None:
        on_event(event)


def _train(
    package: ModelPackage,
    batches: list[Batch],
    paths: Sequence[Path],
    options: UpdateOptions,
    on_event: Event | None,
) -> Outcome:
    params = options.params(package.manifest.update_defaults, package.manifest.update_ranges)
    engine = _engine(package, options)
    # the batches were loaded for this update alone: their pixels go once embedded
    outcome = personalize(
        package, batches, params, options.max_drop, on_event, engine, release_pixels=True, force=options.force
    )
    # The history entry's I/O: what the batches were, when, and what wrote the package.
    outcome.history = {
        "time": now_iso(),
        "kind": "update",
        "batches": [{"file": escape(Path(p).name), "sha256": file_sha256(Path(p))} for p in paths],
        **outcome.history,
        "engine": engine.name,
        "producer": producer(),
    }
    guard = outcome.history["guard"]
    if not guard["passed"]:
        if not options.force:
            reason = guard["reason"]
            raise RejectedError(f"update refused, the model was not changed: {reason} (--force to accept)")
        guard["forced"] = True
    return outcome


def _to_output(package: ModelPackage, outcome: Outcome, output: Path) -> Path:
    """Write a new package at ``output`` (fsio.publish: a temp folder beside it and one rename)."""
    publish(output, lambda temp: _write_package(temp, package, outcome), synced=True)
    return output


def update(
    batch_paths: Sequence[Path],
    options: UpdateOptions | None = None,
    on_event: Event | None = None,
    on_wait: Callable[[], None] | None = None,
) -> UpdateResult:
    """Personalize a model with labelled batches; return where the new model is.

    Raises UsageError, BatchError, ModelError, BusyError, RejectedError, StorageError; a
    KeyboardInterrupt before the swap leaves everything as it was (temp folder removed).
    """
    options = options or UpdateOptions()
    _check_options(options)
    batches = _load_batches(batch_paths)
    resolved = store.resolve_model(options.model)
    source = load_package(resolved.path)
    _check_batches(batches, batch_paths, source)
    options.params(source.manifest.update_defaults, source.manifest.update_ranges)  # usage errors first
    _engine(source, options)  # an engine that is missing or cannot train this head: before the lock

    if options.output is not None:
        outcome = _train(source, batches, batch_paths, options, on_event)
        path = _to_output(source, outcome, options.output)
        _emit(on_event, _completed(outcome, path, None))
        return UpdateResult(path, None, outcome.added, outcome.history)

    in_store = store.is_in_store(resolved.path)
    if in_store is not None:
        root = in_store
    elif resolved.source == "bundled":
        root = store.model_home(store.BUNDLED_NAME)
    else:
        root = store.model_home(source.manifest.name)
    if "/" in source.manifest.name or source.manifest.name in ("", ".", ".."):
        raise ModelError(f"model name {source.manifest.name!r} cannot name a folder in the store")

    with store.ModelLock(root).acquire(options.wait, on_wait):
        store.clean_stale(root)
        # Read the base only now, under the lock: a concurrent update's result is built upon.
        base = source
        current = store.current_path(root)
        if current is not None and (in_store is not None or resolved.source == "bundled"):
            base = load_package(current)
            if base.path.resolve() != source.path.resolve():
                _check_batches(batches, batch_paths, base)
        outcome = _train(base, batches, batch_paths, options, on_event)
        outcome.history["base_version"] = store.current_version(root) if base.path == current else None
        # What `current` named when this version replaced it: rollback's target, so a version
        # published by a run killed before its swap (never current) is never rolled back onto.
        outcome.history["replaced_version"] = store.current_version(root)
        version, pruned = store.publish_version(
            root, lambda temp: _write_package(temp, base, outcome), options.keep, fault_point
        )
    path = store.versions_dir(root) / version
    _emit(on_event, _completed(outcome, path, version))
    return UpdateResult(path, version, outcome.added, outcome.history, tuple(pruned))


def _completed(outcome: Outcome, path: Path, version: str | None) -> dict[str, Any]:
    acc = outcome.history["accuracy"]
    return {
        "event": "completed",
        "model": str(path),
        "version": version,
        "labels_added": list(outcome.added),
        "final_loss": outcome.history["final_loss"],
        "metrics": acc,
        "guard": outcome.history["guard"],
        **learned(outcome.history),
    }


def learned(history: dict[str, Any]) -> dict[str, Any]:
    """``learned`` (bool) and its ``reason`` (None when it learned): an update that learned nothing
    is saved, and says so (the CLI exits ExitCode.LEARNED_NOTHING)."""
    entry = history.get("learned") or {}
    return {"learned": bool(entry.get("learned", True)), "learned_reason": entry.get("reason")}

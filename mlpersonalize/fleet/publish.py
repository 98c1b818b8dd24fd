"""A head given as rows, published as a new version of a personalized model (store.py's swap).

The same steps as an update's publish (updater.py): a complete package is written into a
temp folder beside the versions and fsynced, ``store.commit`` renames it and moves ``current``
atomically, old versions are pruned. The caller holds the model's lock (``store.ModelLock``),
so a fleet adoption and a local ``update`` never interleave, and ``rollback`` steps back over
it like over any update (the history entry names the version it replaced).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .. import store
from ..fsio import fsync_dir, signals_deferred, storage_error
from ..heads import StoredHead, kind_named
from ..manifest import BACKBONE_FILE
from ..package import ModelPackage, build_contents, now_iso, producer, write_package


def publish_head(
    root: Path,
    base: ModelPackage,
    labels: tuple[str, ...],
    weight: np.ndarray,
    exemplars: tuple[np.ndarray, np.ndarray],
    entry: dict[str, Any],
    keep: int = store.DEFAULT_KEEP,
) -> str:
    """Write ``base`` with the head ``weight`` (one row per label) as the next version; return its id.

    ``entry`` becomes the manifest's history entry (time, producer and the versions it
    replaced are added). Call with ``store.ModelLock(root)`` held. OS errors become StorageError.
    """
    manifest = base.manifest
    kind = kind_named(manifest.head_kind)
    head = StoredHead(np.asarray(weight, np.float32), manifest.logit_scale)
    entry = {
        "time": now_iso(),
        **entry,
        "producer": producer(),
        "base_version": store.current_version(root) if store.current_path(root) == base.path else None,
        "replaced_version": store.current_version(root),
    }
    store.clean_stale(root)
    try:
        temp = store.new_temp_dir(root)
    except OSError as exc:
        raise storage_error("create a temporary folder in", store.versions_dir(root), exc) from exc
    try:
        contents, engines = build_contents(
            (base.path / BACKBONE_FILE).read_bytes(),
            head,
            manifest.head_kind,
            list(labels),
            exemplars[0],
            exemplars[1],
            manifest.update_defaults,
        )
        new_manifest = dataclasses.replace(
            manifest,
            labels=tuple(labels),
            updatable=tuple(kind.updatable(head)),
            history=(*manifest.history, entry),
            metrics={**manifest.metrics, "last_update": entry.get("accuracy", {})},
            producer=entry["producer"],
            engines=engines,
        )
        write_package(temp, new_manifest, contents)
        fsync_dir(temp.parent)
        with signals_deferred():
            version = store.commit(root, temp)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise storage_error("publish the fleet's head at", root, exc) from exc
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    with signals_deferred():
        try:
            store.prune(root, keep)
        except OSError:
            pass  # committed; the next run removes what is left
    return version

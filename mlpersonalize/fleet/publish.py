"""A head given as rows, published as a new version of a personalized model (store.py's swap).

The same steps as an update's publish, through the same code: ``package.write_version`` writes
the complete package (its calibrated ``unknown`` made for the new head) into the temp folder that
``store.publish_version`` commits (rename, ``current`` moved atomically) and prunes after. The
caller holds the model's lock (``store.ModelLock``), so a fleet adoption and a local ``update``
never interleave, and ``rollback`` steps back over it like over any update (the history entry
names the version it replaced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import store
from ..heads import StoredHead
from ..package import ModelPackage, now_iso, producer, write_version


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
    head = StoredHead(np.asarray(weight, np.float32), manifest.logit_scale)
    entry = {
        "time": now_iso(),
        **entry,
        "producer": producer(),
        "base_version": store.current_version(root) if store.current_path(root) == base.path else None,
        "replaced_version": store.current_version(root),
    }
    store.clean_stale(root)
    version, _pruned = store.publish_version(
        root,
        # the calibrated `unknown` is made anew for the adopted head (its labels may be more)
        lambda temp: write_version(
            temp, base, head, tuple(labels), exemplars, manifest.update_defaults, entry
        ),
        keep,
    )
    return version

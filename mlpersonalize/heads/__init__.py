"""Head kinds: the one place that maps a manifest's ``head_kind`` to the class that handles it.

* ``cosine`` (heads/cosine.py): the bundled model's scaled-cosine head; every row trains.
* ``linear`` (heads/linear.py): a brought model's last linear layer; its rows stay frozen, rows
  added by updates train, a margin gate keeps them off the brought labels' ground.
* ``branch`` (heads/branch.py): a linear head whose earlier layers train too, for added labels.

A fourth kind is a subclass of :class:`HeadKind` and one line in ``KINDS``.
"""

from __future__ import annotations

import importlib

from ..errors import ModelError
from ..manifest import Manifest
from .base import FitResult, HeadKind, PackageView, StoredHead

# name -> (module, class). A kind's module is imported when a package of that kind is loaded:
# the linear kinds bring ONNX Runtime with them, which `inspect` of a cosine package never needs.
KINDS: dict[str, tuple[str, str]] = {
    "cosine": ("cosine", "CosineHead"),
    "linear": ("linear", "LinearHead"),
    "branch": ("branch", "BranchHead"),
}

__all__ = ["KINDS", "FitResult", "HeadKind", "PackageView", "StoredHead", "kind_named", "kind_of"]


def kind_named(name: str, where: str = "head") -> type[HeadKind]:
    """The head kind called ``name``; ModelError (naming ``where``) for a name no kind has."""
    if name not in KINDS:
        raise ModelError(f"{where}: head.kind {name!r} is not one of {', '.join(KINDS)}")
    module, cls = KINDS[name]
    kind: type[HeadKind] = getattr(importlib.import_module(f".{module}", __name__), cls)
    return kind


def kind_of(manifest: Manifest, where: str = "head") -> type[HeadKind]:
    """The head kind of a manifest, after it checked that the manifest has what it needs."""
    kind = kind_named(manifest.head_kind, where)
    kind.check(manifest, where)
    return kind

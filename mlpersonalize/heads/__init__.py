"""Head kinds: the one place that maps a manifest's ``head_kind`` to the class that handles it.

* ``cosine`` (heads/cosine.py): the bundled model's scaled-cosine head; every row trains.
* ``linear`` (heads/linear.py): a brought model's last linear layer; its rows stay frozen, rows
  added by updates train, a margin gate keeps them off the brought labels' ground.
* ``branch`` (heads/branch.py): a linear head whose earlier layers train too, for added labels.

A fourth kind is a subclass of :class:`HeadKind` and one line in ``KINDS``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelError
from .base import FitResult, HeadKind, StoredHead
from .branch import BranchHead
from .cosine import CosineHead
from .linear import LinearHead

if TYPE_CHECKING:
    from ..manifest import Manifest

KINDS: dict[str, type[HeadKind]] = {kind.kind: kind for kind in (CosineHead, LinearHead, BranchHead)}

__all__ = ["KINDS", "FitResult", "HeadKind", "StoredHead", "kind_of", "kind_named"]


def kind_named(name: str) -> type[HeadKind]:
    """The head kind called ``name``."""
    try:
        return KINDS[name]
    except KeyError:
        raise ModelError(f"unknown head kind {name!r}; known: {', '.join(KINDS)}") from None


def kind_of(manifest: Manifest) -> type[HeadKind]:
    """The head kind of a package's manifest."""
    return kind_named(manifest.head_kind)

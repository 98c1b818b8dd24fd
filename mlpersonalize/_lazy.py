"""Modules that a module needs only in some of its functions, imported when first used.

``onnx`` takes ~30 ms to import; the head kinds and the inference-model builder use it to build
and read graphs, which ``predict`` and ``inspect`` never do. ``importlib.util.LazyLoader`` cannot
defer a submodule (finding ``onnx.helper`` imports ``onnx``), so a stand-in per module is used.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


class Deferred(types.ModuleType):
    """Stands in for the module of the same name; the first attribute read imports it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # introspection (copy, pickle, inspect) must not import it
            raise AttributeError(name)
        value = getattr(importlib.import_module(self.__name__), name)
        setattr(self, name, value)  # later reads find it here
        return value


def deferred(*names: str) -> tuple[Any, ...]:
    """A stand-in for each module named (``"onnx"``, ``"onnx.helper"``), in order."""
    return tuple(Deferred(name) for name in names)

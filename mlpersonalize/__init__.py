"""mlpersonalize: personalize an image classifier on your own machine with ONNX Runtime training.

The Python API (docs/python-api.md)::

    import mlpersonalize

    mlpersonalize.prepare("drawings/", "batch.npz")
    result = mlpersonalize.update("batch.npz")
    model = mlpersonalize.load_model()
    print(model.predict("new-drawing.png")[0].label)
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = ["Model", "__version__", "load_model", "prepare", "update"]
_API = ("Model", "load_model", "prepare", "update")

if TYPE_CHECKING:
    from .api import Model, load_model, prepare, update


class _Package(types.ModuleType):
    """``mlpersonalize.prepare`` stays the function although a submodule has that name too:
    importing ``mlpersonalize.prepare`` (the module) must not rebind the package's attribute."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return  # the submodule is still in sys.modules for `from mlpersonalize.prepare import …`
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    # The API pulls in numpy, onnx and ONNX Runtime: `import mlpersonalize` (and the CLI, which
    # reads __version__ here) stays cheap until one of these names is asked for.
    if name in _API:
        from . import api  # numpy, onnx, ONNX Runtime: on first use, not at `import mlpersonalize`

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The one place that imports ONNX Runtime and its training modules.

Three upstream quirks are handled here and nowhere else:

* ``import onnxruntime.training.<x>`` runs ``onnxruntime/training/__init__.py``, which imports
  torch (microsoft/onnxruntime#22070), and ``import onnxruntime`` probes ``training.ortmodule``.
  On-device training needs none of that: see ``_bare_training_package``.
* ``onnxruntime.training.artifacts`` imports the ORT-format converter (flatbuffers schemas, ~10 ms)
  that only ``generate_artifacts(ort_format=True)`` uses: see ``_DeferredConverter``.
* ONNX Runtime logs from C++ straight to stderr (``generate_artifacts`` even turns it up to INFO).
  The default logger is held at ERROR-and-worse severity so users never see those lines.
* The stock ``onnxruntime`` 1.32 for Linux sends usage telemetry to Microsoft's 1DS collector: at
  import it writes a ``.ses`` file into $TMPDIR, and a session that lives some seconds looks the
  collector up in DNS (6 lookups from one session held 20 s, traced). This tool promises no network
  at run time, so ``ORT_DISABLE_TELEMETRY=1`` is set before the import unless the user set it:
  no file, no lookup. ``disable_telemetry_events()`` after the import stops neither (traced), so a
  program that imported onnxruntime before mlpersonalize must set the variable itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _bare_package(name: str, folder: Path) -> None:
    """Register ``name`` as a package over ``folder`` without running its ``__init__``."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    sys.modules[name] = module


def _bare_training_package() -> bool:
    """Register ``onnxruntime.training`` as a bare package before onnxruntime is imported.

    Its ``__init__`` imports ``optim`` and ``amp``, which import torch (microsoft/onnxruntime#22070),
    and ``import onnxruntime`` itself probes ``training.ortmodule`` (torch again, ~1 s when torch is
    installed, ~90 ms when not). On-device training needs neither: the bare package's ``__path__``
    is the installed folder, so ``training.api`` / ``artifacts`` / ``onnxblock`` import normally,
    and ``ortmodule`` is marked absent, which onnxruntime's probe treats as "no ORTModule".
    ``onnxruntime.tools`` (which ``artifacts`` needs) imports torch in its ``__init__`` too.
    """
    name = "onnxruntime.training"
    if name in sys.modules:
        return True
    spec = importlib.util.find_spec("onnxruntime")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        return False
    folder = Path(next(iter(spec.submodule_search_locations))) / "training"
    if not folder.is_dir():
        return False  # plain onnxruntime: training_api() reports it
    if "onnxruntime" not in sys.modules:  # only onnxruntime's import-time probe needs this
        sys.modules[f"{name}.ortmodule"] = None  # type: ignore[assignment]
    _bare_package(name, folder)
    if "onnxruntime.tools" not in sys.modules and (folder.parent / "tools").is_dir():
        _bare_package("onnxruntime.tools", folder.parent / "tools")
        sys.modules[_CONVERTER] = _DeferredConverter(_CONVERTER)
    return True


_CONVERTER = "onnxruntime.tools.convert_onnx_models_to_ort"


class _DeferredConverter(types.ModuleType):
    """Stands in for ``onnxruntime.tools.convert_onnx_models_to_ort`` until something uses it.

    ``onnxruntime.training.artifacts`` imports ``OptimizationStyle`` and
    ``convert_onnx_models_to_ort`` from it at import time but calls them only to write ORT-format
    models, which this tool never asks for. Both names here, and any other attribute, import
    the real module (replacing this one in ``sys.modules``) when first used.
    """

    def _real(self) -> types.ModuleType:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return importlib.import_module(self.__name__)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._real(), name)

    def convert_onnx_models_to_ort(self, *args: Any, **kwargs: Any) -> Any:
        return self._real().convert_onnx_models_to_ort(*args, **kwargs)

    @property
    def OptimizationStyle(self) -> Any:  # noqa: N802 (the real module's name)
        real = self._real

        class _Styles:
            def __getattr__(self, name: str) -> Any:
                return getattr(real().OptimizationStyle, name)

        return _Styles()


os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # read once, at the import below
_bare_training_package()
import onnxruntime as ort  # noqa: E402

ORT_VERSION: str = ort.__version__
sessions_made = False  # whether this process made a session (session_options is the one way in)
SPINNING = "session.intra_op.allow_spinning"
_QUIET = 4  # ORT severity: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal; errors reach us as exceptions


def quiet_logs() -> None:
    ort.set_default_logger_severity(_QUIET)
    ort.set_default_logger_verbosity(0)


def session_options(threads: int = 0) -> ort.SessionOptions:
    """Session options with logging silenced; intra-op threads: ``threads``, else the process's
    setting (``--threads`` / $MLPERSONALIZE_THREADS, see threads.py), else ONNX Runtime's."""
    from .threads import configured  # lazy: read when a session is made (the setting can change after import)

    global sessions_made
    sessions_made = True  # its thread pools live on: decoding.fork_is_safe reads this
    options = ort.SessionOptions()
    options.log_severity_level = _QUIET
    # Idle pool threads sleep instead of spinning between operators: on cores shared with other
    # work a 10,000-drawing update took 0.86x the CPU and 0.89x the wall time (paired runs).
    options.add_session_config_entry(SPINNING, "0")
    threads = threads or configured()
    if threads:
        options.intra_op_num_threads = threads
    return options


def inference_session(model: str | Path | bytes, threads: int = 0) -> ort.InferenceSession:
    """A CPU inference session over a model file or serialized model bytes."""
    quiet_logs()
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, session_options(threads), providers=["CPUExecutionProvider"])


def has_training() -> bool:
    """Whether ONNX Runtime's on-device training modules are installed."""
    return _bare_training_package() and importlib.util.find_spec("onnxruntime.training.api") is not None


def _training_package() -> None:
    if not _bare_training_package():
        raise ImportError(
            "onnxruntime has no training support: install onnxruntime-training-cpu, not onnxruntime"
        )
    quiet_logs()


def training_api() -> Any:
    """``onnxruntime.training.api`` (CheckpointState, Module, Optimizer), without torch."""
    _training_package()
    import onnxruntime.training.api as api  # optional and heavy: only when a head trains

    quiet_logs()
    return api


def artifacts_api() -> Any:
    """``onnxruntime.training.artifacts`` and ``onnxblock``, without torch."""
    _training_package()
    import onnxruntime.training.artifacts as artifacts  # optional and heavy: when artifacts are made

    return artifacts


def onnxblock_api() -> Any:
    _training_package()
    import onnxruntime.training.onnxblock as onnxblock  # optional and heavy: when artifacts are made

    return onnxblock


@contextlib.contextmanager
def stderr_captured() -> Iterator[Callable[[], str]]:
    """Send file descriptor 2 to a temporary file for the block; yield a reader of what came."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)

        def read() -> str:
            sink.seek(0)
            return sink.read().decode("utf-8", "replace")

        try:
            yield read
        finally:
            os.dup2(saved, 2)
            os.close(saved)

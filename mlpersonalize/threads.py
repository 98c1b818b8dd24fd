"""How many threads a command may use: ``--threads N`` or ``$MLPERSONALIZE_THREADS``.

N bounds ONNX Runtime's intra-op threads in every session a command opens (the backbone, the
classifier, the training engine) and the image-decoding worker processes of ``prepare`` and
``predict``. Unset (or 0), ONNX Runtime uses one thread per physical core and decoding one
worker per available processor. A cron job that should leave the machine to others sets 1.
Importing this module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from .errors import UsageError

ENV = "MLPERSONALIZE_THREADS"
MAX_THREADS = 1024


def _checked(value: int, where: str) -> int:
    if not 0 <= value <= MAX_THREADS:
        raise UsageError(f"{where} must be a whole number from 0 (automatic) to {MAX_THREADS}, got {value}")
    return value


def configured() -> int:
    """The thread count asked for; 0 when none was (each library's own default)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{ENV} must be a whole number of threads, got {raw!r}") from None
    return _checked(value, ENV)


def use(threads: int | None) -> None:
    """Make ``threads`` (from ``--threads``) this process's setting; None keeps the environment's."""
    if threads is None:
        configured()  # a bad environment value is reported before any work starts
        return
    os.environ[ENV] = str(_checked(threads, "--threads"))


# numpy's OpenBLAS reads these when numpy is first imported (OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS).
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def _blas_chosen() -> bool:
    """Whether the user set numpy's BLAS thread count in the environment."""
    return any(os.environ.get(name, "").strip() for name in BLAS_ENV)


def small_blas() -> None:
    """Give numpy's BLAS one thread unless the user chose a number: call before numpy is imported.

    An update's matrix products are small ([2,048, D] x [D, rows] at most), and OpenBLAS's pool
    spent 8 ms of CPU on each 300 x 256 x 46 product on two busy cores against 0.13 ms on one
    thread: the seed's update took 0.61 s of CPU with the pool, 0.35 s without it.
    """
    if not _blas_chosen():
        os.environ[BLAS_ENV[0]] = "1"


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread while the block runs, unless the user chose a number.

    The Python API's :func:`small_blas`: a program that calls ``mlpersonalize.update`` has
    imported numpy already, so the environment variable would come too late. threadpoolctl sets
    the loaded BLAS's pool and gives it back its size afterwards. With the pool, an update in an
    API program burned twice the CPU for the same wall time (the seed's case: 0.27-0.28 s of CPU
    against 0.13 s, 0.13-0.14 s wall either way, on two idle cores; on busy ones the pool costs wall
    time too, see :func:`small_blas`)."""
    if _blas_chosen():
        yield  # the user's choice, read by numpy at its import
        return
    from threadpoolctl import threadpool_limits  # lazy: only the API's update uses it

    with threadpool_limits(limits=1, user_api="blas"):
        yield

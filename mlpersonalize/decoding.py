"""Image files decoded in input order, in worker processes when there are enough of them.

``prepare`` and ``predict`` both read files through :func:`decode_file` (non-blocking open,
regular files only, the size limit before reading, then :func:`images.load`), so a FIFO, a
bomb or a corrupt file is one reported entry in either, never a hang or a traceback.

A :class:`Decoder` starts its workers when it is entered. ``predict`` enters it before it
creates its ONNX Runtime session: on Linux the workers are forked, and a fork taken while the
engine's thread pool exists copies a process whose other threads are gone (a lock one of them
held stays locked in the child for good). A process that made an ONNX Runtime session or runs
Python threads of its own (a program calling :func:`mlpersonalize.prepare` after it made
predictions) decodes in a pool of threads instead: Pillow's decoders and resampling release the
GIL. numpy's OpenBLAS pool does not count: it stops its threads around a fork itself.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from . import images
from .errors import ImageError

PARALLEL_MIN_FILES = 64  # below this, starting worker processes costs more than it saves

Decoded = tuple[bool, "np.ndarray | None", str]  # (ok, pixels, sha256 or "" / the reason)
Task = tuple[str, bool]  # (path, do not follow a final link)


READ_AHEAD_BYTES = 1024 * 1024  # files read before the first of them is decoded (see decode_files)


def decode_file(
    path: str, nofollow: bool, constraint: images.ImageConstraint, digest: bool = True
) -> Decoded:
    """Read one file (never a link unless asked, never a FIFO) and preprocess it; never raises."""
    return _decode_read(_read(path, nofollow), constraint, digest)


def decode_files(
    tasks: Iterable[Task], constraint: images.ImageConstraint, digest: bool = True
) -> Iterator[Decoded]:
    """:func:`decode_file` of each task in order, the files read a few at a time before decoding.

    Reading each file just before decoding it cost every image 17 us more (of 275 for a
    256-pixel doodle PNG): the system calls between two decodes leave the next one's caches
    cold. Up to READ_AHEAD_BYTES are read ahead, so large photos are still read one by one.
    """
    pending: list[bytes | str] = []
    size = 0
    for path, nofollow in tasks:
        data = _read(path, nofollow)
        pending.append(data)
        size += len(data)
        if size >= READ_AHEAD_BYTES:
            yield from (_decode_read(read, constraint, digest) for read in pending)
            pending, size = [], 0
    yield from (_decode_read(read, constraint, digest) for read in pending)


def _read(path: str, nofollow: bool) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    try:
        return images.read_image_file(path, nofollow)
    except ImageError as exc:
        return str(exc)
    except Exception as exc:  # one hostile file must not stop the run; it is reported instead
        return f"could not be decoded ({type(exc).__name__})"


def _decode_read(data: bytes | str, constraint: images.ImageConstraint, digest: bool) -> Decoded:
    if isinstance(data, str):
        return False, None, data
    try:
        pixels = images.load(data, constraint)
    except ImageError as exc:  # from bytes: the reason alone
        return False, None, str(exc)
    except Exception as exc:  # one hostile file must not stop the run; it is reported instead
        return False, None, f"could not be decoded ({type(exc).__name__})"
    return True, pixels, hashlib.sha256(data).hexdigest() if digest else ""


def _decode_chunk(tasks: Sequence[Task], constraint: images.ImageConstraint, digest: bool) -> list[Decoded]:
    return list(decode_files(tasks, constraint, digest))


def _worker_init(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """A worker never outlives the command that started it (a SIGKILLed prepare left two
    workers blocked on their pipe for good). Linux: the kernel sends SIGKILL when the parent
    dies; elsewhere the pool's pipe EOF ends idle workers."""
    if sys.platform.startswith("linux"):
        # lazy: ctypes, on Linux only (prctl)
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _ready() -> None:
    """A no-op whose submission makes the pool start its workers now."""


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def fork_is_safe() -> bool:
    """No Python thread but this one runs, and this process made no ONNX Runtime session (whose
    pools' threads :mod:`threading` cannot see; ``_ort.session_options`` notes every one)."""
    engine = sys.modules.get("mlpersonalize._ort")
    return threading.active_count() == 1 and not getattr(engine, "sessions_made", False)


class Decoder:
    """Decodes ``count`` files for ``constraint``; ``digest`` adds each file's SHA-256."""

    def __init__(
        self,
        constraint: images.ImageConstraint,
        count: int,
        workers: int | None = None,
        digest: bool = True,
    ) -> None:
        wanted = default_workers() if workers is None else workers
        self.workers = wanted if wanted > 1 and count >= PARALLEL_MIN_FILES else 0
        self._constraint, self._digest = constraint, digest
        self._work = partial(_decode_chunk, constraint=constraint, digest=digest)
        self._pool: Executor | None = None

    def __enter__(self) -> Decoder:
        if self.workers and sys.platform.startswith("linux") and not fork_is_safe():
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mlpersonalize-decode")
        elif self.workers:
            # fork starts workers in milliseconds; macOS and Windows need spawn
            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),)
            )
            self._pool.submit(_ready).result()
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        if self._pool is not None:
            # on an error or Ctrl-C the queued files are dropped, not decoded first
            self._pool.shutdown(wait=kind is None, cancel_futures=kind is not None)
            self._pool = None

    def map(self, tasks: Sequence[Task]) -> Iterator[Decoded]:
        """Decoded results in input order."""
        if self._pool is None:
            yield from decode_files(tasks, self._constraint, self._digest)
            return
        size = max(1, min(64, len(tasks) // (self.workers * 8)))
        chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
        for results in self._pool.map(self._work, chunks):
            yield from results


def decode_all(
    tasks: Sequence[Task], constraint: images.ImageConstraint, workers: int | None = None
) -> Iterator[Decoded]:
    """Decoded results (with digests) in input order, from worker processes when there is enough work."""
    with Decoder(constraint, len(tasks), workers) as decoder:
        yield from decoder.map(tasks)

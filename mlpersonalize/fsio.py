"""Durable file writes: write beside, fsync, rename, fsync the directory.

Every write of a live artefact (batch file, model package, pointer) goes through here, so the
order that makes a crash harmless lives in one place. OS errors become StorageError with the
reason in words; a failed fsync is never retried as if it had succeeded.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar

from .errors import BusyError, StorageError

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "an I/O error occurred",
}


def describe_os_error(exc: OSError) -> str:
    return _REASONS.get(exc.errno or 0, exc.strerror or str(exc))


def read_bounded(handle: BinaryIO | int, limit: int, size: int | None = None) -> bytes:
    """A file's bytes, at most ``limit + 1`` (one more than the limit shows it is over).

    Sized by ``size`` (the caller's fstat) or fstat: asking for the limit itself allocates a
    buffer of that size (20 us a file at 100 MiB), and ``Path.read_bytes()[:limit]`` reads a
    file of any size whole. A file that grew since it was measured is still read to the limit.
    ``handle`` may also be the descriptor of a regular file, read with ``os.read`` (whose read
    is short only at the file's end): a file object adds three system calls and a read at the
    end, 18 us of the 300 us an image takes to read, decode and preprocess.
    """
    read: Callable[[int], bytes]
    if isinstance(handle, int):
        fd, read = handle, partial(os.read, handle)
    else:
        fd, read = handle.fileno(), handle.read
    known = os.fstat(fd).st_size if size is None else size
    data = read(min(known, limit) + 1)
    if min(known, limit) < len(data) <= limit:
        data += read(limit + 1 - len(data))
    return data


def storage_error(action: str, path: Path | str, exc: OSError) -> StorageError:
    return StorageError(f"cannot {action} {path}: {describe_os_error(exc)}")


def fsync_file(handle_fd: int) -> None:
    if sys.platform == "darwin":  # plain fsync on macOS does not reach the platter
        import fcntl  # lazy: POSIX only; the rest of this module runs on Windows too

        fcntl.fcntl(handle_fd, fcntl.F_FULLFSYNC)
    else:
        os.fsync(handle_fd)


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (new names, renames) — fsync of a file does not."""
    if os.name == "nt":  # Windows cannot open directories; NTFS journals metadata
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: Path) -> None:
    """``mkdir -p`` whose new folders survive a power cut: each new entry's parent is fsynced."""
    missing: list[Path] = []
    probe = Path(path)
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue
        fsync_dir(folder.parent)


def write_bytes_synced(path: Path, data: bytes) -> None:
    """Create ``path`` (must not exist) with ``data``, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        fsync_file(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(directory: bool = False) -> int:
    """What a new file (0666) or folder (0777) gets under the user's umask: one policy for
    batches and versions alike (README, "Output")."""
    return (0o777 if directory else 0o666) & ~umask()


_HELD_LOCK_FDS: set[int] = set()


def _close_held_locks_in_child() -> None:
    """A forked child (a decoding worker) must not keep its parent's locks alive: a flock lives
    as long as any descriptor of it, so a worker that outlived a killed parent held the batch."""
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_locks_in_child)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (``root`` included), deepest folders first."""
    folders = [root]
    for top, dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(top, name), os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                fsync_file(fd)
            finally:
                os.close(fd)
        folders += [Path(top) / name for name in dirs]
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM off while a publish or swap commits: once begun, it finishes.

    An interrupt here would otherwise report "nothing was changed" after the name moved.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    saved = {s: signal.signal(s, lambda n, f: caught.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


T = TypeVar("T")


def publish(output: Path, write: Callable[[Path], T], synced: bool = False) -> T:
    """Make the folder ``output`` (absent or empty) appear whole or not at all; return what ``write`` did.

    ``write(temp)`` fills a temp folder beside ``output``; every file and folder in it is then
    fsynced (``synced``: ``write`` did that itself, as package.write_package does), the temp
    folder is renamed to ``output`` with signals deferred and the parent folder is fsynced. On
    any failure (Ctrl-C included) the temp folder is removed; an OSError becomes a StorageError
    (exit 7) naming ``output``.
    """
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
        temp.chmod(file_mode(directory=True))
    except OSError as exc:
        raise storage_error("create a folder beside", output, exc) from exc
    try:
        result = write(temp)
        if not synced:
            fsync_tree(temp)
        # No fsync of the parent before the rename: the one after it makes the folder's entry
        # durable under its final name, and before that a crash leaves only a stale temp folder.
        with signals_deferred():
            if output.exists():
                output.rmdir()  # empty (the caller checked); rename cannot replace it everywhere
            temp.rename(output)
            fsync_dir(output.parent)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise storage_error("write", output, exc) from exc
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return result


class FileLock:
    """An exclusive ``fcntl.flock`` on ``path``; the kernel frees it if the holder dies.

    Never an ``O_EXCL`` lock file: that one survives a SIGKILL and blocks the next cron run.
    The descriptor is close-on-exec and closed in forked children, so only this process holds it.
    """

    def __init__(self, path: Path, busy: str) -> None:
        self.path = path
        self.busy = busy  # the BusyError message when wait=False and someone holds it
        self._fd: int | None = None

    def acquire(self, wait: bool = True, on_wait: Callable[[], None] | None = None) -> FileLock:
        import fcntl  # POSIX only: the rest of this module runs on Windows too

        try:
            makedirs_durable(self.path.parent)  # the folder's entry must outlive a power cut
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise storage_error("create the lock file in", self.path.parent, exc) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise BusyError(self.busy) from None
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _HELD_LOCK_FDS.add(fd)
        return self

    def release(self) -> None:
        # forget the descriptor before closing it: a signal handler that raises between the two
        # must not leave it to be closed again (the number may by then be another file's)
        fd, self._fd = self._fd, None
        if fd is not None:
            _HELD_LOCK_FDS.discard(fd)
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

"""Batch files: preprocessed training examples for one model, written atomically, read safely.

A batch is an ``.npz`` (zip of ``.npy`` members) described in docs/batch-format.md. Loading never
unpickles, and reads every member's header before its data, so a small file cannot declare a
huge array, inflate a zip bomb or smuggle objects: whatever the bytes, the only error raised is
BatchError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import BatchError, UsageError
from .faults import fault_point
from .fsio import file_mode, fsync_dir, fsync_file, storage_error
from .images import ImageConstraint
from .manifest import Manifest, normalize_label, sha256_file

SCHEMA_VERSION = 1
MEMBERS = ("pixels", "labels", "sources", "sha256", "meta")
MAX_EXAMPLES = 2_000_000
MAX_MEMBER_BYTES = 2 * 1024**3  # uncompressed size of one member
BOMB_FLOOR = 64 * 1024**2  # members above this size must not inflate more than MAX_RATIO
MAX_RATIO = 100
MAX_META_BYTES = 1024**2
MAX_HEADER = 10_000
READ_CHUNK = 1024**2  # bytes per read of a member's data
_HEX = re.compile(r"[0-9a-f]{64}")


class PixelFile:
    """A batch file's pixels left on disk, read ``rows`` examples at a time (an update embeds them
    in chunks, so only one chunk of pixels is ever in memory: at 100,000 28x28 drawings the whole
    array was 75 MiB of a 333 MiB peak).

    The file stays open from :func:`load_batch` on, so the bytes read are the ones whose header
    was checked even if the file is replaced meanwhile. Any problem reading them (truncated, a
    damaged member) is a BatchError naming the file.
    """

    def __init__(self, handle: BinaryIO, shape: tuple[int, ...], where: str) -> None:
        self._handle = handle
        self.shape = shape
        self.where = where

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """The pixels in order, ``rows`` examples (uint8 [rows, H, W, C]) at a time."""
        where = f"{self.where}: member pixels"
        try:
            self._handle.seek(0)
            with zipfile.ZipFile(self._handle) as archive, archive.open("pixels.npy") as member:
                shape, _ = _header(member, "pixels", self.where)
                if shape != self.shape:
                    raise BatchError(f"{self.where} changed while it was read")
                rows = max(1, rows)
                for start in range(0, self.shape[0], rows):
                    n = min(rows, self.shape[0] - start)
                    yield _read_data(member, (n, *self.shape[1:]), self.dtype, where)
                if member.read(1):
                    raise BatchError(f"{where} holds more bytes than its header declares")
        except BatchError:
            raise
        except Exception as exc:  # CRC mismatch, damaged deflate stream, I/O error
            reason = f"{type(exc).__name__}: {exc}"
            raise BatchError(f"{self.where} is damaged or not a batch file ({reason})") from None

    def close(self) -> None:
        self._handle.close()


@dataclass(frozen=True, eq=False)
class Batch:
    """Training examples prepared for one model: pixels, labels and where each came from."""

    pixels: np.ndarray  # uint8 (N, H, W, C) at the model's resolution
    labels: tuple[str, ...]
    sources: tuple[str, ...]  # relative to its DATA_DIR; undecodable bytes escaped as \xNN
    sha256: tuple[str, ...]  # of each source file's bytes
    constraint: ImageConstraint
    model_id: str
    model_name: str
    schema_version: int = SCHEMA_VERSION
    # load_batch(streamed=True): the pixels stay in the file (``pixels`` is then empty) until read
    pixel_file: PixelFile | None = None

    def label_counts(self) -> dict[str, int]:
        """Examples per label, sorted by label."""
        return dict(sorted(Counter(self.labels).items()))

    def __len__(self) -> int:
        return len(self.labels)

    def pixel_source(self) -> np.ndarray | PixelFile:
        """What an update embeds: the pixels, or the file they are streamed from."""
        return self.pixel_file if self.pixel_file is not None else self.pixels

    def release_pixels(self) -> None:
        """Let the pixels go (an update that has embedded them needs them no more): ``pixels``
        becomes an empty array of the same kind (a streamed batch closes its file); labels,
        sources and digests stay."""
        object.__setattr__(self, "pixels", np.zeros((0, *self.pixels.shape[1:]), self.pixels.dtype))
        if self.pixel_file is not None:
            self.pixel_file.close()
            object.__setattr__(self, "pixel_file", None)

    @classmethod
    def from_pixels(
        cls, pixels: np.ndarray, labels: tuple[str, ...] | list[str], manifest: Manifest
    ) -> Batch:
        """A batch of already preprocessed examples (no source files) for ``manifest``'s model.

        Each example's source is ``<label>/<n>.png`` and its digest that of its pixels, so
        identical examples still count as duplicates.
        """
        return cls(
            np.ascontiguousarray(pixels, np.uint8),
            tuple(labels),
            tuple(f"{label}/{i}.png" for i, label in enumerate(labels)),
            tuple(hashlib.sha256(p.tobytes()).hexdigest() for p in pixels),
            manifest.constraint,
            manifest.model_id,
            manifest.name,
        )


def validate(batch: Batch, where: str) -> None:
    """Raise BatchError unless every field of ``batch`` is well-formed and consistent."""
    pixels, n = batch.pixel_source(), len(batch.labels)
    if not isinstance(pixels, (np.ndarray, PixelFile)) or pixels.dtype != np.uint8 or len(pixels.shape) != 4:
        raise BatchError(f"{where}: pixels must be a uint8 array of shape (N, H, W, C)")
    if tuple(pixels.shape[1:]) != batch.constraint.shape:
        raise BatchError(
            f"{where}: examples are {pixels.shape[1:]} but the image constraint says {batch.constraint.shape}"
        )
    if n == 0:
        raise BatchError(f"{where}: the batch holds no examples")
    if not (pixels.shape[0] == n == len(batch.sources) == len(batch.sha256)):
        raise BatchError(
            f"{where}: {pixels.shape[0]} images, {n} labels, {len(batch.sources)} sources and "
            f"{len(batch.sha256)} digests do not match"
        )
    if batch.schema_version != SCHEMA_VERSION:
        raise BatchError(f"{where}: schema version {batch.schema_version!r} is not {SCHEMA_VERSION}")
    for label in batch.labels:
        if not _valid_text(label) or not label.strip() or normalize_label(label) != label:
            raise BatchError(f"{where}: label {label!r} is not a non-empty NFC-normalised string")
    for source in batch.sources:
        if not _valid_text(source):
            raise BatchError(f"{where}: source path {source!r} is not a valid string")
    for digest in batch.sha256:
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            raise BatchError(f"{where}: {digest!r} is not a hex SHA-256 digest")
    if not isinstance(batch.model_id, str) or not isinstance(batch.model_name, str):
        raise BatchError(f"{where}: model id and name must be strings")


def _valid_text(text: object) -> bool:
    if not isinstance(text, str) or "\x00" in text:
        return False
    try:
        text.encode("utf-8")  # lone surrogates would break every JSON document downstream
    except UnicodeEncodeError:
        return False
    return True


def _metadata(batch: Batch) -> bytes:
    meta = {
        "schema_version": batch.schema_version,
        "constraint": batch.constraint.to_dict(),
        "model_id": batch.model_id,
        "model_name": batch.model_name,
    }
    return json.dumps(meta, ensure_ascii=False, sort_keys=True).encode("utf-8")


def _arrays(batch: Batch) -> dict[str, np.ndarray]:
    return {
        "pixels": np.ascontiguousarray(batch.pixels),
        "labels": np.array(batch.labels, dtype=np.str_),
        "sources": np.array(batch.sources, dtype=np.str_),
        "sha256": np.array(batch.sha256, dtype="U64"),
        "meta": np.frombuffer(_metadata(batch), dtype=np.uint8),
    }


# zlib level 1, not numpy's default 6: a third of the time for 10% more bytes (doodle batches)
COMPRESS_LEVEL = 1


def _write_npz(handle: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """What ``np.savez_compressed`` writes, at COMPRESS_LEVEL (it offers no level)."""
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def save_batch(path: Path, batch: Batch, *, force: bool = False) -> None:
    """Write ``batch`` to ``path`` atomically; an existing file is replaced only with ``force``."""
    validate(batch, str(path))
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name for the batch")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to replace it or --append to add to it")
    remove_stale_temps(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error("write", path, exc) from exc
    temp = Path(name)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes it 0600; the umask decides, as for versions
        with os.fdopen(fd, "wb") as handle:
            _write_npz(handle, _arrays(batch))
            handle.flush()
            fault_point("prepare:after-temp-write")
            fsync_file(handle.fileno())
        fault_point("prepare:before-rename")
        if force:
            os.replace(temp, path)
        else:
            _link_no_clobber(temp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        _unlink(temp)
        if isinstance(exc, OSError):
            raise storage_error("write", path, exc) from exc
        raise


def _link_no_clobber(temp: Path, path: Path) -> None:
    """Give ``temp`` the name ``path`` unless something appeared there meanwhile (no overwrite race)."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise UsageError(f"{path} already exists; pass --force to replace it") from None
    except OSError:  # no hard links on this filesystem: check, then rename
        if path.exists():
            raise UsageError(f"{path} already exists; pass --force to replace it") from None
        os.replace(temp, path)
        return
    _unlink(temp)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def remove_stale_temps(path: Path) -> None:
    """Delete temp files beside ``path`` left by writers that were killed (their pid is gone)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.\w+\.tmp")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match and not _alive(int(match.group(1))):
            _unlink(path.parent / name)


def _alive(pid: int) -> bool:
    if os.name == "nt" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a batch file's bytes."""
    try:
        return sha256_file(path)
    except OSError as exc:
        raise BatchError(f"cannot read batch {path}: {exc.strerror or exc}") from exc


# What one update holds in memory grows with its examples: one embedding each and the batch's
# label, source and digest strings (the pixels are streamed through the backbone, a chunk at a
# time). Past this many bytes of pixels an update is refused before anything is read: 684,784
# 28x28 grey drawings (100,000 of them peaked at 258 MiB with the bundled 256-d backbone, the
# 684,784 at the limit at 1.13 GiB: README, "How well and how fast").
MAX_UPDATE_PIXEL_BYTES = 512 * 1024**2


def pixel_header(path: Path) -> tuple[int, int]:
    """(examples, bytes of pixels per example) of a batch file, from its pixels member's header
    alone; BatchError when that cannot be read (load_batch gives the full reason)."""
    where = str(path)
    try:
        with zipfile.ZipFile(path) as archive, archive.open("pixels.npy") as handle:
            shape, dtype = _header(handle, "pixels", where)
    except BatchError:
        raise
    except Exception:  # missing, not a zip, no pixels member: load_batch says which
        return 0, 0
    if not shape:
        return 0, 0
    per_example = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    return int(shape[0]), per_example


def check_update_size(paths: list[Path]) -> None:
    """BatchError, before any pixel is read, when the batches hold more than one update takes
    (MAX_UPDATE_PIXEL_BYTES of pixels), naming how many examples fit."""
    headers = [pixel_header(Path(p)) for p in paths]
    total = sum(n for n, _ in headers)
    need = sum(n * size for n, size in headers)
    if need <= MAX_UPDATE_PIXEL_BYTES:
        return
    per_example = max(size for _, size in headers)
    fits = MAX_UPDATE_PIXEL_BYTES // max(1, per_example)
    raise BatchError(
        f"the batches hold {total:,} examples ({need / 1024**2:,.0f} MiB of pixels); one update takes "
        f"at most {fits:,} of these ({MAX_UPDATE_PIXEL_BYTES // 1024**2} MiB): split them and run "
        "update once per part"
    )


def check_batch_fits(batch: Batch, manifest: Manifest, where: str) -> None:
    """BatchError unless ``batch`` was prepared for this model's backbone and image constraint."""
    if batch.model_id != manifest.model_id:
        raise BatchError(
            f"{where} was made for model {batch.model_name!r} ({batch.model_id or 'no id'}), "
            f"this is {manifest.name!r} ({manifest.model_id or 'no id'}); run prepare again with this model"
        )
    if batch.constraint != manifest.constraint:
        raise BatchError(
            f"{where} holds {_describe(batch.constraint)} images but model {manifest.name!r} takes "
            f"{_describe(manifest.constraint)}; run prepare again with this model"
        )


def _describe(c: ImageConstraint) -> str:
    return f"{c.width}x{c.height} {c.color} (ink {c.ink})"


def load_batch(path: Path, streamed: bool = False) -> Batch:
    """Read and validate a batch file; any problem is a BatchError naming the file.

    ``streamed``: the pixels are not read (their header is checked): the batch's ``pixel_file``
    gives them in chunks, as an update embeds them, and ``pixels`` is empty until then."""
    where = str(path)
    handle: BinaryIO | None = None
    kept = False
    try:
        handle = open(path, "rb")  # noqa: SIM115 - a streamed batch keeps it (PixelFile)
        with zipfile.ZipFile(handle) as archive:
            arrays = _read_members(archive, where, skip_pixels=streamed)
        kept = streamed
    except BatchError:
        raise
    except FileNotFoundError:
        raise BatchError(f"batch {where} does not exist; create it with 'mlpersonalize prepare'") from None
    except IsADirectoryError:
        raise BatchError(f"batch {where} is a folder, not a batch file") from None
    except OSError as exc:
        raise BatchError(f"cannot read batch {where}: {exc.strerror or exc}") from exc
    except zipfile.BadZipFile:
        raise BatchError(f"{where} is not a batch file (not an npz archive) or is damaged") from None
    except Exception as exc:  # the contract: hostile bytes yield BatchError, never anything else
        raise BatchError(f"{where} is damaged or not a batch file ({type(exc).__name__}: {exc})") from None
    finally:
        if not kept:
            _close(handle)
    assert handle is not None
    pixel_file = PixelFile(handle, tuple(arrays["pixels"].shape), where) if streamed else None
    if pixel_file is not None:
        arrays["pixels"] = np.zeros((0, *pixel_file.shape[1:]), np.uint8)
    try:
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
            version = meta.get("schema_version") if isinstance(meta, dict) else None
            raise BatchError(f"{where}: schema version {version!r} is not supported (this tool reads 1)")
        batch = Batch(
            pixels=arrays["pixels"],
            labels=_shared_strings(arrays.pop("labels")),
            sources=tuple(arrays.pop("sources").tolist()),
            sha256=tuple(arrays.pop("sha256").tolist()),
            constraint=ImageConstraint.from_dict(meta["constraint"]),
            model_id=meta["model_id"],
            model_name=meta["model_name"],
            pixel_file=pixel_file,
        )
        validate(batch, where)
    except BatchError:
        _close(handle if streamed else None)
        raise
    except Exception as exc:  # malformed JSON, constraint or text: all the same to the user
        _close(handle if streamed else None)
        raise BatchError(f"{where}: malformed batch metadata ({type(exc).__name__}: {exc})") from None
    return batch


def _close(handle: BinaryIO | None) -> None:
    if handle is not None:
        handle.close()


def _shared_strings(column: np.ndarray) -> tuple[str, ...]:
    """The column as a tuple of str in which equal strings are one object (a label repeated over
    100,000 examples costs a pointer each, not a string each)."""
    distinct, inverse = np.unique(column, return_inverse=True)
    names = [str(name) for name in distinct.tolist()]
    return tuple(map(names.__getitem__, inverse.reshape(-1).tolist()))


_KINDS = {"pixels": ("u", 4), "labels": ("U", 1), "sources": ("U", 1), "sha256": ("U", 1), "meta": ("u", 1)}


def _read_members(archive: zipfile.ZipFile, where: str, skip_pixels: bool = False) -> dict[str, np.ndarray]:
    """Every member, checked; with ``skip_pixels`` the pixels' data is not read (their array is a
    zero-strided stand-in of the declared shape, for the checks below)."""
    infos = {info.filename: info for info in archive.infolist()}
    expected = {f"{name}.npy" for name in MEMBERS}
    if set(infos) != expected or len(archive.infolist()) != len(expected):
        raise BatchError(f"{where}: members {sorted(infos)} are not the batch members {sorted(expected)}")
    out: dict[str, np.ndarray] = {}
    for name in MEMBERS:
        info = infos[f"{name}.npy"]
        if info.file_size > MAX_MEMBER_BYTES:
            raise BatchError(f"{where}: member {name} declares {info.file_size:,} bytes; refused")
        if info.file_size > BOMB_FLOOR and info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise BatchError(f"{where}: member {name} would inflate {info.file_size:,} bytes; refused")
        with archive.open(info) as handle:
            shape, dtype = _header(handle, name, where)
            kind, ndim = _KINDS[name]
            bad_bytes = kind == "u" and dtype.itemsize != 1
            if dtype.kind != kind or dtype.hasobject or len(shape) != ndim or bad_bytes:
                raise BatchError(f"{where}: member {name} has dtype {dtype.str}, {len(shape)} dims; refused")
            count = int(np.prod(shape, dtype=object))
            if shape and shape[0] > MAX_EXAMPLES and name != "meta":
                raise BatchError(f"{where}: member {name} declares {shape[0]:,} examples; refused")
            if name == "meta" and count > MAX_META_BYTES:
                raise BatchError(f"{where}: metadata declares {count:,} bytes; refused")
            if handle.tell() + count * dtype.itemsize != info.file_size:
                raise BatchError(f"{where}: member {name}'s shape {shape} does not match its size")
            if name == "pixels" and skip_pixels:
                out[name] = np.broadcast_to(np.zeros((), np.uint8), shape)
            elif name in ("sources", "sha256"):
                out[name] = _read_text(handle, shape, dtype, f"{where}: member {name}")
            else:
                out[name] = _read_data(handle, shape, dtype, f"{where}: member {name}")
    n = out["pixels"].shape[0]
    if any(out[name].shape[0] != n for name in ("labels", "sources", "sha256")):
        raise BatchError(f"{where}: members hold different numbers of examples")
    return out


# Text members are converted this many rows at a time: at 100,000 examples the whole sources and
# digests columns as numpy's 4-bytes-a-character arrays took ~50 MB beside the strings made of them.
TEXT_ROWS = 8192


def _read_text(handle: Any, shape: tuple[int, ...], dtype: np.dtype, where: str) -> np.ndarray:
    """A text column, read and turned into Python strings a block of rows at a time (an object
    array of them: what ``.tolist()`` of the whole column gives)."""
    out = np.empty(shape, object)
    for start in range(0, shape[0], TEXT_ROWS):
        n = min(TEXT_ROWS, shape[0] - start)
        out[start : start + n] = _read_data(handle, (n,), dtype, where).tolist()
    return out


def _header(handle: Any, name: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle, max_header_size=MAX_HEADER)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle, max_header_size=MAX_HEADER)
    else:
        raise BatchError(f"{where}: member {name} uses npy format {version}; refused")
    if fortran and len(shape) > 1:
        raise BatchError(f"{where}: member {name} is stored in Fortran order; refused")
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _read_data(handle: Any, shape: tuple[int, ...], dtype: np.dtype, where: str) -> np.ndarray:
    """The member's data, read into an array whose size was checked against the header."""
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        # In pieces: a zip member's readinto reads the whole request into a bytes object first,
        # which for the pixels would be a second copy of them all.
        got = handle.readinto(view[filled : filled + READ_CHUNK])
        if not got:
            raise BatchError(f"{where} ends early (file truncated)")
        filled += got
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)

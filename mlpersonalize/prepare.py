"""prepare: labelled image folders (``DATA_DIR/<label>/...``) become one validated batch file.

Every image goes through :func:`mlpersonalize.images.load`, the path predict uses too. Files that
cannot be used are reported, never fatal; a label folder with no usable image, an image filed
under two labels, or nothing usable at all stops the run before anything is written.

Links: a symbolic link to a file inside the same DATA_DIR is followed; links to folders, links
leading outside the DATA_DIR, broken links and link loops are skipped and reported.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import images
from .batch import Batch, check_batch_fits, load_batch, save_batch
from .decoding import decode_all
from .errors import InputError, UsageError
from .fsio import FileLock, describe_os_error
from .manifest import UNKNOWN, normalize_label
from .names import escape

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Skipped:
    """A file or folder left out, and why. ``kind``: ignored, unreadable, link or duplicate."""

    path: str
    reason: str
    kind: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "kind": self.kind}


@dataclass(frozen=True)
class Report:
    """What prepare did: the batch's contents, what was added and what was left out."""

    output: str
    written: bool
    appended: bool  # an existing batch was extended
    model_name: str
    model_id: str
    examples: int
    added: int
    labels: dict[str, int]  # the whole batch
    added_labels: dict[str, int]
    skipped: tuple[Skipped, ...] = ()
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "written": self.written,
            "appended": self.appended,
            "model": {"name": self.model_name, "id": self.model_id},
            "examples": self.examples,
            "added": self.added,
            "labels": self.labels,
            "added_labels": self.added_labels,
            "skipped": [s.to_dict() for s in self.skipped],
            "problems": list(self.problems),
        }


class PrepareError(InputError):
    """The inputs cannot make a batch; ``report`` says what was found and skipped."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class _Candidate:
    label: str
    folder: str  # the label folder it was found in (display form)
    open_path: str
    nofollow: bool
    source: str  # relative to its DATA_DIR
    shown: str  # DATA_DIR/source


@dataclass
class _Scan:
    candidates: list[_Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def scan(data_dirs: Sequence[Path]) -> _Scan:
    """Find the candidate images of every label folder, in a stable order."""
    out = _Scan()
    for data_dir in data_dirs:
        if not data_dir.is_dir():
            raise InputError(f"data folder {escape(str(data_dir))} does not exist or is not a folder")
        root_real = os.path.realpath(data_dir)
        for entry in _entries(data_dir, "", out):
            shown = escape(os.path.join(str(data_dir), entry.name))
            if entry.name.startswith("."):
                out.skipped.append(Skipped(shown, "hidden", "ignored"))
            elif entry.is_symlink():
                out.skipped.append(Skipped(shown, "symbolic link (label folders are not followed)", "link"))
            elif not entry.is_dir(follow_symlinks=False):
                reason = "not inside a label folder (DATA_DIR/<label>/<image>)"
                out.skipped.append(Skipped(shown, reason, "ignored"))
            elif _label_problem(entry.name):
                out.problems.append(f"label folder {shown}: {_label_problem(entry.name)}")
            else:
                out.folders.append(shown)
                _walk(data_dir, root_real, entry.name, normalize_label(entry.name), shown, out)
    return out


def _label_problem(name: str) -> str | None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the folder name is not valid UTF-8; rename it (the name becomes the label)"
    if not name.strip():
        return "the folder name is blank; rename it (the name becomes the label)"
    return None


def _entries(data_dir: Path, rel: str, out: _Scan) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(os.path.join(data_dir, rel)) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        shown = escape(os.path.join(str(data_dir), rel))
        out.skipped.append(Skipped(shown, f"cannot list folder: {describe_os_error(exc)}", "unreadable"))
        return []


def _walk(data_dir: Path, root_real: str, top: str, label: str, folder: str, out: _Scan) -> None:
    """Collect images under one label folder; sub-folders are searched, folder links are not."""
    stack = [top]
    while stack:
        rel_dir = stack.pop()
        subfolders = []
        for entry in _entries(data_dir, rel_dir, out):
            rel = os.path.join(rel_dir, entry.name)
            shown = escape(entry.path)  # DATA_DIR/rel, joined by scandir in C
            if entry.name.startswith("."):
                out.skipped.append(Skipped(shown, "hidden", "ignored"))
            elif entry.is_symlink():
                target, reason = _link_target(entry.path, root_real)
                if target is None:
                    out.skipped.append(Skipped(shown, reason, "link"))
                elif not images.is_image_name(entry.name):
                    out.skipped.append(Skipped(shown, "not an image file name", "ignored"))
                else:
                    out.candidates.append(_Candidate(label, folder, target, False, escape(rel), shown))
            elif entry.is_dir(follow_symlinks=False):
                subfolders.append(rel)
            elif not entry.is_file(follow_symlinks=False):
                out.skipped.append(Skipped(shown, "not a regular file", "ignored"))
            elif not images.is_image_name(entry.name):
                out.skipped.append(Skipped(shown, "not an image file name", "ignored"))
            else:
                out.candidates.append(_Candidate(label, folder, entry.path, True, escape(rel), shown))
        stack.extend(reversed(subfolders))  # depth-first, in name order


def _link_target(link: str, root_real: str) -> tuple[str | None, str]:
    """The file a link leads to if it stays inside the data folder, else why it is not followed."""
    try:
        target = os.path.realpath(link, strict=True)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
            return None, "symbolic link loop (not followed)"
        return None, "broken symbolic link"
    if os.path.commonpath([root_real, target]) != root_real:
        return None, "symbolic link leading outside the data folder (not followed)"
    if os.path.isdir(target):
        return None, "symbolic link to a folder (not followed)"
    return target, ""


@dataclass
class _Collected:
    pixels: np.ndarray
    labels: list[str]
    sources: list[str]
    sha256: list[str]
    skipped: list[Skipped]
    problems: list[str]


def collect(
    data_dirs: Sequence[Path],
    constraint: images.ImageConstraint,
    *,
    known: dict[str, tuple[str, str]] | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> _Collected:
    """Decode every candidate image; ``known`` maps digests already in the batch to (label, source)."""
    found = scan(data_dirs)
    pixels = np.empty((len(found.candidates), *constraint.shape), dtype=np.uint8)
    labels: list[str] = []
    sources: list[str] = []
    digests: list[str] = []
    seen: dict[str, tuple[str, str]] = dict(known or {})
    usable: Counter[str] = Counter()
    conflicts: list[str] = []
    tasks = [(c.open_path, c.nofollow) for c in found.candidates]
    total = len(tasks)
    results = decode_all(tasks, constraint, workers)
    for done, (cand, (ok, array, info)) in enumerate(zip(found.candidates, results, strict=True), 1):
        if progress is not None:
            progress(done, total)
        if not ok or array is None:
            found.skipped.append(Skipped(cand.shown, info, "unreadable"))
            continue
        usable[cand.folder] += 1
        if info in seen:
            label, where = seen[info]
            if label != cand.label:
                conflicts.append(
                    f"the same image is labelled {label!r} in {where} and {cand.label!r} in {cand.shown}"
                )
            else:
                found.skipped.append(Skipped(cand.shown, f"same image as {where}", "duplicate"))
            continue
        seen[info] = (cand.label, cand.shown)
        pixels[len(labels)] = array
        labels.append(cand.label)
        sources.append(cand.source)
        digests.append(info)
    problems = found.problems + conflicts
    problems += [f"label folder {f} holds no usable image" for f in found.folders if not usable[f]]
    return _Collected(pixels[: len(labels)], labels, sources, digests, found.skipped, problems)


def prepare(
    data_dirs: Sequence[Path],
    output: Path,
    manifest: Any,
    *,
    append: bool = False,
    force: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    on_wait: Callable[[], None] | None = None,
    wait: bool = True,
) -> Report:
    """Turn labelled image folders into the batch file ``output`` for the model of ``manifest``.

    With ``append``, runs on one batch are serialized by a lock beside it (``on_wait`` is called
    if another holds it; with ``wait`` false a BusyError instead), so concurrent appends never
    lose examples.
    """
    if append and force:
        raise UsageError("--append and --force cannot be used together (--append keeps the batch)")
    if not data_dirs:
        raise UsageError("give at least one DATA_DIR")
    if output.is_dir():
        raise UsageError(f"{escape(str(output))} is a folder; give a file name for the batch, e.g. batch.npz")
    if not output.parent.is_dir():
        raise UsageError(f"folder {escape(str(output.parent))} does not exist; create it first")
    if output.exists() and not (append or force):
        raise UsageError(
            f"{escape(str(output))} already exists; pass --force to replace it or --append to add to it"
        )
    if not append:
        return _prepare(data_dirs, output, manifest, False, force, workers, progress)
    # Appending reads, extends and rewrites the batch: two at once would lose one's examples.
    busy = f"another prepare is appending to {escape(str(output))}; retry later or drop --no-wait"
    lock = FileLock(output.parent / f".{output.name}-lock", busy)
    with lock.acquire(wait=wait, on_wait=on_wait):
        return _prepare(data_dirs, output, manifest, True, force, workers, progress)


def _prepare(
    data_dirs: Sequence[Path],
    output: Path,
    manifest: Any,
    append: bool,
    force: bool,
    workers: int | None,
    progress: Progress | None,
) -> Report:
    existing = load_batch(output) if append and output.exists() else None
    known: dict[str, tuple[str, str]] = {}
    if existing is not None:
        check_batch_fits(existing, manifest, escape(str(output)))
        for label, source, digest in zip(existing.labels, existing.sources, existing.sha256, strict=True):
            known.setdefault(digest, (label, f"{source} (already in {escape(output.name)})"))
    found = collect(data_dirs, manifest.constraint, known=known, workers=workers, progress=progress)
    batch = _merge(existing, found, manifest)
    nothing = batch is None and existing is None
    problems = found.problems + ([_nothing_message(data_dirs)] if nothing and not found.problems else [])
    if UNKNOWN in found.labels and UNKNOWN not in manifest.labels:  # `update` would refuse the batch
        problems.append(
            f"label {UNKNOWN!r} is reserved for the predictions the model rejects; rename its folder"
        )
    final = batch if batch is not None else existing
    report = Report(
        output=escape(str(output)),
        written=False,
        appended=existing is not None,
        model_name=manifest.name,
        model_id=manifest.model_id,
        examples=len(final) if final is not None else 0,
        added=len(found.labels),
        labels=final.label_counts() if final is not None else {},
        added_labels=dict(sorted(Counter(found.labels).items())),
        skipped=tuple(found.skipped),
        problems=tuple(problems),
    )
    if problems:
        others = len(problems) - 1
        more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
        raise PrepareError(f"{problems[0]}{more}; no batch written", report)
    if batch is None:  # --append and every image was already in the batch
        return report
    save_batch(output, batch, force=append or force)
    return replace(report, written=True)


def _merge(existing: Batch | None, found: _Collected, manifest: Any) -> Batch | None:
    """The new batch: the existing examples (if any) followed by the new ones; None if nothing new."""
    if not found.labels:
        return None
    pixels = found.pixels
    labels, sources, digests = tuple(found.labels), tuple(found.sources), tuple(found.sha256)
    if existing is not None:
        pixels = np.concatenate([existing.pixels, pixels])
        labels, sources = existing.labels + labels, existing.sources + sources
        digests = existing.sha256 + digests
    return Batch(pixels, labels, sources, digests, manifest.constraint, manifest.model_id, manifest.name)


def _nothing_message(data_dirs: Sequence[Path]) -> str:
    shown = ", ".join(escape(str(d)) for d in data_dirs)
    return f"no usable image found in {shown}; expected DATA_DIR/<label>/<image files>"

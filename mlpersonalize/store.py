"""Where models live: the bundled original, personalized copies in the user data dir, overrides.

Resolution, the one place it happens (like the Core ML sample: the updated model if it exists,
else the bundled original): ``--model`` flag, then ``MLPERSONALIZE_MODEL``, then the personalized
copy of the bundled model in ``MLPERSONALIZE_HOME`` (default: the platform's user data dir), then
the bundled original, which is never modified.

A personalized model lives at ``<home>/models/<name>/`` as ``versions/<id>/`` folders (each a
complete package) and a ``current`` symlink naming one of them; see ``swap``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import platformdirs

from . import fsio
from .errors import ModelError, UsageError
from .faults import fault_point
from .fsio import FileLock, fsync_dir, makedirs_durable, storage_error

T = TypeVar("T")

BUNDLED_NAME = "doodles"
Source = Literal["flag", "environment", "personalized", "bundled"]

# Version ids whose swap (``current`` moved, or removed by reset) this process committed. Once
# it is non-empty the run's outcome is success whatever signal comes next (cli.app reads it).
swapped: list[str] = []


def bundled_model_path() -> Path:
    """The shipped original: inside the installed package, or sample_models/ in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_bundled" / BUNDLED_NAME, here.parent / "sample_models" / BUNDLED_NAME):
        if (candidate / "manifest.json").is_file():
            return candidate
    return here.parent / "sample_models" / BUNDLED_NAME


def home() -> Path:
    """The user data dir (MLPERSONALIZE_HOME, else the platform's)."""
    env = os.environ.get("MLPERSONALIZE_HOME")
    if env:
        path = Path(env).expanduser()
        if path.exists() and not path.is_dir():
            raise UsageError(f"MLPERSONALIZE_HOME={env} is not a folder; point it at a folder (or unset it)")
        return path
    return Path(platformdirs.user_data_dir("mlpersonalize", appauthor=False))


def model_home(name: str = BUNDLED_NAME) -> Path:
    """The folder that holds a personalized model's versions, pointer and lock."""
    return home() / "models" / name


def current_link(name: str = BUNDLED_NAME) -> Path:
    return model_home(name) / "current"


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    source: Source


def resolve_model(flag: Path | None = None) -> ResolvedModel:
    """The package a command uses (flag, environment, personalized copy, bundled original)."""
    if flag is not None:
        named = personalized_by_name(flag)
        if named is not None:
            return ResolvedModel(_follow(named), "personalized")
        path = flag.expanduser()
        if not path.exists() and len(path.parts) == 1:
            raise ModelError(
                f"{flag}: no such model package, and no personalized model of that name "
                f"in {home() / 'models'}"
            )
        return ResolvedModel(_follow(path), "flag")
    env = os.environ.get("MLPERSONALIZE_MODEL")
    if env:
        return ResolvedModel(_follow(Path(env).expanduser()), "environment")
    link = current_link()
    if link.is_symlink() and (link / "manifest.json").is_file():
        return ResolvedModel(Path(os.path.realpath(link)), "personalized")
    return ResolvedModel(bundled_model_path(), "bundled")


def personalized_by_name(flag: Path) -> Path | None:
    """``--model NAME``: the model home of the personalized model NAME, when no file or folder of
    that name exists here (a path always wins) and NAME has a personalized copy in the store."""
    name = str(flag)
    if os.sep in name or (os.altsep and os.altsep in name) or name in ("", ".", "..") or flag.exists():
        return None
    root = model_home(name)
    return root if (root / "current").is_symlink() else None


def _follow(path: Path) -> Path:
    """A personalized model's folder given as the model home resolves to its current version.

    Resolving the link once, here, means a command keeps reading one version even if an
    update swaps ``current`` while it runs.
    """
    link = path / "current"
    if not (path / "manifest.json").exists() and link.is_symlink():
        return Path(os.path.realpath(link))
    return path


def open_model(flag: Path | None, load: Callable[[ResolvedModel], T], attempts: int = 3) -> T:
    """``load(resolve_model(flag))``, resolved again if a reset or prune deleted the version
    between resolving and loading it: a reader never fails because a writer moved on.

    A file that vanished is reported as such, never as a corrupt model.
    """
    for attempt in range(attempts):
        resolved = resolve_model(flag)
        try:
            return load(resolved)
        except (ModelError, OSError) as exc:
            # a version folder disappears at once (renamed away, then deleted): only then retry
            if resolved.path.exists() or resolved.path.parent.name != VERSIONS:
                raise
            if attempt + 1 < attempts:
                continue
            raise ModelError(
                f"{resolved.path} was deleted while it was being read (a reset, rollback or update "
                "cleanup ran at the same time); run the command again"
            ) from exc
    raise AssertionError("unreachable")


# --- versions, pointer swap, lock, rollback, reset -------------------------------------------

VERSIONS = "versions"
LOCK = "lock"
TEMP_PREFIX = ".tmp-"
DEFAULT_KEEP = 3


def versions_dir(root: Path) -> Path:
    return root / VERSIONS


def list_versions(root: Path) -> list[str]:
    """Committed version ids of a model home, oldest first (temp folders excluded)."""
    folder = versions_dir(root)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.isdigit() and p.is_dir())


def current_version(root: Path) -> str | None:
    """The version id ``current`` names, or None when there is no personalized copy."""
    link = root / "current"
    if not link.is_symlink():
        return None
    name = Path(os.readlink(link)).name
    return name if (versions_dir(root) / name / "manifest.json").is_file() else None


def current_path(root: Path) -> Path | None:
    version = current_version(root)
    return versions_dir(root) / version if version else None


def is_in_store(path: Path) -> Path | None:
    """The model home that holds ``path`` as one of its versions, else None."""
    try:
        real = path.resolve()
        models = (home() / "models").resolve()
    except OSError:
        return None
    if real.parent.name == VERSIONS and real.parent.parent.parent == models:
        return real.parent.parent
    return None


class ModelLock(FileLock):
    """The lock that serializes writers of one personalized model: ``<model home>/lock``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root / LOCK, f"another update of {root} is running; retry later or drop --no-wait")
        self.root = root


def clean_stale(root: Path) -> list[str]:
    """Remove temp folders and half-made links left by killed runs (call with the lock held)."""
    removed: list[str] = []
    folder = versions_dir(root)
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        if entry.name.startswith(TEMP_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    for entry in root.glob(f"{TEMP_PREFIX}current*") if root.is_dir() else []:
        entry.unlink(missing_ok=True)
        removed.append(entry.name)
    return removed


def new_temp_dir(root: Path) -> Path:
    """A fresh, empty ``versions/.tmp-…`` folder beside the versions (same filesystem: rename works)."""

    folder = versions_dir(root)
    makedirs_durable(folder)
    temp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=folder))
    temp.chmod(fsio.file_mode(directory=True))  # mkdtemp makes it 0700; the umask decides, as for batches
    return temp


def publish_version(
    root: Path,
    write: Callable[[Path], object],
    keep: int = DEFAULT_KEEP,
    fault: Callable[[str], None] | None = None,
) -> tuple[str, list[str]]:
    """Make what ``write(temp)`` puts in a fresh temp folder the next version of the model at
    ``root`` and point ``current`` at it; return the version and the versions pruned.

    The caller holds the model's lock. Commit runs with signals deferred (once begun, the swap
    finishes); on any failure before it the temp folder is removed and an OSError becomes a
    StorageError (exit 7). Pruning comes after the swap is durable; if the disk refuses it the
    version stays committed and the next run removes what is left.
    """
    try:
        temp = new_temp_dir(root)
    except OSError as exc:
        raise storage_error("create a temporary folder in", versions_dir(root), exc) from exc
    try:
        write(temp)
        with fsio.signals_deferred():
            version = commit(root, temp, fault)
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        raise storage_error("swap in the updated model at", root, exc) from exc
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    with fsio.signals_deferred():
        try:
            pruned = prune(root, keep, fault)
        except OSError:
            pruned = []  # committed; the next run removes what is left
    return version, pruned


def next_version(root: Path) -> str:
    existing = [int(v) for v in list_versions(root)]
    return f"{(max(existing) + 1 if existing else 1):06d}"


def point_current(
    root: Path, version: str, fault: Callable[[str], None] | None = None, stage: str = "update"
) -> None:
    """Atomically make ``current`` name ``versions/<version>``: new link beside, rename over, fsync.

    A reader resolves ``current`` once and sees the old or the new target, never neither;
    ``os.replace`` of a symlink is atomic where ``ln -sfn`` is not. ``stage`` names the fault
    points (``update:before-swap``, ``rollback:after-swap``, …).
    """
    temp = root / f"{TEMP_PREFIX}current-{os.getpid()}"
    temp.unlink(missing_ok=True)
    try:
        os.symlink(f"{VERSIONS}/{version}", temp)
        if fault:
            fault(f"{stage}:before-swap")
        os.replace(temp, root / "current")
        swapped.append(version)
    except BaseException:
        temp.unlink(missing_ok=True)  # a failed swap leaves no half-made link behind
        raise
    if fault:
        fault(f"{stage}:after-swap")
    fsync_dir(root)  # if this fails the caller reports it: never retried as if it had succeeded


def commit(root: Path, temp: Path, fault: Callable[[str], None] | None = None) -> str:
    """Rename a complete, fsynced package folder to the next version id and point ``current`` at it.

    If the swap does not happen (disk error), the renamed folder is removed again, so a failed
    update never leaves a version that ``current`` never named (rollback would step onto it).
    """

    version = next_version(root)
    final = versions_dir(root) / version
    os.rename(temp, final)
    try:
        fsync_dir(versions_dir(root))
        point_current(root, version, fault)
    except BaseException:
        if current_version(root) != version:
            trash = versions_dir(root) / f"{TEMP_PREFIX}old-{version}"
            try:
                os.rename(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            except OSError:
                pass  # the disk refuses even this; the folder stays, never named by `current`
        raise
    return version


def prune(root: Path, keep: int = DEFAULT_KEEP, fault: Callable[[str], None] | None = None) -> list[str]:
    """Keep ``current`` and the versions rollback would step back to, ``keep`` in all; delete the rest.

    Called only after the swap is durable. The version this run just replaced stays whatever
    ``keep`` says, until the next run: a reader may have opened it a moment before the swap.
    Versions rollback can never reach (published by a run killed before its swap, or rolled
    back from) go first.
    """
    if fault:
        fault("update:during-cleanup")
    chain = rollback_chain(root)
    kept = set(chain[: max(1, keep)]) | set(chain[1:2])
    doomed = [v for v in list_versions(root) if v not in kept]
    for version in doomed:
        # Rename first so a crash mid-delete never leaves a half-deleted folder that looks committed.
        trash = versions_dir(root) / f"{TEMP_PREFIX}old-{version}"
        os.rename(versions_dir(root) / version, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def model_root(flag: Path | None = None) -> Path:
    """The model home rollback/reset act on: the flag's (or $MLPERSONALIZE_MODEL's), else the bundled."""
    given = (
        flag
        if flag is not None
        else (Path(os.environ["MLPERSONALIZE_MODEL"]) if os.environ.get("MLPERSONALIZE_MODEL") else None)
    )
    if given is None:
        return model_home(BUNDLED_NAME)
    named = personalized_by_name(given)
    if named is not None:
        return named
    given = given.expanduser()
    if (given / VERSIONS).is_dir() or (given / "current").is_symlink():
        return given
    root = is_in_store(given)
    if root is not None:
        return root
    if (given / "manifest.json").is_file():  # an original package: its personalized copy
        from .manifest import read_manifest  # lazy: manifest pulls numpy + PIL (~50 ms)

        return model_home(read_manifest(given).name)
    raise ModelError(f"{given} is neither a model package nor a personalized model")


def rollback(root: Path, wait: bool = True, on_wait: Callable[[], None] | None = None) -> str:
    """Point ``current`` at the version before it (under the lock); returns that version id."""
    if current_version(root) is None:
        raise ModelError(f"there is no personalized model at {root}; nothing to roll back")
    with ModelLock(root).acquire(wait, on_wait):
        try:
            return _rollback_locked(root)
        except OSError as exc:
            raise storage_error("roll back the model at", root, exc) from exc


def _rollback_locked(root: Path) -> str:
    current = current_version(root)
    if current is None:
        raise ModelError(f"there is no personalized model at {root}; nothing to roll back")
    target = _replaced_by(root, current)
    if target is None:
        raise ModelError(
            f"no version before {current} is kept at {root}; nothing to roll back to "
            "(`mlpersonalize reset` returns to the original)"
        )
    point_current(root, target, fault_point, stage="rollback")
    return target


def rollback_chain(root: Path) -> list[str]:
    """``current``, the version it replaced, the one that replaced, …: what rollback steps through."""
    chain: list[str] = []
    version = current_version(root)
    while version is not None and version not in chain:
        chain.append(version)
        version = _replaced_by(root, version)
    return chain


def _replaced_by(root: Path, version: str) -> str | None:
    """The version ``version`` replaced when it was swapped in, if it is still kept.

    Updates record it in their history entry; for versions without that record the newest
    older version stands in.
    """
    # lazy: manifest pulls numpy + PIL (~50 ms)
    from .manifest import read_manifest

    try:
        history = read_manifest(versions_dir(root) / version).history
    except ModelError:
        history = ()
    if history and "replaced_version" in history[-1]:
        replaced = history[-1]["replaced_version"]
        kept = isinstance(replaced, str) and replaced in list_versions(root)
        return replaced if kept else None
    older = [v for v in list_versions(root) if v < version]
    return older[-1] if older else None


def reset(root: Path, wait: bool = True, on_wait: Callable[[], None] | None = None) -> list[str]:
    """Drop the personalized copy (under the lock); returns the versions deleted (none: nothing to do)."""
    if not root.is_dir():
        return []
    with ModelLock(root).acquire(wait, on_wait):
        try:
            return _reset_locked(root)
        except OSError as exc:
            raise storage_error("reset the model at", root, exc) from exc


def _reset_locked(root: Path) -> list[str]:
    """Unlink ``current`` (durably) first, so readers fall back to the original, then delete versions."""

    link = root / "current"
    if link.is_symlink():
        link.unlink()
        swapped.append("")
        fsync_dir(root)
    versions = list_versions(root)
    for version in versions:
        trash = versions_dir(root) / f"{TEMP_PREFIX}old-{version}"
        os.rename(versions_dir(root) / version, trash)
        shutil.rmtree(trash, ignore_errors=True)
    clean_stale(root)
    return versions


# --- which copy answers (predict/inspect notes, update's hint) ----------------------------------


def personalized_copy(path: Path, name: str) -> Path | None:
    """The current version of the personalized copy of the package at ``path`` (manifest name
    ``name``), when one exists in the store and ``path`` is not a version of it."""
    root = model_home(name)
    link = root / "current"
    if not link.is_symlink():
        return None
    resolved = path.resolve()
    if resolved.is_relative_to(root.resolve()):
        return None  # the copy itself (or one of its versions)
    return Path(os.path.realpath(link))


def copy_note(path: Path, source: str, name: str) -> str | None:
    """What ``predict``/``inspect`` say on stderr when a package named by path or by
    $MLPERSONALIZE_MODEL is an original whose personalized copy exists: the path is used, as
    given, and the copy answers with ``--model NAME`` (README, "Which model a command uses")."""
    if source not in ("flag", "environment"):
        return None
    copy = personalized_copy(path, name)
    if copy is None:
        return None
    return f"note: {path} is the original; its personalized copy ({copy.name}) answers with --model {name}"


def update_hint(flag: Path | None, model: Path, version: str | None) -> str:
    """What ``update`` adds to its summary when it updated an original named by path: how to
    name the personalized copy it wrote (``model``, a version in the store)."""
    if version is None or flag is None or personalized_by_name(flag) is not None:
        return ""
    return f"; use it with --model {model.parent.parent.name}"

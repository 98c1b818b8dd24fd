"""P5: disk full, read-only, permission and I/O errors give one `Error:` line and exit 7 (IO); the
old model and batch stay intact, no temp file is left, and a failed fsync is never retried as if it
had succeeded.

Errors are injected in process through patched ``os`` calls (every write path: batch file, package
files, manifest with its history, the pointer swap, the directory fsyncs), and for real with a tiny
tmpfs / a read-only bind mount in a user namespace (``unshare -rm``) when available.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from clirun import main_cli as run
from PIL import Image
from reliability_kit import NEW, ROOT, assert_healthy, personalized, stale_entries, tree, write_batch

from mlpersonalize import store


class Injector:
    """Makes one os call fail with ``err`` when ``match(path)``; remembers every call per path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fds: dict[int, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.monkeypatch = monkeypatch
        real_open = os.open

        def _open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
            fd = real_open(path, flags, mode, dir_fd=dir_fd)
            self.fds[fd] = os.path.abspath(os.fsdecode(path))
            return fd

        monkeypatch.setattr(os, "open", _open)

    def fail(self, name: str, err: int, match: Callable[[str], bool]) -> None:
        real = getattr(os, name)
        by_fd = name in ("write", "fsync")

        def call(first, *args, **kw):  # type: ignore[no-untyped-def]
            if by_fd:
                where = self.fds.get(first, "?")
            else:  # "src -> dst" for rename/replace/symlink/link: a matcher can look at either
                where = " -> ".join(os.path.abspath(os.fsdecode(p)) for p in (first, *args[:1]))
            self.calls.append((name, where))
            if match(where):
                raise OSError(err, os.strerror(err), where)
            return real(first, *args, **kw)

        self.monkeypatch.setattr(os, name, call)


def _in_temp(path: str) -> bool:
    return f"/{store.TEMP_PREFIX}" in path


CASES = {
    "package-write-ENOSPC": (
        "write",
        errno.ENOSPC,
        lambda p: _in_temp(p) and p.endswith(".onnx"),
        "disk is full",
    ),
    "history-manifest-ENOSPC": (
        "write",
        errno.ENOSPC,
        lambda p: _in_temp(p) and p.endswith("manifest.json"),
        "disk is full",
    ),
    "package-fsync-EIO": ("fsync", errno.EIO, lambda p: _in_temp(p) and p.endswith("head.onnx"), "I/O error"),
    "folder-fsync-EIO": ("fsync", errno.EIO, lambda p: p.endswith("/versions"), "I/O error"),
    "pointer-symlink-ENOSPC": ("symlink", errno.ENOSPC, lambda p: True, "disk is full"),
    "pointer-swap-EIO": ("replace", errno.EIO, lambda p: p.endswith("/current"), "I/O error"),
    "pointer-swap-EROFS": ("replace", errno.EROFS, lambda p: True, "read-only"),
    "publish-EACCES": ("rename", errno.EACCES, lambda p: _in_temp(p), "permission denied"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_p5_update_disk_error_keeps_the_old_model_and_leaves_no_temp(
    case: str,
    doodle_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = personalized(doodle_model, tmp_path)
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[1:2])
    before = tree(home)
    name, err, match, words = CASES[case]
    inject = Injector(monkeypatch)
    inject.fail(name, err, match)
    code, out, stderr = run(["update", str(batch), "--model", str(home), "--epochs", "2"], capsys)
    monkeypatch.undo()
    assert (code, out) == (7, ""), stderr
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1 and words in stderr
    assert tree(home) == before, "the old model, its pointer and versions changed"
    assert stale_entries(home) == []
    failed = [c for c in inject.calls if c[0] == name and match(c[1])]
    assert len(failed) == 1, f"the failed {name} was retried: {failed}"


def test_p5_fsync_failure_after_the_swap_is_reported_not_retried(
    doodle_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pointer moved but its folder could not be made durable: exit 7, never "Updated"."""
    home = personalized(doodle_model, tmp_path)
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[1:2])
    inject = Injector(monkeypatch)
    inject.fail("fsync", errno.EIO, lambda p: p == str(home))
    code, out, stderr = run(["update", str(batch), "--model", str(home), "--epochs", "2"], capsys)
    monkeypatch.undo()
    assert code == 7 and "Updated" not in stderr and stderr.count("\n") == 1
    assert [c for c in inject.calls if c == ("fsync", str(home))] == [("fsync", str(home))]
    assert "000001" in store.list_versions(home)  # the old version is never deleted on this path
    assert_healthy(home)


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_p5_batch_write_error_keeps_the_old_batch(
    err: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_model: Path,
) -> None:
    data = tmp_path / "data"
    for i, label in enumerate(("circle", "square")):
        (data / label).mkdir(parents=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40), np.uint8)).save(
            data / label / "a.png"
        )
    out = tmp_path / "b.npz"
    out.write_bytes(b"old batch")
    inject = Injector(monkeypatch)
    inject.fail("fsync", err, lambda p: "/.b.npz." in p)
    code, stdout, stderr = run(
        ["prepare", str(data), "-o", str(out), "-m", str(tiny_model), "--force"], capsys
    )
    monkeypatch.undo()
    assert code == 7 and stderr.startswith("Error: ") and stderr.count("\n") == 1, stderr
    assert out.read_bytes() == b"old batch"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.npz")] == []
    assert len([c for c in inject.calls if c[0] == "fsync" and "/.b.npz." in c[1]]) == 1


def test_p5_rollback_error_is_an_io_error(
    doodle_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = personalized(doodle_model, tmp_path)
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[1:2])
    assert run(["update", str(batch), "--model", str(home), "--epochs", "2"], capsys)[0] == 0
    before = tree(home)
    Injector(monkeypatch).fail("replace", errno.EROFS, lambda p: True)
    code, _, stderr = run(["rollback", "--model", str(home)], capsys)
    monkeypatch.undo()
    assert code == 7 and stderr.startswith("Error: cannot roll back") and "read-only" in stderr
    assert tree(home) == before and stale_entries(home) == []


# --- real filesystems in a user namespace --------------------------------------------------------


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True
    )
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(not _unshare_works(), reason="no user namespaces with tmpfs here")


def _namespace(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "-rm", "sh", "-ec", script],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, **env, "PY": sys.executable},
    )


@needs_unshare
def test_p5_update_on_a_full_tmpfs(doodle_model: Path, tmp_path: Path) -> None:
    home = personalized(doodle_model, tmp_path)
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[1:2])
    # tmpfs charges whole 4 KiB pages: room for the home and half a version more, not a whole one.
    used = sum(-(-p.stat().st_size // 4096) * 4 for p in home.rglob("*") if p.is_file())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = f"""
mount -t tmpfs -o size={used + used // 2}k tmpfs "$MNT"
cp -a "$SRC" "$MNT/home"
set +e
MLPERSONALIZE_HOME="$MNT/home" "$PY" -m mlpersonalize update "$BATCH" --model "$MNT/home/models/tiny" --epochs 2
echo "exit=$?" >&2
ls -a "$MNT/home/models/tiny" "$MNT/home/models/tiny/versions" >&2
MLPERSONALIZE_HOME="$MNT/home" "$PY" -c "
import sys; sys.path.insert(0, 'tests')
from pathlib import Path
from reliability_kit import assert_healthy, stale_entries
assert_healthy(Path('$MNT/home/models/tiny'))
assert stale_entries(Path('$MNT/home/models/tiny')) == []
print('healthy')"
"""
    result = _namespace(script, {"MNT": str(mnt), "SRC": str(tmp_path / "home"), "BATCH": str(batch)})
    assert "exit=7" in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "disk is full" in lines[0], result.stderr
    assert "healthy" in result.stdout, result.stderr


@needs_unshare
def test_p5_update_and_prepare_on_a_read_only_mount(doodle_model: Path, tmp_path: Path) -> None:
    home = personalized(doodle_model, tmp_path)
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[1:2])
    (tmp_path / "data" / "circle").mkdir(parents=True)
    Image.new("L", (30, 30), 255).save(tmp_path / "data" / "circle" / "a.png")
    before = tree(home)
    script = """
mount --bind "$HOME_DIR" "$HOME_DIR"
mount -o remount,bind,ro "$HOME_DIR"
set +e
MLPERSONALIZE_HOME="$HOME_DIR" "$PY" -m mlpersonalize update "$BATCH" --model "$HOME_DIR/models/tiny" --epochs 2
echo "update-exit=$?" >&2
"$PY" -m mlpersonalize prepare "$DATA" -o "$HOME_DIR/b.npz" -m "$MODEL"
echo "prepare-exit=$?" >&2
"""
    result = _namespace(
        script,
        {
            "HOME_DIR": str(tmp_path / "home"),
            "BATCH": str(batch),
            "DATA": str(tmp_path / "data"),
            "MODEL": str(doodle_model),
        },
    )
    assert "update-exit=7" in result.stderr and "prepare-exit=7" in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2 and all("read-only" in line for line in errors), result.stderr
    assert tree(home) == before


@needs_unshare
def test_p5_prepare_on_a_full_tmpfs_keeps_the_old_batch(tiny_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for label in ("circle", "square"):
        (data / label).mkdir(parents=True)
        for i in range(30):  # noise compresses badly: the batch is far bigger than the tmpfs
            Image.fromarray(rng.integers(0, 255, (28, 28), np.uint8)).save(data / label / f"{i}.png")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = """
mount -t tmpfs -o size=16k tmpfs "$MNT"
printf 'old batch' > "$MNT/b.npz"
set +e
"$PY" -m mlpersonalize prepare "$DATA" -o "$MNT/b.npz" -m "$MODEL" --force
echo "exit=$?" >&2
echo "content=$(cat "$MNT/b.npz")" >&2
echo "files=$(ls -A "$MNT" | tr '\\n' ' ')" >&2
"""
    result = _namespace(script, {"MNT": str(mnt), "DATA": str(data), "MODEL": str(tiny_model)})
    assert "exit=7" in result.stderr and "content=old batch" in result.stderr, result.stderr
    assert "files=b.npz \n" in result.stderr + "\n" or "files=b.npz " in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")][0].endswith(
        "the disk is full"
    )

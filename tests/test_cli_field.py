"""Issue 16's field report, one test per broken promise: pipes, names on a terminal, kills, resets.

Each test drives the CLI as a user or operator does (a subprocess, or main() in-process where a
signal or a terminal has to be simulated) and checks what they rely on.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from clirun import main_cli, run_cli
from PIL import Image
from reliability_kit import NEW, build_doodle_package, write_batch

from mlpersonalize import store, updater
from mlpersonalize.cli import _output
from mlpersonalize.names import quote, unquote


@pytest.fixture(scope="module")
def doodle_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_doodle_package(tmp_path_factory.mktemp("field") / "tiny")


@pytest.fixture
def doodle(doodle_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "original"
    shutil.copytree(doodle_template, target)
    return target


def png(path: Path, size: int = 28, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def name(raw: bytes, folder: Path) -> Path:
    """A path whose last part is the raw bytes ``raw`` (not necessarily UTF-8)."""
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), raw)))


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs behave as on a terminal (stdout and stderr), 100 columns wide."""
    monkeypatch.setattr(_output.Output, "stdout_is_terminal", staticmethod(lambda: True))
    monkeypatch.setattr(_output.Output, "stderr_is_terminal", staticmethod(lambda: True))
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(_output.out, "_stdout", None)
    monkeypatch.setattr(_output.out, "_stderr", None)


def first_column(table: str) -> str:
    """A rich table's first column, its wrapped lines joined."""
    return "".join(line.split("│")[1].strip() for line in table.splitlines() if line.count("│") > 1)


# --- 1. a killed prepare leaves no worker and no held lock -------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _lock_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_prepare_leaves_no_worker_holding_the_batch_lock(tiny_model: Path, tmp_path: Path) -> None:
    for i in range(400):  # enough (and large enough) images that two workers decode for a while
        png(tmp_path / "data" / f"l{i % 4}" / f"{i}.png", size=400, seed=i)
    batch = tmp_path / "b.npz"
    env = {**os.environ, "MLPERSONALIZE_MODEL": str(tiny_model)}
    args = [sys.executable, "-m", "mlpersonalize", "prepare", str(tmp_path / "data"), "-o", str(batch)]
    child = subprocess.Popen([*args, "--append"], env=env, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while not workers and child.poll() is None and time.monotonic() < deadline:
        workers = _children(child.pid)
        time.sleep(0.01)
    assert workers, "prepare finished before its workers could be seen; give it more images"
    time.sleep(0.2)  # the workers are decoding, the batch lock is held
    child.kill()
    child.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{w}") for w in workers):
        time.sleep(0.05)
    alive = [w for w in workers if os.path.exists(f"/proc/{w}") and _not_zombie(w)]
    assert not alive, f"workers {alive} outlived their killed parent"
    assert _lock_free(tmp_path / ".b.npz-lock"), "the batch lock is still held"
    small = tmp_path / "small"
    png(small / "a" / "x.png")
    done = run_cli("prepare", str(small), "-o", str(batch), "--append", "--no-wait", env=env, timeout=60)
    assert done.returncode == 0, done.stderr


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_prepare_no_wait_exits_5_while_another_appends(tiny_model: Path, tmp_path: Path) -> None:
    png(tmp_path / "data" / "a" / "x.png")
    fd = os.open(tmp_path / ".b.npz-lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        env = {"MLPERSONALIZE_MODEL": str(tiny_model)}
        got = run_cli(
            "prepare", str(tmp_path / "data"), "-o", str(tmp_path / "b.npz"), "--append", "--no-wait", env=env
        )
    finally:
        os.close(fd)
    assert got.returncode == 5 and got.stderr.startswith("Error: another prepare is appending")
    assert not (tmp_path / "b.npz").exists()


def test_lock_descriptor_is_closed_in_forked_children(tmp_path: Path) -> None:
    from mlpersonalize.fsio import FileLock

    with FileLock(tmp_path / "lock", "busy").acquire():
        pid = os.fork()
        if pid == 0:  # the child: the parent's lock must not be reachable through any descriptor
            held = [fd for fd in map(int, os.listdir("/proc/self/fd")) if _is_lock(fd, tmp_path / "lock")]
            os._exit(1 if held else 0)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _is_lock(fd: int, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path)
    except OSError:
        return False


# --- 2. reset / cleanup while predict reads -----------------------------------------------------


def test_predict_retries_when_its_version_is_deleted_under_it(
    doodle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlpersonalize import package

    batch = write_batch(tmp_path / "b.npz", doodle, NEW[:1])
    updater.update([batch], updater.UpdateOptions(model=doodle, epochs=1))
    more = write_batch(tmp_path / "c.npz", doodle, NEW[:1], seed=8)  # new drawings: a second version
    updater.update([more], updater.UpdateOptions(model=store.model_home("tiny"), epochs=1))
    root = store.model_home("tiny")
    assert store.current_version(root) == "000002"
    real_load = package.load_package
    calls = []

    def load_after_a_writer_moved_on(path: Path, *args: object, **kwargs: object) -> object:
        if not calls and path.name == "000002":  # resolved 000002; a rollback + cleanup runs now
            store.point_current(root, "000001")
            os.rename(path, path.parent / ".tmp-old-000002")
            shutil.rmtree(path.parent / ".tmp-old-000002")
        calls.append(path.name)
        return real_load(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(package, "load_package", load_after_a_writer_moved_on)
    code, out, err = main_cli(["predict", str(png(tmp_path / "x.png")), "--model", "tiny"], capsys)
    assert code == 0, err
    assert out.startswith(str(tmp_path / "x.png") + "\t") and err == ""
    assert "000001" in calls


def test_a_version_deleted_for_good_is_not_called_corrupt(doodle: Path, tmp_path: Path) -> None:
    from mlpersonalize.errors import ModelError
    from mlpersonalize.package import load_package

    batch = write_batch(tmp_path / "b.npz", doodle, NEW[:1])
    updater.update([batch], updater.UpdateOptions(model=doodle, epochs=1))
    root = store.model_home("tiny")
    version = store.current_path(root)
    assert version is not None

    def load(resolved: store.ResolvedModel) -> object:
        shutil.rmtree(version)  # every attempt finds its version gone
        return load_package(resolved.path)

    with pytest.raises(ModelError, match="was deleted while it was being read"):
        store.open_model(version, load)


# --- 3. a closed stdout --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["predict", "{folder}"], ["inspect"], ["predict", "{folder}", "--json"]])
def test_closed_stdout_ends_quietly_with_exit_0(tiny_model: Path, tmp_path: Path, command: list[str]) -> None:
    for i in range(3):
        png(tmp_path / "in" / f"{i}.png", seed=i)
    args = [part.format(folder=tmp_path / "in") for part in command]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlpersonalize", *args, "--model", str(tiny_model)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line: every write meets EPIPE
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


# --- 4. SIGTERM after the swap -------------------------------------------------------------------


def test_sigterm_after_the_swap_is_success_with_the_completed_event(
    doodle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = write_batch(tmp_path / "b.npz", doodle, NEW[:1])
    real = updater._completed

    def completed_then_sigterm(*args: object) -> dict:
        os.kill(os.getpid(), signal.SIGTERM)  # a supervisor stops the run just after the swap
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(updater, "_completed", completed_then_sigterm)
    monkeypatch.setattr(store, "swapped", [])
    code, out, err = main_cli(
        ["update", str(batch), "--model", str(doodle), "--json", "--epochs", "1"], capsys
    )
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["event"] == "completed" and err == ""
    assert store.current_version(store.model_home("tiny")) == "000001"


def test_sigterm_before_the_swap_still_means_nothing_changed(
    doodle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = write_batch(tmp_path / "b.npz", doodle, NEW[:1])
    real = updater._write_package

    def write_then_sigterm(*args: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(updater, "_write_package", write_then_sigterm)
    monkeypatch.setattr(store, "swapped", [])
    code, out, err = main_cli(["update", str(batch), "--model", str(doodle), "--epochs", "1"], capsys)
    assert code == 130 and err == "Error: interrupted; nothing was changed\n"
    assert store.current_version(store.model_home("tiny")) is None


# --- 5. and 6. names: TSV, JSON, the terminal ------------------------------------------------------

HOSTILE = [
    b"tab\there.png",
    b"new\nline.png",
    b"x\xe9.png",
    b"x\\xe9.png",
    b"\x1b[31mred.png",
    b"back\\slash.png",
]


def test_tsv_rows_read_back_to_the_exact_file_names(tiny_model: Path, tmp_path: Path) -> None:
    for i, raw in enumerate(HOSTILE):
        png(name(raw, tmp_path / "in"), seed=i)
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    got = subprocess.run(
        [sys.executable, "-m", "mlpersonalize", "predict", str(tmp_path / "in"), "--model", str(tiny_model)],
        capture_output=True,
    )
    assert got.returncode == 8
    lines = got.stdout.decode("utf-8").split("\n")[:-1]
    assert len(lines) == len(HOSTILE) + 1 and "\x1b" not in got.stdout.decode()
    names = {}
    for line in lines:
        fields = line.split("\t")
        if len(fields) == 4:  # an error row: empty label and confidence, the reason last
            assert fields[1] == fields[2] == "" and "broken.png" in fields[3]
        else:
            assert len(fields) == 3 and fields[1] and float(fields[2]) >= 0
        names[os.fsencode(unquote(fields[0]))] = fields
    assert set(names) == {
        os.path.join(os.fsencode(tmp_path / "in"), raw) for raw in [*HOSTILE, b"broken.png"]
    }


def test_json_names_are_distinct_for_a_byte_and_its_escaped_spelling(
    tiny_model: Path, tmp_path: Path
) -> None:
    png(name(b"x\xe9.png", tmp_path / "in"))
    png(name(b"x\\xe9.png", tmp_path / "in"), seed=1)
    got = run_cli("predict", str(tmp_path / "in"), "--model", str(tiny_model), "--json")
    files = [json.loads(line)["file"] for line in got.stdout.splitlines()]
    assert len(set(files)) == 2
    assert {os.fsencode(unquote(f)) for f in files} == {
        os.path.join(os.fsencode(tmp_path / "in"), raw) for raw in (b"x\xe9.png", b"x\\xe9.png")
    }


def test_quote_round_trips_and_never_lets_a_control_character_through() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    @hypothesis.given(st.binary(max_size=40))
    @hypothesis.settings(max_examples=300, deadline=None)
    def check(raw: bytes) -> None:
        text = os.fsdecode(raw)
        shown = quote(text)
        assert unquote(shown) == text
        assert not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in shown)
        shown.encode("utf-8")

    check()


def test_escape_sequences_never_reach_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    from conftest import make_tiny_package

    model = make_tiny_package(tmp_path / "m", ["\x1b[31mred", "two\nlines", "plain"])
    png(tmp_path / "in" / "\x1b[2Jclear.png")
    (tmp_path / "in" / "\x1b]0;title\x07.png").write_bytes(b"broken")
    code, out, err = main_cli(["predict", str(tmp_path / "in"), "--model", str(model)], capsys)
    assert code == 8 and "\x1b" not in out + err
    assert "\\x1b[2Jclear.png" in first_column(out)
    code, out, err = main_cli(["inspect", "--model", str(model)], capsys)
    assert code == 0 and "\x1b" not in out + err
    label_line = next(line for line in out.splitlines() if line.startswith("3 labels"))
    assert "\\x1b[31mred" in label_line and "two\\nlines" in label_line
    png(tmp_path / "data" / "\x1b[31mlab" / "a.png")
    (tmp_path / "data" / "\x1b[31mlab" / "b\x1b[5m.png").write_bytes(b"broken")
    code, out, err = main_cli(
        ["prepare", str(tmp_path / "data"), "-o", str(tmp_path / "b.npz"), "-m", str(model)], capsys
    )
    assert code == 0 and "\x1b" not in out + err and "\\x1b[31mlab" in out


# --- 7. bad files named on the command line --------------------------------------------------------


def test_bad_arguments_are_error_entries_and_the_rest_is_classified(tiny_model: Path, tmp_path: Path) -> None:
    ok = png(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG nothing")
    got = run_cli(
        "predict",
        str(ok),
        str(tmp_path / "missing.png"),
        str(tmp_path / "corrupt.png"),
        "--model",
        str(tiny_model),
    )
    assert got.returncode == 8, got.stderr
    rows = [line.split("\t") for line in got.stdout.splitlines()]
    assert rows[0][0] == str(ok) and len(rows[0]) == 3
    assert rows[1][0] == str(tmp_path / "missing.png") and "No such file" in rows[1][3]
    assert rows[2][0] == str(tmp_path / "corrupt.png") and len(rows[2]) == 4
    assert got.stderr == "Error: 2 of 3 images could not be read (see the output)\n"
    alone = run_cli("predict", str(tmp_path / "missing.png"), "--model", str(tiny_model))
    assert alone.returncode == 3 and alone.stderr.startswith("Error: 1 of 1 images")


# --- 8. quiet cron ---------------------------------------------------------------------------------


def test_a_successful_run_off_a_terminal_prints_nothing_unless_verbose(
    tiny_model: Path, tmp_path: Path
) -> None:
    for i in range(5):
        png(tmp_path / "data" / "a" / f"{i}.png", seed=i)
    env = {"MLPERSONALIZE_MODEL": str(tiny_model)}
    args = ["prepare", str(tmp_path / "data"), "-o", str(tmp_path / "b.npz"), "--append"]
    first = run_cli(*args, env=env)
    again = run_cli(*args, env=env)  # every image already in the batch: five "skipped" warnings
    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    verbose = run_cli(*args, "--verbose", env=env)
    assert verbose.returncode == 0 and verbose.stderr.count("warning: skipped") == 5
    assert "nothing new for" in verbose.stderr and "5 files skipped" in verbose.stderr


def test_quiet_silences_messages_on_a_terminal_and_every_command_has_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    code, out, err = main_cli(["reset", "--quiet"], capsys)
    assert code == 0 and out == "" and err == ""
    code, out, err = main_cli(["reset"], capsys)
    assert code == 0 and "Nothing to reset" in err
    for command in [
        "prepare",
        "inspect",
        "predict",
        "update",
        "rollback",
        "reset",
        "models",
        "which",
        "make-updatable",
    ]:
        code, out, _ = main_cli([command, "--help"], capsys)
        assert code == 0 and "--quiet" in out and "--verbose" in out, command


# --- 9. inspect history from a real update -----------------------------------------------------------


def test_inspect_renders_a_real_history(
    doodle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], terminal: None
) -> None:
    batch = write_batch(tmp_path / "b.npz", doodle, NEW[:2], per_label=4)
    result = updater.update([batch], updater.UpdateOptions(model=doodle, epochs=2))
    entry = result.history
    code, out, err = main_cli(["inspect", "--model", "tiny"], capsys)
    assert code == 0, err
    acc = entry["accuracy"]
    examples = sum(entry["examples_per_label"].values())
    assert f"{examples} in 2" in out
    assert f"{acc['known_before']:.0%}→{acc['known_after']:.0%}" in out
    held_before = f"{acc['held_out_before']:.0%}" if acc["held_out_before"] is not None else "-"
    assert f"{held_before}→{acc['held_out_after']:.0%}" in out
    metric = next(line for line in out.splitlines() if line.startswith("metric last_update"))
    assert "{" not in metric and "known labels" in metric


# --- 10. operators' commands ----------------------------------------------------------------------


def test_models_which_version_help_and_completion(
    doodle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = write_batch(tmp_path / "b.npz", doodle, NEW[:1])
    code, out, err = main_cli(["which", "--json"], capsys)
    assert code == 0 and json.loads(out)["source"] == "bundled"
    updater.update([batch], updater.UpdateOptions(model=doodle, epochs=1))
    more = write_batch(tmp_path / "c.npz", doodle, NEW[:1], seed=8)  # new drawings: a second version
    updater.update([more], updater.UpdateOptions(model=store.model_home("tiny"), epochs=1))
    code, out, err = main_cli(["models", "--json"], capsys)
    (model,) = json.loads(out)
    assert model["name"] == "tiny" and [v["version"] for v in model["versions"]] == ["000001", "000002"]
    assert [v["current"] for v in model["versions"]] == [False, True]
    assert model["versions"][0]["labels_added"] == NEW[:1] and model["versions"][1]["time"]
    code, out, err = main_cli(["which", "--model", "tiny", "--json"], capsys)
    assert json.loads(out)["source"] == "personalized" and json.loads(out)["model"].endswith("000002")
    code, out, err = main_cli(["reset", "--model", "tiny", "--json"], capsys)  # delete one model
    assert code == 0 and not store.list_versions(store.model_home("tiny"))
    assert main_cli(["--version"], capsys)[1].startswith("mlpersonalize ")
    code, out, _ = main_cli(["-h"], capsys)
    assert code == 0 and "--install-completion" in out and "models" in out and "which" in out
    code, out, _ = main_cli(["predict", "-h"], capsys)
    assert code == 0 and "Usage:" in out


def test_reset_asks_on_a_terminal_and_never_off_it(
    doodle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer

    from mlpersonalize.cli import cmd_rollback_reset

    batch = write_batch(tmp_path / "b.npz", doodle, NEW[:1])
    updater.update([batch], updater.UpdateOptions(model=doodle, epochs=1))
    root = store.model_home("tiny")
    asked: list[str] = []
    monkeypatch.setattr(typer, "confirm", lambda text, **kw: asked.append(text) or False)
    monkeypatch.setattr(cmd_rollback_reset, "_interactive", lambda: True)
    code, out, err = main_cli(["reset", "--model", "tiny"], capsys)
    assert code == 130 and len(asked) == 1 and store.list_versions(root) == ["000001"]
    code, out, err = main_cli(["reset", "--model", "tiny", "--yes"], capsys)
    assert code == 0 and len(asked) == 1 and store.list_versions(root) == []
    monkeypatch.setattr(cmd_rollback_reset, "_interactive", lambda: False)
    updater.update([batch], updater.UpdateOptions(model=doodle, epochs=1))
    assert main_cli(["reset", "--model", str(doodle)], capsys)[0] == 0  # the original names its copy
    assert len(asked) == 1 and store.list_versions(root) == []


# --- 11. the smaller items -------------------------------------------------------------------------


def test_batches_and_versions_follow_the_umask(doodle: Path, tmp_path: Path) -> None:
    png(tmp_path / "data" / "a" / "x.png")
    old = os.umask(0o027)
    try:
        got = run_cli("prepare", str(tmp_path / "data"), "-o", str(tmp_path / "b.npz"), "-m", str(doodle))
        batch = write_batch(tmp_path / "u.npz", doodle, NEW[:1])
        result = updater.update([batch], updater.UpdateOptions(model=doodle, epochs=1))
    finally:
        os.umask(old)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "b.npz").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "u.npz").stat().st_mode & 0o777 == 0o640
    assert result.model.stat().st_mode & 0o777 == 0o750


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["prepare", "{tmp}", "-o", "-"], {}, 2, "Error: a batch is a binary file, never written to stdout"),
        (["update", "b.npz", "-o", "-"], {}, 2, "Error: a model is a folder, never written to stdout"),
        (
            ["models"],
            {"MLPERSONALIZE_HOME": "{tmp}/file"},
            2,
            "Error: MLPERSONALIZE_HOME={tmp}/file is not a folder",
        ),
        (["update", "{batch}", "--seed", "-1"], {}, 2, "must be within [0, 4294967295]"),
    ],
)
def test_smaller_refusals(
    doodle: Path, tmp_path: Path, args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    (tmp_path / "file").write_text("not a folder")
    batch = write_batch(tmp_path / "b.npz", doodle, NEW[:1])
    fill = {"tmp": str(tmp_path), "batch": str(batch)}
    got = run_cli(
        *[a.format(**fill) for a in args],
        "--model" if args[0] == "update" else "--json",
        *([str(doodle)] if args[0] == "update" else []),
        env={k: v.format(**fill) for k, v in env.items()},
    )
    assert got.returncode == code and message.format(**fill) in got.stderr, got.stderr
    assert got.stderr.startswith("Error: ") and got.stderr.count("\n") == 1
    assert not (tmp_path / "-").exists()


def test_prepare_failure_lists_its_problems_off_a_terminal(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "data" / "empty").mkdir(parents=True)
    (tmp_path / "data" / "also").mkdir()
    got = run_cli("prepare", str(tmp_path / "data"), "-o", str(tmp_path / "b.npz"), "-m", str(tiny_model))
    assert got.returncode == 3
    lines = got.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["problem", "problem", "Error"]
    assert "(and 1 more problem)" in lines[-1] and "report" not in lines[-1]


def test_summaries_count_in_words_and_hint_at_a_low_held_out_figure() -> None:
    from types import SimpleNamespace

    from mlpersonalize.cli.cmd_update import summary

    history = {"accuracy": {"held_out_after": 0.0, "held_out_examples": 1}, "guard": {"forced": False}}
    labels = tuple(f"l{i}" for i in range(500))
    result = SimpleNamespace(history=history, labels_added=labels, version="000002", model=Path("/m"))
    text = summary(result)
    assert "500 new labels: l0, l1" in text and "and 490 more" in text and "l499" not in text
    assert "held-out accuracy 0% (1 example)" in text and "add more examples" in text
    result.labels_added = ("one",)
    assert "1 new label: one" in summary(result)


def test_predict_table_wraps_long_names_instead_of_cutting_them(
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    terminal: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "50")
    png(tmp_path / "test" / "☂️" / "0123456789-a-rather-long-drawing-name-END.png")
    code, out, err = main_cli(["predict", str(tmp_path / "test"), "--model", str(tiny_model)], capsys)
    assert code == 0, err
    assert "0123456789-a-rather-long-drawing-name-END.png" in first_column(out) and "…" not in out


@pytest.mark.parametrize(
    ("flags", "tty", "chatty", "tables", "live"),
    [
        ({}, True, True, True, True),
        ({}, False, False, False, False),  # cron: silent on stderr, TSV on stdout
        ({"verbose": True}, False, True, False, False),
        ({"quiet": True}, True, False, True, False),  # stdout's data stays, messages go
        ({"json_out": True}, True, True, False, False),
        ({"json_out": True}, False, False, False, False),
    ],
)
def test_output_modes_decide_messages_tables_and_bars(
    monkeypatch: pytest.MonkeyPatch, flags: dict[str, bool], tty: bool, chatty: bool, tables: bool, live: bool
) -> None:
    monkeypatch.setattr(_output.Output, "stdout_is_terminal", staticmethod(lambda: tty))
    monkeypatch.setattr(_output.Output, "stderr_is_terminal", staticmethod(lambda: tty))
    out = _output.Output().configure(**flags)
    assert (out.chatty, out.tables, out.live) == (chatty, tables, live)


def test_quiet_and_verbose_together_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = main_cli(["models", "--quiet", "--verbose"], capsys)
    assert code == 2 and err == "Error: --quiet and --verbose cannot be used together\n"


def test_sigterm_at_random_moments_never_reports_a_committed_update_as_failed(
    doodle: Path, tmp_path: Path
) -> None:
    """The field experiment, bounded: SIGTERM an `update --json` near its end, six times."""
    import random

    # each run its own drawings: the same drawings again would teach nothing (exit 9, no version)
    batches = [write_batch(tmp_path / f"b{i}.npz", doodle, NEW[:1], seed=7 + i) for i in range(7)]
    home = store.model_home("tiny")
    args = [sys.executable, "-m", "mlpersonalize", "update", "--json", "--epochs", "1"]
    start = time.monotonic()
    first = subprocess.run(
        [*args, str(batches[0]), "--model", str(doodle)], capture_output=True, text=True, timeout=120
    )
    took = time.monotonic() - start
    assert first.returncode == 0, first.stderr
    rng = random.Random(16)
    for batch in batches[1:]:
        before = store.current_version(home)
        child = subprocess.Popen(
            [*args, str(batch), "--model", str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(took * rng.uniform(0.6, 1.05))
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=120)
        after = store.current_version(home)
        if after != before:  # committed: the run must say so (9: saved, but "learned nothing")
            assert child.returncode in (0, 9), (child.returncode, err)
            assert child.returncode == 0 or "was saved" in err
            assert json.loads(out.splitlines()[-1])["version"] == after
        else:
            # -15: the signal came before Python installed its handler (still starting up)
            assert child.returncode in (6, 130, -signal.SIGTERM), (child.returncode, err)  # 6: guard
            assert child.returncode != 130 or err == "Error: interrupted; nothing was changed\n"

"""`mlpersonalize update / rollback / reset` through main(): exit codes, stdout data, one Error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clirun import main_cli as run
from conftest import NEW, write_batch

from mlpersonalize import store


def test_update_json_events_then_rollback_and_reset(
    doodle_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[:2])
    code, out, err = run(
        ["update", str(batch), "--model", str(doodle_model), "--json", "--epochs", "3"], capsys
    )
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0]["event"] == "began" and events[-1]["event"] == "completed"
    assert [e["epoch"] for e in events if e["event"] == "epoch_end" and e["pass"] == 2] == [1, 2, 3]
    assert events[-1]["version"] == "000001" and "held_out_by_label" in events[-1]["metrics"]
    home = store.model_home("tiny")
    more = write_batch(tmp_path / "c.npz", doodle_model, NEW[:2], seed=8)  # new drawings
    code, out, err = run(["update", str(more), "--model", str(home)], capsys)
    assert code == 0 and out == "" and err == ""  # quiet off a terminal
    assert store.current_version(home) == "000002"
    code, out, err = run(["rollback", "--model", str(home), "--json"], capsys)
    assert code == 0 and json.loads(out)["version"] == "000001"
    code, out, err = run(["reset", "--model", str(home), "--json"], capsys)
    assert code == 0 and len(json.loads(out)["removed_versions"]) == 2 and store.current_version(home) is None


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--epochs", "0"], 2, "epochs must be within"),
        (["--learning-rate", "5"], 2, "learning-rate must be within"),
        (["--keep", "0"], 2, "keep must be at least 1"),
        (["--max-drop", "-1"], 2, "max-drop"),
        (["--model", "/nonexistent/model"], 4, "not a model package"),
    ],
)
def test_bad_options_are_usage_or_model_errors(
    extra: list[str],
    code: int,
    message: str,
    doodle_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[:1])
    args = ["update", str(batch), *(extra if "--model" in extra else ["--model", str(doodle_model), *extra])]
    got, out, err = run(args, capsys)
    assert got == code and out == ""
    assert err.startswith("Error: ") and message in err and err.count("\n") == 1


def test_bad_batches_are_input_errors(
    doodle_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a batch")
    for path in (tmp_path / "missing.npz", junk):
        code, out, err = run(["update", str(path), "--model", str(doodle_model)], capsys)
        assert code == 3 and out == "" and err.startswith("Error: ") and err.count("\n") == 1


def test_output_must_be_new_or_empty(
    doodle_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[:1])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, _, err = run(
        ["update", str(batch), "--model", str(doodle_model), "-o", str(tmp_path / "full")], capsys
    )
    assert code == 2 and "not an empty folder" in err
    code, _, err = run(
        ["update", str(batch), "--model", str(doodle_model), "-o", str(tmp_path / "new")], capsys
    )
    assert code == 0 and (tmp_path / "new" / "manifest.json").is_file()


def test_busy_and_rejected_exit_codes(
    doodle_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[:1])
    assert run(["update", str(batch), "--model", str(doodle_model)], capsys)[0] == 0
    home = store.model_home("tiny")
    with store.ModelLock(home).acquire():
        code, _, err = run(["update", str(batch), "--model", str(home), "--no-wait"], capsys)
    assert code == 5 and err.startswith("Error: another update")

    from mlpersonalize.heads.cosine import CosineHead

    real = CosineHead.train

    def diverging(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = real(self, *args, **kwargs)
        result.losses.append(float("inf"))
        return result

    monkeypatch.setattr(CosineHead, "train", diverging)
    more = write_batch(tmp_path / "c.npz", doodle_model, NEW[:1], seed=8)  # new drawings
    code, _, err = run(["update", str(more), "--model", str(home)], capsys)
    assert code == 6 and "update refused" in err and err.count("\n") == 1
    assert store.current_version(home) == "000001"


def test_rollback_without_a_copy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["rollback"], capsys)
    assert code == 4 and err.startswith("Error: there is no personalized model")
    code, out, err = run(["reset", "--json"], capsys)
    assert code == 0 and json.loads(out)["removed_versions"] == []

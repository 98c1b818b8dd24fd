"""`mlpersonalize fleet …`: usage errors and unreachable SuperLinks as one `Error:` line and the
documented exit code (the end-to-end run with real processes is in test_fleet_deploy.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from clirun import main_cli

pytest.importorskip("flwr")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the test connects


def test_fleet_commands_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = main_cli(["fleet", "--help"], capsys)
    assert code == 0 and all(name in out for name in ("server", "join", "run"))


@pytest.mark.parametrize(
    ("args", "needs"),
    [
        (["fleet", "run", "127.0.0.1:9092"], "--ca-certfile, or --insecure"),
        (["fleet", "server", "--port", "9092"], "--certfile and --keyfile, or --insecure"),
        (["fleet", "join", "127.0.0.1:9092"], "--ca-certfile, or --insecure"),
    ],
)
def test_tls_is_the_default_and_plain_http_must_be_asked_for(
    args: list[str], needs: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = main_cli(args, capsys)
    assert code == 2 and out == ""
    assert err.startswith("Error: ") and needs in err and err.count("\n") == 1


def test_an_unreachable_superlink_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = closed_port()
    code, out, err = main_cli(
        ["fleet", "run", f"127.0.0.1:{port}", "--insecure", "--json", "--workdir", str(tmp_path)], capsys
    )
    assert code == 1 and out == ""
    assert err.startswith("Error: flwr run failed: ") and "SuperLink is unavailable" in err
    assert err.count("\n") == 1


def test_join_refuses_a_model_that_is_not_a_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = main_cli(
        ["fleet", "join", "127.0.0.1:9092", "--insecure", "--model", str(tmp_path / "nope")], capsys
    )
    assert code == 2 and out == "" and "not a model package folder" in err and err.count("\n") == 1


def test_join_refuses_bad_differential_privacy_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for extra, message in (
        (["--dp-epsilon", "0"], "dp-epsilon must be a positive number"),
        (["--dp-clip", "0.5"], "need dp-epsilon"),
    ):
        code, out, err = main_cli(["fleet", "join", "127.0.0.1:9092", "--insecure", *extra], capsys)
        assert code == 2 and out == "" and message in err and err.count("\n") == 1

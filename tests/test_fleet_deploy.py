"""Fleet personalization with real Flower processes on loopback: a SuperLink, two SuperNodes
beside two device stores, ``flwr run`` of the shipped app; the test stops every process itself."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from mlpersonalize import store  # noqa: E402
from mlpersonalize.batch import Batch, save_batch  # noqa: E402
from mlpersonalize.fleet import deploy, device  # noqa: E402
from mlpersonalize.package import load_package  # noqa: E402
from mlpersonalize.sample.doodles import make_dataset  # noqa: E402


def processes_with(flwr_home: Path) -> list[int]:
    """Live processes started for this fleet (Flower's own children included): FLWR_HOME names it."""
    mark = f"FLWR_HOME={flwr_home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="checks for left-over processes through /proc")
def test_two_supernodes_learn_each_others_labels_through_a_superlink(tmp_path: Path) -> None:
    manifest = load_package(store.bundled_model_path()).manifest
    devices = []
    for i, labels in enumerate((("umbrella", "key"), ("bell", "cup"))):
        pixels, ids = make_dataset(labels, 3, 11, manifest.constraint)
        pending = tmp_path / f"device-{i}" / "pending"
        pending.mkdir(parents=True)
        save_batch(pending / "b.npz", Batch.from_pixels(pixels, [labels[k] for k in ids], manifest))
        devices.append({"home": str(tmp_path / f"device-{i}" / "home"), "pending": str(pending)})
    devices[0]["dp-epsilon"] = 1e4  # differential privacy through the node config (noise std ~1e-3)

    fleet = deploy.LocalFleet(tmp_path / "flower", devices)
    with fleet:
        assert len(processes_with(fleet.flwr_home)) >= 2
        summary = fleet.run({"num-server-rounds": 1}, seconds=240)
    deadline = time.monotonic() + 20
    while processes_with(fleet.flwr_home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_with(fleet.flwr_home) == []

    (only,) = summary["rounds"]
    assert summary["devices"] == 2 and only["result"] == "offered" and len(only["adopted"]) == 2
    assert [dp["epsilon"] for dp in only["dp"].values()] == [1e4]  # one device noised its rows
    for config in devices:
        dc = device.DeviceConfig(pending=Path(config["pending"]), home=Path(config["home"]))
        with device.device_home(dc):
            current = store.current_path(store.model_home())
            assert current is not None
            labels = load_package(current).manifest.labels
        assert {"umbrella", "key", "bell", "cup"} <= set(labels)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="checks for left-over processes through /proc")
def test_the_documented_commands_run_a_fleet_and_ctrl_c_stops_them(tmp_path: Path) -> None:
    """`fleet server`, two `fleet join`, `fleet run --result --json`, then Ctrl-C (SIGINT)."""
    import json
    import os
    import signal
    import subprocess
    import sys

    manifest = load_package(store.bundled_model_path()).manifest
    port = deploy.free_port()
    base = {k: v for k, v in os.environ.items() if k != "MLPERSONALIZE_HOME"}

    def start(*args: str, home: Path) -> subprocess.Popen[str]:
        env = {**base, "MLPERSONALIZE_HOME": str(home)}
        cmd = [sys.executable, "-m", "mlpersonalize", "fleet", *args]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    server = start("server", "--insecure", "--port", str(port), "--json", home=tmp_path / "server")
    assert server.stdout is not None
    started = json.loads(server.stdout.readline())  # printed once the SuperLink listens
    assert started["role"] == "superlink" and started["address"] == f"127.0.0.1:{port}"
    joined = []
    for i, labels in enumerate((("umbrella", "key"), ("bell", "cup"))):
        home = tmp_path / f"device-{i}"
        pixels, ids = make_dataset(labels, 3, 11, manifest.constraint)
        (home / "fleet" / "pending").mkdir(parents=True)
        batch = Batch.from_pixels(pixels, [labels[k] for k in ids], manifest)
        save_batch(home / "fleet" / "pending" / "b.npz", batch)
        joined.append(
            start("join", f"127.0.0.1:{port}", "--insecure", "--port", str(deploy.free_port()), home=home)
        )
    procs = [server, *joined]
    try:
        result = tmp_path / "result.json"
        env = {**base, "MLPERSONALIZE_HOME": str(tmp_path / "cli")}
        run = subprocess.run(
            [sys.executable, "-m", "mlpersonalize", "fleet", "run", f"127.0.0.1:{port}", "--insecure"]
            + ["--rounds", "1", "--min-nodes", "2", "--result", str(result), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout)
        assert summary["devices"] == 2 and len(summary["rounds"][0]["adopted"]) == 2
        assert {"umbrella", "key", "bell", "cup"} <= set(summary["global_labels"])
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        codes = [proc.wait(60) for proc in procs]
    assert codes == [130, 130, 130]
    time.sleep(2)
    for home in ("server", "device-0", "device-1"):
        role = "superlink" if home == "server" else "supernode"
        assert processes_with(tmp_path / home / "fleet" / role) == []

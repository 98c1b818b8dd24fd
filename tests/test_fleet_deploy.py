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
    for config in devices:
        dc = device.DeviceConfig(pending=Path(config["pending"]), home=Path(config["home"]))
        with device.device_home(dc):
            current = store.current_path(store.model_home())
            assert current is not None
            labels = load_package(current).manifest.labels
        assert {"umbrella", "key", "bell", "cup"} <= set(labels)

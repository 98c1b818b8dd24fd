"""`make fleet-demo`: three devices, each taught different new labels, learn all of them together.

A SuperLink and three SuperNodes run on 127.0.0.1 (Flower's Deployment Runtime, ordinary
processes). Each device's store (its own MLPERSONALIZE_HOME) has one pending batch: three
generated drawings of each of its three new labels. After the rounds every device is scored on
held-out generated drawings of all nine labels, next to two baselines measured on the same
drawings: each device updated alone with its own batch (local only), and one model updated
with all three batches (centralized). Accuracy is top-1 (no ``unknown`` threshold), the mean
over the devices. The last line on stdout is the result as JSON; progress goes to stderr.

    python -m mlpersonalize.fleet.demo [--rounds 3] [--workdir fleet-demo] [--tests 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import store
from ..api import load_model
from ..batch import Batch, save_batch
from ..package import load_package
from ..sample.doodles import make_dataset
from ..updater import UpdateOptions, update
from .deploy import LocalFleet
from .device import DeviceConfig, device_home

GROUPS = (("umbrella", "key", "flower"), ("bell", "glasses", "cup"), ("envelope", "music note", "anchor"))
KNOWN = ("star", "heart", "house", "fish", "moon", "car")  # labels the bundled model already has
SHOTS = 3
TRAIN_SEED, TEST_SEED = 11, 5011


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_batches(workdir: Path, groups: Sequence[Sequence[str]]) -> list[Path]:
    """One pending batch per device: SHOTS generated drawings of each of its labels."""
    manifest = load_package(store.bundled_model_path()).manifest
    paths = []
    for i, labels in enumerate(groups):
        pixels, ids = make_dataset(labels, SHOTS, TRAIN_SEED, manifest.constraint)
        path = workdir / f"device-{i}" / "pending" / "drawings.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_batch(path, Batch.from_pixels(pixels, [labels[k] for k in ids], manifest))
        paths.append(path)
    return paths


def held_out(labels: Sequence[str], per_label: int) -> tuple[np.ndarray, list[str]]:
    constraint = load_package(store.bundled_model_path()).manifest.constraint
    pixels, ids = make_dataset(labels, per_label, TEST_SEED, constraint)
    return pixels, [labels[k] for k in ids]


def accuracy(model: Path, pixels: np.ndarray, truth: Sequence[str]) -> float:
    """Top-1 accuracy of a package through the same path as ``predict`` (threshold 0)."""
    predictions = load_model(model).predict(pixels, top_k=1, threshold=0.0)
    return float(np.mean([p.label == t for p, t in zip(predictions, truth, strict=True)]))


def local_update(home: Path, batches: Sequence[Path]) -> Path:
    """The plain ``mlpersonalize update`` of the bundled model in its own store: a baseline."""
    with device_home(DeviceConfig(pending=home, home=home)):
        return update(list(batches), UpdateOptions()).model


def current_model(home: Path) -> Path:
    with device_home(DeviceConfig(pending=home, home=home)):
        path = store.current_path(store.model_home(store.BUNDLED_NAME))
    if path is None:
        raise RuntimeError(f"device store {home} has no personalized model")
    return path


def run(workdir: Path, rounds: int, tests: int, groups: Sequence[Sequence[str]] = GROUPS) -> dict[str, Any]:
    started = time.monotonic()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    batches = make_batches(workdir, groups)
    taught = [label for group in groups for label in group]
    new_px, new_truth = held_out(taught, tests)
    old_px, old_truth = held_out(KNOWN, tests)
    devices = [
        {"home": str(workdir / f"device-{i}" / "home"), "pending": str(b.parent)}
        for i, b in enumerate(batches)
    ]
    _say(f"{len(devices)} devices, new labels {[list(g) for g in groups]}, {SHOTS} drawings each")

    with LocalFleet(workdir / "flower", devices) as fleet:
        _say(f"SuperLink on 127.0.0.1:{fleet.port}, {len(devices)} SuperNodes; running {rounds} rounds")
        summary = fleet.run({"num-server-rounds": rounds})
    for record in summary["rounds"]:
        _say(json.dumps(record, ensure_ascii=False))
    fleet_models = [current_model(Path(d["home"])) for d in devices]
    federated = [accuracy(m, new_px, new_truth) for m in fleet_models]
    old_after = [accuracy(m, old_px, old_truth) for m in fleet_models]

    _say("baselines: each device alone, and all batches in one place")
    local = [local_update(workdir / f"local-{i}", [b]) for i, b in enumerate(batches)]
    central = local_update(workdir / "central", batches)
    return {
        "devices": len(devices),
        "rounds": rounds,
        "labels": len(taught),
        "federated_accuracy": round(float(np.mean(federated)), 4),
        "local_only_accuracy": round(float(np.mean([accuracy(m, new_px, new_truth) for m in local])), 4),
        "centralized_accuracy": round(accuracy(central, new_px, new_truth), 4),
        "old_labels_before": round(accuracy(store.bundled_model_path(), old_px, old_truth), 4),
        "old_labels_after": round(float(np.mean(old_after)), 4),
        "held_out_per_label": tests,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tests", type=int, default=20, help="held-out drawings per label")
    parser.add_argument("--workdir", type=Path, default=Path("fleet-demo"))
    args = parser.parse_args(argv)
    print(json.dumps(run(args.workdir.resolve(), args.rounds, args.tests)), flush=True)


if __name__ == "__main__":
    main()

"""What local differential privacy on the shared rows would cost (docs/fleet.md), measured.

Three devices as in `make fleet-demo` train in one process (mlpersonalize.fleet.device, no
Flower processes); each shared row is clipped to norm 1 and gets Gaussian noise before it is
aggregated, by the code a device runs with `fleet join --dp-epsilon E` (fleet.privacy.privatize:
Flower's LocalDpMod functions and noise scale, std = sensitivity * sqrt(2 ln(1.25 / delta)) /
epsilon, sensitivity 2 (a clipped row can become any other)). The aggregated head is scored on
held-out generated drawings of the six new labels among all labels (top-1, cosine head), for
several epsilons, one round.

    .venv-fleet/bin/python scripts/fleet_demo_dp_cost.py [--tests 20] [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np

from mlpersonalize import store
from mlpersonalize.embedding import embed
from mlpersonalize.fleet import device
from mlpersonalize.fleet.aggregate import Contribution, aggregate
from mlpersonalize.fleet.demo import GROUPS, held_out, make_batches
from mlpersonalize.fleet.privacy import DpConfig, privatize
from mlpersonalize.heads.cosine import cosine_logits
from mlpersonalize.manifest import BACKBONE_FILE
from mlpersonalize.package import load_package

DELTA = 1e-5


def noisy(c: Contribution, epsilon: float, rng_seed: int) -> Contribution:
    if math.isinf(epsilon):
        return c
    np.random.seed(rng_seed)  # Flower's helper draws from numpy's global generator
    return privatize(c, DpConfig(epsilon, DELTA, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tests", type=int, default=20)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fleet-dp-"))
    batches = make_batches(work, GROUPS)
    configs = [device.DeviceConfig(pending=b.parent, home=b.parent.parent / "home") for b in batches]
    contributions = [device.train(c).contribution for c in configs]
    assert all(c is not None for c in contributions)
    bundled = load_package(store.bundled_model_path())
    taught = [label for group in GROUPS for label in group]
    pixels, truth = held_out(taught, args.tests)
    emb = embed(bundled.path / BACKBONE_FILE, pixels, bundled.manifest.constraint)
    scale = bundled.manifest.logit_scale
    results = {}
    for epsilon in (math.inf, 100.0, 50.0, 20.0, 10.0, 5.0, 1.0):
        scores = []
        for trial in range(args.trials if not math.isinf(epsilon) else 1):
            head = aggregate([noisy(c, epsilon, 1000 * trial + i) for i, c in enumerate(contributions)])  # type: ignore[arg-type]
            pred = np.argmax(cosine_logits(emb, head.rows, scale), axis=1)
            scores.append(float(np.mean([head.labels[p] == t for p, t in zip(pred, truth, strict=True)])))
        std = 0.0 if math.isinf(epsilon) else DpConfig(epsilon, DELTA, 1.0).noise_std
        results["no noise" if math.isinf(epsilon) else f"epsilon={epsilon:g}"] = {
            "noise_std_per_coordinate": round(std, 4),
            "accuracy": round(float(np.mean(scores)), 4),
        }
    print(json.dumps({"delta": DELTA, "held_out_per_label": args.tests, "trials": args.trials, **results}))


if __name__ == "__main__":
    main()

"""Optional local differential privacy on what a device sends: each shared row clipped, then noised.

Off unless the device asks for it (``fleet join --dp-epsilon E``; SuperNode node config
``dp-epsilon``, ``dp-delta``, ``dp-clip``). On, every row of a train reply is clipped to L2 norm
``clip`` and gets Gaussian noise with Flower's own local-DP functions, the ones its
``LocalDpMod`` calls (``flwr.supercore.differential_privacy``): ``clip_inputs_inplace`` on each
row, and ``add_localdp_gaussian_noise_to_params`` (``LocalDpMod``'s noise: std =
sensitivity · sqrt(2 ln(1.25/δ)) / ε per coordinate) on the rows together. A clipped row can
become any other row within the ball, so the sensitivity of one row is ``2 · clip``; ε and δ
are per row and per round (they add up over rows and rounds).

``LocalDpMod`` itself does not fit as a mod here: it clips the reply's arrays minus the
request's and needs both to hold the same keys and shapes, while the train request carries
no rows and a device's reply grows with the labels it adds. Clipping the row itself is what
``LocalDpMod`` would do against a request of zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError
from .aggregate import Contribution

DEFAULT_DELTA = 1e-5
DEFAULT_CLIP = 1.0  # a cosine row is normalised: norm 1, so clipping at 1 keeps it whole


@dataclass(frozen=True)
class DpConfig:
    """Local differential privacy of one device's shared rows (per row, per round)."""

    epsilon: float
    delta: float = DEFAULT_DELTA
    clip: float = DEFAULT_CLIP

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise UsageError(f"dp-epsilon must be a positive number, got {self.epsilon:g}")
        if not 0.0 < self.delta < 1.0:
            raise UsageError(f"dp-delta must be within (0, 1), got {self.delta:g}")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise UsageError(f"dp-clip must be a positive number, got {self.clip:g}")

    @property
    def sensitivity(self) -> float:
        return 2.0 * self.clip

    @property
    def noise_std(self) -> float:
        """The Gaussian noise's standard deviation per coordinate (LocalDpMod's formula)."""
        return self.sensitivity * math.sqrt(2.0 * math.log(1.25 / self.delta)) / self.epsilon

    def record(self) -> dict[str, float]:
        """The parameters as a result or history records them."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "clip": self.clip,
            "noise_std": round(self.noise_std, 6),
        }


def dp_config(values: dict[str, Any]) -> DpConfig | None:
    """The DP settings of a node config (keys ``dp-epsilon``, ``dp-delta``, ``dp-clip``); None: off."""
    given = {k: values[k] for k in ("dp-epsilon", "dp-delta", "dp-clip") if values.get(k) not in (None, "")}
    if not given:
        return None
    if "dp-epsilon" not in given:
        raise UsageError("dp-delta and dp-clip need dp-epsilon: give it to turn differential privacy on")
    return DpConfig(
        float(given["dp-epsilon"]),
        float(given.get("dp-delta", DEFAULT_DELTA)),
        float(given.get("dp-clip", DEFAULT_CLIP)),
    )


def privatize(contribution: Contribution, dp: DpConfig | None) -> Contribution:
    """The contribution as it is sent: unchanged when DP is off, else every row clipped and noised."""
    if dp is None:
        return contribution
    # lazy: only a device with DP on needs Flower's DP helpers (they import Flower's compat layer)
    from flwr.compat.common.parameter import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.supercore.differential_privacy import (
        add_localdp_gaussian_noise_to_params,
        clip_inputs_inplace,
    )

    rows = [np.array(row, np.float32) for row in contribution.rows]
    for row in rows:
        if np.any(row):  # Flower's clip divides by the norm; a zero row is already within any clip
            clip_inputs_inplace([row], dp.clip)
    noised = add_localdp_gaussian_noise_to_params(
        ndarrays_to_parameters([np.stack(rows)]), dp.sensitivity, dp.epsilon, dp.delta
    )
    (sent,) = parameters_to_ndarrays(noised)
    return Contribution(contribution.labels, np.asarray(sent, np.float32), contribution.counts)

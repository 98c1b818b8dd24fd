"""The ClientApp a SuperNode runs beside a device's store (node config: where the store is).

SuperNode ``--node-config`` keys: ``home`` (the device's MLPERSONALIZE_HOME; default: the
SuperNode's environment), ``pending`` (the folder of batch files to learn from; default
``<home>/fleet/pending``), ``model`` (an original package; default the bundled model),
``min-examples`` (2), ``max-drop`` (0.02), and, to turn on local differential privacy on the
rows it sends (off by default), ``dp-epsilon`` with optional ``dp-delta`` (1e-5) and
``dp-clip`` (1.0): see :mod:`.privacy`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from .. import store
from ..errors import MLPersonalizeError
from . import device, messages, privacy

app = ClientApp()


def device_config(node_config: Mapping) -> device.DeviceConfig:
    """The device's settings from the SuperNode's ``--node-config``."""
    home = Path(str(node_config["home"])).expanduser() if node_config.get("home") else None
    if node_config.get("pending"):
        pending = Path(str(node_config["pending"])).expanduser()
    else:
        pending = (home or store.home()) / "fleet" / "pending"
    model = Path(str(node_config["model"])).expanduser() if node_config.get("model") else None
    return device.DeviceConfig(
        pending=pending,
        home=home,
        model=model,
        min_examples=int(node_config.get("min-examples", 2)),
        max_drop=float(node_config.get("max-drop", device.DEFAULT_MAX_DROP)),
        dp=privacy.dp_config(dict(node_config)),
    )


def handle_train(config: device.DeviceConfig, content: RecordDict) -> RecordDict:
    known = [str(x) for x in messages.get(content, "config", "known", [])]
    report = device.train(config, known)
    if report.contribution is not None and config.dp is not None:
        sent = privacy.privatize(report.contribution, config.dp)
        report = dataclasses.replace(report, contribution=sent)
    return messages.train_reply(report, config.dp)


def handle_evaluate(config: device.DeviceConfig, content: RecordDict) -> RecordDict:
    labels, rows = messages.read_head(content)
    return messages.evaluate_reply(device.evaluate(config, labels, rows))


def handle_adopt(config: device.DeviceConfig, content: RecordDict) -> RecordDict:
    labels, rows = messages.read_head(content)
    entry: dict[str, Any] = {"fleet_round": int(messages.get(content, "config", "round", 0))}
    if config.dp is not None:  # the rows this device sent were noised
        entry["dp"] = config.dp.record()
    return messages.adopt_reply(device.adopt(config, labels, rows, entry))


HANDLERS = {"train": handle_train, "evaluate": handle_evaluate, "query": handle_adopt}


def handle(kind: str, config: device.DeviceConfig, content: RecordDict) -> RecordDict:
    """The device's reply to one message of ``kind``; its errors travel back as one line."""
    try:
        return HANDLERS[kind](config, content)
    except MLPersonalizeError as exc:
        return messages.error_reply(f"{type(exc).__name__}: {exc}")


@app.train()
def train(msg: Message, context: Context) -> Message:
    return Message(content=handle("train", device_config(context.node_config), msg.content), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return Message(content=handle("evaluate", device_config(context.node_config), msg.content), reply_to=msg)


@app.query()
def adopt(msg: Message, context: Context) -> Message:
    return Message(content=handle("query", device_config(context.node_config), msg.content), reply_to=msg)

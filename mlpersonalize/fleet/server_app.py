"""The ServerApp: rounds of train → aggregate → federated evaluation → offer to adopt.

Run config (``flwr run … --run-config``, defaults in the shipped app's pyproject.toml):
``num-server-rounds`` (3), ``min-nodes`` (devices to wait for; 1), ``wait-seconds`` (how long
to wait for them; 60), ``max-drop`` (0.02: how much federated accuracy on the devices' own
examples the global head may cost before it is withheld), ``result-file`` (where the run's
JSON summary goes; "" for none).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from . import messages
from .aggregate import GlobalHead, aggregate, weighted_mean
from .messages import get

app = ServerApp()

# (message type, {node: content}) -> {node: reply content}; a node missing from the answer failed.
Exchange = Callable[[str, Mapping[int, RecordDict]], dict[int, RecordDict]]
Log = Callable[[dict[str, Any]], None]


def run_rounds(
    exchange: Exchange, nodes: list[int], rounds: int, max_drop: float, log: Log
) -> dict[str, Any]:
    """Federated rounds over ``nodes``; the run's summary (per round: labels, accuracy, adoptions)."""
    known: tuple[str, ...] = ()
    head: GlobalHead | None = None
    summary: dict[str, Any] = {"devices": len(nodes), "rounds": []}
    for round_no in range(1, rounds + 1):
        replies = exchange(MessageType.TRAIN, {n: messages.train_request(round_no, known) for n in nodes})
        contributions, refused, private = [], {}, {}
        for node, content in replies.items():
            got = messages.read_train_reply(content)
            if isinstance(got, str):
                refused[str(node)] = got
            else:
                contributions.append(got)
                if (dp := messages.read_dp(content)) is not None:
                    private[str(node)] = dp
        record: dict[str, Any] = {"round": round_no, "replies": len(replies), "refused": refused}
        record["dp"] = private  # the devices whose rows came clipped and noised, and how
        if not contributions:
            record["result"] = "no device sent rows"
            summary["rounds"].append(record)
            log(record)
            continue
        head = aggregate(contributions, known)
        candidate = {n: messages.head_record(head.labels, head.rows) for n in nodes}
        evals = exchange(MessageType.EVALUATE, candidate)
        scores = [
            (
                float(get(c, "metrics", "candidate-accuracy")),
                float(get(c, "metrics", "current-accuracy")),
                int(get(c, "metrics", "num-examples")),
            )
            for c in evals.values()
            if get(c, "metrics", "candidate-accuracy") is not None
        ]
        fed = weighted_mean([(cand, n) for cand, _, n in scores])
        cur = weighted_mean([(now, n) for _, now, n in scores])
        record |= {
            "labels": len(head.labels),
            "taught": {label: n for label, n in zip(head.labels, head.counts, strict=True) if n},
            "federated_evaluation": {"candidate": _r(fed), "current": _r(cur), "devices": len(scores)},
        }
        if fed is None or (cur is not None and cur - fed > max_drop):
            record["result"] = "withheld: the global head scored worse on the devices' own examples"
        else:
            offer = {n: messages.head_record(head.labels, head.rows, round=round_no) for n in nodes}
            answers = exchange(MessageType.QUERY, offer)
            adopted = {n: bool(get(c, "config", "adopted", 0)) for n, c in answers.items()}
            record["adopted"] = sorted(str(n) for n, yes in adopted.items() if yes)
            record["kept_own"] = {
                str(n): str(get(c, "config", "reason") or get(c, "config", "error"))
                for n, c in answers.items()
                if not adopted[n]
            }
            record["result"] = "offered"
            known = head.labels
        summary["rounds"].append(record)
        log(record)
    summary["labels"] = len(known)
    summary["global_labels"] = list(known)
    return summary


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def grid_exchange(grid: Grid, timeout: float) -> Exchange:
    """Send one message to each node through the Grid and collect the replies (errors dropped)."""

    def exchange(kind: str, contents: Mapping[int, RecordDict]) -> dict[int, RecordDict]:
        out = [Message(content=c, dst_node_id=n, message_type=kind) for n, c in contents.items()]
        replies: dict[int, RecordDict] = {}
        for reply in grid.send_and_receive(out, timeout=timeout):
            if not reply.has_error():
                replies[reply.metadata.src_node_id] = reply.content
        return replies

    return exchange


def wait_for_nodes(grid: Grid, count: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < count and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = sorted(grid.get_node_ids())
    return nodes


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    started = time.monotonic()
    wanted = int(cfg.get("min-nodes", 1))
    nodes = wait_for_nodes(grid, wanted, float(cfg.get("wait-seconds", 60)))
    if len(nodes) < wanted:
        summary: dict[str, Any] = {
            "devices": len(nodes),
            "rounds": [],
            "error": f"{len(nodes)} of the {wanted} devices asked for (min-nodes) joined in time",
        }
    else:
        summary = run_rounds(
            grid_exchange(grid, float(cfg.get("round-timeout", 600))),
            nodes,
            int(cfg.get("num-server-rounds", 3)),
            float(cfg.get("max-drop", 0.02)),
            lambda record: print(json.dumps(record, ensure_ascii=False), flush=True),
        )
    summary["seconds"] = round(time.monotonic() - started, 2)
    if cfg.get("result-file"):
        _write_json(Path(str(cfg["result-file"])), summary)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    temp.replace(path)

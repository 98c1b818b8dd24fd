"""`mlpersonalize fleet server|join|run`: personalization across devices on Flower (docs/fleet.md).

Needs the ``fleet`` extra (``pip install 'mlpersonalize[fleet]'``); no other command imports
Flower. ``server`` and ``join`` run Flower's SuperLink / SuperNode in the foreground until
Ctrl-C; ``run`` submits the shipped Flower App to a SuperLink.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from ._options import JsonOpt, QuietOpt, VerboseOpt
from ._output import out, safe_name

fleet = typer.Typer(
    help="Personalize a fleet of devices together on Flower: rows and counts travel, drawings never do. "
    "Example: mlpersonalize fleet join fleet.example.org:9092 --ca-certfile ca.pem",
    no_args_is_help=True,
    rich_markup_mode=None,
)

InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Plain HTTP, no TLS: only on a trusted network or loopback.")
]
CaOpt = Annotated[
    Path | None, typer.Option("--ca-certfile", help="The CA certificate that signed the SuperLink's.")
]
PortOpt = Annotated[int, typer.Option("--port", help="Port to listen on.")]


def register(app: typer.Typer) -> None:
    app.add_typer(fleet, name="fleet")


def _workdir(given: Path | None, role: str) -> Path:
    # lazy: store ~7 ms
    from .. import store

    return (given or store.home() / "fleet" / role).expanduser().resolve()


def _foreground(proc: Any, started: dict[str, Any]) -> None:
    """Report the process, then wait for it; Ctrl-C stops it (and Flower's children with it)."""
    # lazy: fleet.deploy ~4 ms, and only `fleet` commands need it
    from ..fleet.deploy import FleetError

    if out.json:
        out.record(started)
    else:
        out.write(
            f"{started['role']} running: {started['address']} (log: {started['log']}); Ctrl-C stops it\n"
        )
    try:
        code = proc.popen.wait()
    except KeyboardInterrupt:
        proc.stop()
        raise
    if code != 0:
        raise FleetError(f"the {started['role']} stopped with exit code {code}; see {started['log']}")


@fleet.command("server")
def server_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: PortOpt = 9092,
    insecure: InsecureOpt = False,
    certfile: Annotated[Path | None, typer.Option("--certfile", help="TLS certificate (PEM).")] = None,
    keyfile: Annotated[Path | None, typer.Option("--keyfile", help="TLS private key (PEM).")] = None,
    ca_certfile: CaOpt = None,
    node_auth: Annotated[
        bool, typer.Option("--node-auth", help="Accept only SuperNodes registered with `flwr supernode`.")
    ] = False,
    workdir: Annotated[Path | None, typer.Option("--workdir", help="Flower's state and logs.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the fleet's SuperLink (Flower's server) in the foreground.

    Example: mlpersonalize fleet server --host 0.0.0.0 --certfile server.pem --keyfile server.key
    """
    # lazy: fleet.deploy ~4 ms, and only `fleet` commands need it
    from ..fleet import deploy

    out.configure(json_out, quiet, verbose)
    security = deploy.Security(insecure, certfile, keyfile, ca_certfile, enable_node_auth=node_auth)
    home = _workdir(workdir, "superlink")
    log = home / "superlink.log"
    proc = deploy.start_superlink(port, home, security, log, host)
    try:  # report it once it listens, so a `fleet run` started after the line finds it
        deploy.wait_for_port("127.0.0.1" if host in ("0.0.0.0", "::") else host, port, 60, proc)
    except BaseException:
        proc.stop()
        raise
    started = {"role": "superlink", "address": f"{host}:{port}", "tls": not insecure, "pid": proc.popen.pid}
    _foreground(proc, {**started, "log": str(log)})


@fleet.command("join")
def join_command(
    superlink: Annotated[str, typer.Argument(help="The SuperLink's address, host:port.")],
    pending: Annotated[
        Path | None,
        typer.Option(
            "--pending", help="Folder of batch files this device teaches. Default: <home>/fleet/pending."
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="The original model package. Default: the bundled one."),
    ] = None,
    min_examples: Annotated[
        int, typer.Option("--min-examples", help="Share a label's row only with this many examples of it.")
    ] = 2,
    max_drop: Annotated[
        float, typer.Option("--max-drop", help="Refuse a fleet head that costs more accuracy points.")
    ] = 2.0,
    dp_epsilon: Annotated[
        float | None,
        typer.Option(
            "--dp-epsilon",
            help="Turn on differential privacy: clip and noise every row sent, with this epsilon "
            "per row and round (smaller: more noise). Costs accuracy; see docs/fleet.md. Default: off.",
        ),
    ] = None,
    dp_delta: Annotated[
        float | None, typer.Option("--dp-delta", help="Differential privacy's delta. Default: 1e-5.")
    ] = None,
    dp_clip: Annotated[
        float | None,
        typer.Option("--dp-clip", help="Clip each row sent to this L2 norm before the noise. Default: 1."),
    ] = None,
    port: PortOpt = 9094,
    insecure: InsecureOpt = False,
    ca_certfile: CaOpt = None,
    auth_key: Annotated[
        Path | None, typer.Option("--auth-key", help="This SuperNode's private key (SuperLink --node-auth).")
    ] = None,
    workdir: Annotated[Path | None, typer.Option("--workdir", help="Flower's state and logs.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Join this device (its MLPERSONALIZE_HOME) to a fleet: run a SuperNode in the foreground.

    Example: mlpersonalize fleet join fleet.example.org:9092 --ca-certfile ca.pem --pending ~/to-teach
    """
    # lazy: store ~7 ms; fleet.deploy ~4 ms; fleet.device pulls numpy, onnx, ONNX Runtime (~0.13 s)
    from .. import store
    from ..fleet import deploy
    from ..fleet.device import DeviceConfig
    from ..fleet.privacy import dp_config

    out.configure(json_out, quiet, verbose)
    home = store.home().resolve()
    dp_values = {"dp-epsilon": dp_epsilon, "dp-delta": dp_delta, "dp-clip": dp_clip}
    dp = dp_config(dp_values)
    config = DeviceConfig(
        pending=(pending or home / "fleet" / "pending").expanduser().resolve(),
        home=home,
        model=model.expanduser().resolve() if model else None,
        min_examples=min_examples,
        max_drop=max_drop / 100,
        dp=dp,
    )
    if config.model is not None and not config.model.is_dir():
        raise UsageError(f"--model {model}: not a model package folder")
    node = {"home": str(home), "pending": str(config.pending), "min-examples": min_examples}
    node |= {"max-drop": config.max_drop, **({"model": str(config.model)} if config.model else {})}
    if dp is not None:
        node |= {"dp-epsilon": dp.epsilon, "dp-delta": dp.delta, "dp-clip": dp.clip}
    security = deploy.Security(insecure, ca_certfile=ca_certfile, auth_private_key=auth_key)
    flwr_home = _workdir(workdir, "supernode")
    log = flwr_home / "supernode.log"
    proc = deploy.start_supernode(superlink, port, node, flwr_home, security, log)
    started = {"role": "supernode", "address": superlink, "home": str(home), "pending": str(config.pending)}
    started["dp"] = dp.record() if dp is not None else None
    _foreground(proc, {**started, "pid": proc.popen.pid, "log": str(log)})


@fleet.command("run")
def run_command(
    superlink: Annotated[str, typer.Argument(help="The SuperLink's address, host:port.")],
    rounds: Annotated[int, typer.Option("--rounds", help="Federated rounds.")] = 3,
    min_nodes: Annotated[int, typer.Option("--min-nodes", help="Devices to wait for before round 1.")] = 1,
    result: Annotated[
        Path | None,
        typer.Option(
            "--result",
            help="Where the ServerApp writes the run's summary (a path on the SuperLink's "
            "machine); given, the command waits for it and prints it.",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for --result.")] = 1800,
    insecure: InsecureOpt = False,
    ca_certfile: CaOpt = None,
    workdir: Annotated[Path | None, typer.Option("--workdir", help="Flower's CLI config.")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Start a fleet run on a SuperLink: train, aggregate, evaluate, offer, for --rounds rounds.

    Example: mlpersonalize fleet run 127.0.0.1:9092 --insecure --rounds 3 --result /tmp/fleet.json --json
    """
    # lazy: fleet.deploy ~4 ms, and only `fleet` commands need it
    from ..fleet import deploy

    out.configure(json_out, quiet, verbose)
    if rounds < 1 or min_nodes < 1:
        raise UsageError("--rounds and --min-nodes must be at least 1")
    security = deploy.Security(insecure, ca_certfile=ca_certfile)
    security.check("connection to the SuperLink")
    flwr_home = _workdir(workdir, "cli")
    deploy.write_connection(flwr_home, superlink, security)
    config: dict[str, Any] = {"num-server-rounds": rounds, "min-nodes": min_nodes}
    if result is not None:
        result = result.expanduser().resolve()
        result.unlink(missing_ok=True)
        config["result-file"] = str(result)
    run_id = deploy.flwr_run(flwr_home, config)
    summary: dict[str, Any] = {"run_id": run_id}
    if result is not None:
        summary |= deploy.wait_for_file(result, timeout)
        if summary.get("error"):
            raise deploy.FleetError(f"run {run_id}: {summary['error']}")
    if out.json:
        out.record(summary)
    else:
        out.write(f"run {run_id} started on {safe_name(superlink)}\n")
        for record in summary.get("rounds", []):
            out.write(
                f"round {record['round']}: {record.get('labels', 0)} labels, "
                f"{len(record.get('adopted', []))} devices adopted, {record['result']}\n"
            )

"""Flower's Deployment Runtime as ordinary processes: a SuperLink, SuperNodes, and ``flwr run``.

The processes are Flower's own executables (``flower-superlink``, ``flower-supernode``, ``flwr``),
found beside the running Python. Insecure (plain HTTP, no SuperNode authentication) only when
asked for; otherwise TLS certificates are passed as Flower takes them (see docs/fleet.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import MLPersonalizeError, UsageError

APP_DIR = Path(__file__).resolve().parent / "app"  # the Flower App (pyproject.toml) `flwr run` ships
CONNECTION = "mlpersonalize-fleet"  # the SuperLink connection's name in FLWR_HOME/config.toml


class FleetError(MLPersonalizeError):
    """A Flower process failed to start, or a run did not finish."""


@dataclass(frozen=True)
class Security:
    """TLS and SuperNode authentication, as Flower's executables take them."""

    insecure: bool = False
    certfile: Path | None = None  # SuperLink: server certificate
    keyfile: Path | None = None  # SuperLink: its private key
    ca_certfile: Path | None = None  # SuperNode and `flwr run`: the CA that signed it
    auth_private_key: Path | None = None  # SuperNode: its key, when the SuperLink authenticates nodes
    enable_node_auth: bool = False  # SuperLink: accept only registered SuperNodes

    def check(self, role: str) -> None:
        if self.insecure:
            return
        need = {"superlink": (self.certfile, self.keyfile)}.get(role, (self.ca_certfile,))
        if any(p is None for p in need):
            what = "--certfile and --keyfile" if role == "superlink" else "--ca-certfile"
            raise UsageError(f"the {role} uses TLS: give {what}, or --insecure (plain HTTP, trusted network)")

    def superlink_args(self) -> list[str]:
        self.check("superlink")
        if self.insecure:
            return ["--insecure"]
        args = ["--ssl-certfile", str(self.certfile), "--ssl-keyfile", str(self.keyfile)]
        if self.ca_certfile:
            args += ["--ssl-ca-certfile", str(self.ca_certfile)]
        return args + (["--enable-supernode-auth"] if self.enable_node_auth else [])

    def supernode_args(self) -> list[str]:
        self.check("supernode")
        args = ["--insecure"] if self.insecure else ["--root-certificates", str(self.ca_certfile)]
        if self.auth_private_key:
            args += ["--auth-supernode-private-key", str(self.auth_private_key)]
        return args


def executable(name: str) -> str:
    """A Flower executable installed beside this Python (the ``fleet`` extra installs them)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FleetError(f"{name} is not installed: pip install 'mlpersonalize[fleet]'")
    return found


def _env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "FLWR_HOME": str(flwr_home), **(extra or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # flower-superexec
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Process:
    """One Flower process this module started, in its own session so it stops with its children."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def _start(name: str, argv: list[str], env: dict[str, str], log: Path) -> Process:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[bytes] = log.open("ab")
    try:
        popen = subprocess.Popen(
            argv,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        handle.close()
    return Process(name, popen, log)


def start_superlink(
    port: int, flwr_home: Path, security: Security, log: Path, host: str = "127.0.0.1"
) -> Process:
    """``flower-superlink``: the Fleet, Control and Runtime APIs on ``host:port``; no runtime installs."""
    argv = [executable("flower-superlink"), *security.superlink_args(), "--host", host, "--port", str(port)]
    argv += ["--disable-runtime-dependency-installation", "--database", str(flwr_home / "superlink.db")]
    flwr_home.mkdir(parents=True, exist_ok=True)
    return _start("superlink", argv, _env(flwr_home), log)


def node_config(values: dict[str, Any]) -> str:
    """``--node-config``'s text: ``key="value"`` pairs (strings quoted as TOML)."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in values.items())


def start_supernode(
    superlink: str,
    port: int,
    config: dict[str, Any],
    flwr_home: Path,
    security: Security,
    log: Path,
) -> Process:
    """``flower-supernode`` beside one device's store (``config``: home, pending, model, …)."""
    argv = [executable("flower-supernode"), *security.supernode_args(), "--superlink", superlink]
    argv += ["--port", str(port), "--node-config", node_config(config)]
    env = {"MLPERSONALIZE_HOME": str(config["home"])} if config.get("home") else None
    flwr_home.mkdir(parents=True, exist_ok=True)
    return _start("supernode", argv, _env(flwr_home, env), log)


def write_connection(flwr_home: Path, address: str, security: Security) -> None:
    """The SuperLink connection `flwr run` uses, as FLWR_HOME/config.toml."""
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{address}"',
    ]
    if security.insecure:
        lines.append("insecure = true")
    elif security.ca_certfile:
        lines.append(f"root-certificates = {json.dumps(str(security.ca_certfile))}")
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_config_args(run_config: dict[str, Any]) -> list[str]:
    return [arg for k, v in run_config.items() for arg in ("--run-config", f"{k}={json.dumps(v)}")]


def flwr_run(flwr_home: Path, run_config: dict[str, Any], app: Path = APP_DIR) -> str:
    """Submit the fleet app to the SuperLink of FLWR_HOME's connection; return the run id."""
    argv = [executable("flwr"), "run", str(app), CONNECTION, "--format", "json", *run_config_args(run_config)]
    done = subprocess.run(argv, env=_env(flwr_home), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    try:  # `--format json` prints one (indented) JSON object
        answer = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        answer = {}
    if done.returncode != 0 or not answer.get("success"):
        text = str(answer.get("error-message") or done.stderr or done.stdout or "no output")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        raise FleetError(f"flwr run failed: {lines[-1] if lines else 'no output'}")
    return str(answer["run-id"])


def wait_for_file(path: Path, seconds: float, watch: Sequence[Process] = ()) -> dict[str, Any]:
    """The JSON a run writes when it ends; FleetError when it does not come or a process dies."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.is_file():
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return data
        for proc in watch:
            if not proc.alive():
                raise FleetError(f"the {proc.name} stopped (exit {proc.popen.returncode}); see {proc.log}")
        time.sleep(0.5)
    raise FleetError(f"the run did not finish within {seconds:g} s (no {path})")


def wait_for_port(host: str, port: int, seconds: float, proc: Process) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if not proc.alive():
            raise FleetError(f"the {proc.name} stopped (exit {proc.popen.returncode}); see {proc.log}")
        time.sleep(0.2)
    raise FleetError(f"the {proc.name} did not listen on {host}:{port} within {seconds:g} s; see {proc.log}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalFleet:
    """A SuperLink and SuperNodes on loopback, stopped together (a context manager)."""

    workdir: Path
    devices: list[dict[str, Any]]  # one node config per device: home, pending, …
    security: Security = field(default_factory=lambda: Security(insecure=True))
    processes: list[Process] = field(default_factory=list)
    port: int = 0

    def __enter__(self) -> LocalFleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def flwr_home(self) -> Path:
        return self.workdir / "flwr"

    def start(self) -> None:
        self.port = self.port or free_port()
        link = start_superlink(
            self.port, self.flwr_home, self.security, self.workdir / "logs" / "superlink.log"
        )
        self.processes.append(link)
        wait_for_port("127.0.0.1", self.port, 60, link)
        address = f"127.0.0.1:{self.port}"
        for i, config in enumerate(self.devices):
            home = self.workdir / f"supernode-{i}"
            log = self.workdir / "logs" / f"supernode-{i}.log"
            self.processes.append(start_supernode(address, free_port(), config, home, self.security, log))
        write_connection(self.flwr_home, address, self.security)

    def run(self, run_config: dict[str, Any], seconds: float = 600) -> dict[str, Any]:
        result = self.workdir / "result.json"
        result.unlink(missing_ok=True)
        config = {"min-nodes": len(self.devices), **run_config, "result-file": str(result)}
        flwr_run(self.flwr_home, config)
        return wait_for_file(result, seconds, self.processes)

    def stop(self) -> None:
        for proc in reversed(self.processes):  # SuperNodes first, then the SuperLink
            proc.stop()
        self.processes.clear()

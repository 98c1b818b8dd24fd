"""Shared pieces: sizes per mode, timing, subprocess measurement, generated doodle data."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "sample_models" / "doodles"


def shown_path(path: Path) -> str:
    """``path`` as results record it: relative to the repository when inside it, so committed
    results name no folder of the machine that measured them."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Sizes:
    """How big each benchmark is; ``quick`` must fit ``make bench`` in 10 minutes on 2 cores."""

    name: str
    seeds: int
    shots: tuple[int, ...]
    new_label_counts: tuple[int, ...]
    test_new_per_label: int
    test_old_per_label: int
    train_examples: int  # speed (a) and (b)
    train_epochs: int
    train_batch: int
    predict_examples: int
    prepare_files: int
    startup_repeats: int
    scaling: tuple[int, ...]
    repeats: int  # repeats of in-process timings (best-of / median)
    profile: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SMOKE = Sizes(
    name="smoke",
    seeds=2,
    shots=(1, 3),
    new_label_counts=(3,),
    test_new_per_label=3,
    test_old_per_label=2,
    train_examples=40,
    train_epochs=2,
    train_batch=8,
    predict_examples=64,
    prepare_files=70,
    startup_repeats=1,
    scaling=(20, 40),
    repeats=1,
    profile=False,
)
QUICK = Sizes(
    name="quick",
    seeds=5,
    shots=(1, 3, 5),
    new_label_counts=(3, 10),
    test_new_per_label=30,
    test_old_per_label=10,
    train_examples=1000,
    train_epochs=10,
    train_batch=8,
    predict_examples=2000,
    prepare_files=1000,
    startup_repeats=5,
    scaling=(100, 1000, 10000),
    repeats=3,
)
FULL = Sizes(
    name="full",
    seeds=10,
    shots=(1, 3, 5),
    new_label_counts=(3, 10),
    test_new_per_label=50,
    test_old_per_label=20,
    train_examples=1000,
    train_epochs=10,
    train_batch=8,
    predict_examples=5000,
    prepare_files=2000,
    startup_repeats=11,
    scaling=(100, 1000, 10000),
    repeats=5,
)
MODES = {s.name: s for s in (SMOKE, QUICK, FULL)}


def mean_std(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values]
    return {
        "mean": float(np.mean(vals)) if vals else float("nan"),
        "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
        "n": len(vals),
    }


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (and the last result)."""
    times, result = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def interleaved_times(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall time of each function per round, run in turns so a change in load hits them all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each function, run in turns (see interleaved_times)."""
    return {name: statistics.median(values) for name, values in interleaved_times(fns, repeats).items()}


# Runs the CLI with torch made unimportable: what a machine without torch sees. With torch
# installed (as `make bench` does), `import onnxruntime` imports it (see BENCHMARKS.md).
_NO_TORCH = (
    "import sys; sys.modules['torch'] = None; sys.argv[0] = 'mlpersonalize'; "
    "from mlpersonalize.cli.app import main; sys.exit(main())"
)


ALWAYS_HIDE_TORCH = False  # the smoke test sets it: structure, not speed, and fast


def cli(*args: str, hide_torch: bool = False) -> list[str]:
    """The ``mlpersonalize`` command next to this interpreter (else ``python -m``)."""
    if hide_torch or ALWAYS_HIDE_TORCH:
        return [sys.executable, "-c", _NO_TORCH, *args]
    script = Path(sys.executable).parent / "mlpersonalize"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "mlpersonalize", *args]


@dataclass
class Run:
    seconds: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float = float("nan")  # user + system of the command (wait4's rusage)


# A small launcher process spawns each measured command and reports wall time and wait4's
# ru_maxrss. Spawning from the benchmark process itself would not do: Linux carries a process's
# peak RSS across fork and exec, so every child would inherit this big process's peak.
_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.perf_counter() - start
scale = 1024 * 1024 if sys.platform == "darwin" else 1024
with open(sys.argv[1], "w") as out:
    cpu = usage.ru_utime + usage.ru_stime
    json.dump({"seconds": seconds, "max_rss_mb": usage.ru_maxrss / scale, "cpu_seconds": cpu}, out)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run a command: wall time from spawn to exit, and its peak resident memory."""
    import json
    import tempfile

    full_env = {**os.environ, **(env or {})}
    if "PYTHONDONTWRITEBYTECODE" not in (env or {}):
        # Python's default, and how an installed package runs: bytecode compiled once and cached.
        # A machine that sets PYTHONDONTWRITEBYTECODE would make every measured command compile
        # the project's modules again (~45 ms of an update from a source checkout).
        full_env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        report = Path(tmp) / "run.json"
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(report), *cmd],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd,
        )
        measured = (
            json.loads(report.read_text()) if report.exists() else {"seconds": float("nan"), "max_rss_mb": 0}
        )
    cpu = measured.get("cpu_seconds", float("nan"))
    return Run(measured["seconds"], measured["max_rss_mb"], proc.returncode, proc.stdout, proc.stderr, cpu)


LEARNED_NOTHING = 9  # `update` saved the model but learned nothing on its batch: it still ran


def check(run: Run, what: str) -> Run:
    if run.returncode not in (0, LEARNED_NOTHING):
        tail = "\n".join(run.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{what} failed with exit {run.returncode}: {tail}")
    return run


def copy_model(model: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model, target)
    return target


# --- data ------------------------------------------------------------------------------------


def doodles(labels: Sequence[str], per_label: int, seed: int, constraint: Any, workers: int = 1) -> Any:
    """``per_label`` preprocessed drawings of each label (uint8 pixels, int ids)."""
    from mlpersonalize.sample.doodles import make_dataset

    return make_dataset(list(labels), per_label, seed, constraint, workers=workers)


def distinct_copies(pixels: np.ndarray, n: int) -> np.ndarray:
    """``n`` examples from ``pixels`` repeated, every copy after the first told apart by the lowest
    bit of a few pixels in its first row (copy c flips bit b of pixel b where c's bit b is set).
    The drawings look the same, yet no two are the same bytes: ``update`` leaves a repeated
    drawing out (mlpersonalize/repeats.py), so plain copies would measure a smaller batch."""
    reps = -(-n // len(pixels))
    out = np.concatenate([pixels] * reps)[:n].copy()
    for c in range(1, reps):
        part = out[c * len(pixels) : (c + 1) * len(pixels)]
        for b in range(c.bit_length()):
            if c >> b & 1:
                part[:, 0, b, :] ^= 1
    return out


def make_batch(pixels: np.ndarray, labels: Sequence[str], manifest: Any) -> Any:
    """A Batch as `prepare` would write it (sources and digests stand in for files)."""
    from mlpersonalize.batch import Batch

    return Batch.from_pixels(pixels, list(labels), manifest)


def write_batch(path: Path, pixels: np.ndarray, labels: Sequence[str], manifest: Any) -> Path:
    from mlpersonalize.batch import save_batch

    save_batch(path, make_batch(pixels, labels, manifest), force=True)
    return path


def novel_and_named(manifest: Any) -> tuple[list[str], list[str]]:
    """(new labels to teach, the model's own labels to test for forgetting).

    For the bundled doodle model: NOVEL_LABELS and the model's labels. For another model (the
    tiny test package) the doodle named labels stand in as "new" ones when they are unknown.
    """
    from mlpersonalize.sample.doodles import NAMED_LABELS, NOVEL_LABELS

    known = set(manifest.labels)
    renderable = set(NAMED_LABELS) | set(NOVEL_LABELS)
    old = [label for label in manifest.labels if label in renderable]
    new = [label for label in (*NOVEL_LABELS, *NAMED_LABELS) if label not in known]
    return new, old


def machine() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import platform
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores_available": cores,
        "load_average_at_start": [round(v, 2) for v in load],
        "versions": {
            name: version(name)
            for name in ("mlpersonalize", "onnxruntime-training-cpu", "onnx", "numpy", "pillow", "torch")
        },
    }

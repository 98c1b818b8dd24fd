"""Soak test (P3): SIGKILL updates and rollbacks at random moments, check the model after each kill.

    python scripts/soak_kill.py --count 200 --seconds 600 [--seed N] [--home DIR] [--prepare-count 30]

With ``--prepare-count N`` it then SIGKILLs N runs of ``mlpersonalize prepare --append`` (the
real CLI, 200 large PNGs so its decoding workers are busy) at random moments, and checks after
each kill (P12): no worker of the killed run is left alive, the batch's lock is free (a
``prepare --append --no-wait`` succeeds), and the batch, if written, loads.

A zygote process imports everything once, builds a tiny model and one committed update, then
loops: fork a child that runs an update (or, one time in five, a rollback), sleep a random delay,
SIGKILL the child (if it is still running). Four updates in five teach fresh drawings (a rerun of
a taught batch has nothing new, exit 9, and ends before most kills); the fifth reruns a batch.
After each round it checks the promise: ``current`` names a committed version whose every file
hash verifies, the lock is free; and when the child finished on its own (exit 0), that
``current`` names the version it reported; when the update was refused (a conflict with what an
earlier round taught, or the guard) or had nothing new (its batch is already in the current
version), that ``current`` did not move. At the end one update runs to completion and no temp
file or folder may be left. The seed is printed first so a failure can be replayed. Exit 0 when
every round held, 1 (with the round and seed) otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE), str(HERE / "tests")]


def _child(op: str, home: Path, batches: list[Path], seed: int, report: Path) -> None:
    """Runs in the forked child: one update or rollback, then the version it left on ``report``."""
    from mlpersonalize import store, updater
    from mlpersonalize.errors import NothingNew, RejectedError

    random.seed(seed)
    if op == "rollback":
        version = store.rollback(home)
    else:
        batch = random.choice(batches)
        options = updater.UpdateOptions(model=home, epochs=random.randint(1, 3), keep=random.randint(1, 4))
        try:
            version = updater.update([batch], options).version or ""
        except RejectedError:  # the guard or a conflict refused it: a documented outcome, no change
            os._exit(REFUSED)
        except NothingNew:  # every drawing already in the model (exit 9): no change either
            os._exit(REFUSED)
    report.write_text(version)


REFUSED = 4  # a child's exit status when the update was refused (exit 6 in the CLI) or had nothing
# new to learn (exit 9: the batch is already in the current version), not failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="kill rounds at most")
    parser.add_argument("--seconds", type=float, default=300.0, help="stop after this long")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-delay", type=float, default=0.2, help="longest wait before the kill")
    parser.add_argument("--home", type=Path, default=None, help="work here (default: a temp folder)")
    parser.add_argument("--prepare-count", type=int, default=0, help="killed prepare --append runs")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"soak_kill seed={seed}", flush=True)
    rng = random.Random(seed)
    work = args.home or Path(tempfile.mkdtemp(prefix="mlp-soak-"))
    os.environ["MLPERSONALIZE_HOME"] = str(work / "home")
    os.environ.pop("MLPERSONALIZE_MODEL", None)
    os.environ.pop("MLPERSONALIZE_FAULT", None)

    from reliability_kit import (
        NEW,
        assert_healthy,
        build_doodle_package,
        personalized,
        stale_entries,
        write_batch,
    )

    from mlpersonalize import store, updater

    original = build_doodle_package(work / "original")
    home = personalized(original, work)
    batches = [write_batch(work / f"b{i}.npz", original, [label], seed=i) for i, label in enumerate(NEW)]
    for batch in batches:  # taught before the loop: their reruns are the rounds with nothing new
        updater.update([batch], updater.UpdateOptions(model=home, epochs=1, force=True))
    report = work / "report"
    start, rounds, kills, completed, refused = time.monotonic(), 0, 0, 0, 0
    while rounds < args.count and time.monotonic() - start < args.seconds:
        rounds += 1
        # what rollback steps to (the version current replaced), not merely an older folder: a
        # version rolled back from or published by a killed run is kept but never a target
        can_roll_back = len(store.rollback_chain(home)) > 1
        op = "rollback" if rng.random() < 0.2 and can_roll_back else "update"
        if op == "update" and rng.random() < 0.8:
            # fresh drawings: one batch applied again has nothing new (exit 9) and ends within
            # milliseconds, before any kill; one round in five still reruns an earlier batch
            label, drawings = rng.choice(NEW), rng.randrange(100, 2**31)  # never `last`'s seed below
            batches.append(write_batch(work / f"r{rounds}.npz", original, [label], seed=drawings))
            chosen = batches[-1:]
        else:
            chosen = batches
        report.unlink(missing_ok=True)
        delay = rng.uniform(0.0, args.max_delay)
        before = store.current_version(home)
        child_seed = rng.randrange(2**32)
        pid = os.fork()
        if pid == 0:  # the child: never returns into the loop
            code = 0
            try:
                _child(op, home, chosen, child_seed, report)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent as exit 3
                print(f"round {rounds}: child {op} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                code = 3
            os._exit(code)
        deadline = time.monotonic() + delay
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.005)
        else:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        try:
            if os.WIFSIGNALED(status):
                kills += 1
            elif os.WEXITSTATUS(status) == REFUSED:
                # these drawings can contradict what an earlier round taught, or be in the model
                # already: either way the model must stay exactly as it was
                refused += 1
                assert store.current_version(home) == before, "a refused update changed current"
            else:
                assert os.WEXITSTATUS(status) == 0, f"{op} failed on its own (exit {os.WEXITSTATUS(status)})"
                completed += 1
                assert store.current_version(home) == report.read_text(), "exit 0 but current differs"
            assert_healthy(home)
        except AssertionError as exc:
            print(f"FAILED round {rounds} ({op}, delay {delay:.3f}s, seed={seed}): {exc}", flush=True)
            return 1
    # The run after the last kill needs no manual step and leaves nothing behind.
    last = write_batch(work / "last.npz", original, [NEW[0]], seed=len(NEW))  # drawings no round saw
    result = updater.update([last], updater.UpdateOptions(model=home, epochs=1, force=True))
    try:
        assert store.current_version(home) == result.version
        assert_healthy(home)
        assert stale_entries(home) == [], stale_entries(home)
    except AssertionError as exc:
        print(f"FAILED after the loop (seed={seed}): {exc}", flush=True)
        return 1
    print(
        f"soak_kill ok: {rounds} rounds, {kills} killed, {completed} completed, {refused} refused, "
        f"seed={seed}",
        flush=True,
    )
    if args.prepare_count:
        return _prepare_rounds(rng, work, original, args.prepare_count, seed)
    return 0


def _prepare_rounds(rng: random.Random, work: Path, model: Path, count: int, seed: int) -> int:
    """SIGKILL ``prepare --append`` while its workers decode; no worker or held lock may remain."""
    import subprocess

    import numpy as np
    from PIL import Image

    from mlpersonalize.batch import load_batch

    data, small, batch = work / "many", work / "small", work / "r.npz"
    for i in range(200):
        folder = data / f"label{i % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 255, (400, 400), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    (small / "one").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(small / "one" / "x.png")
    env = {**os.environ, "MLPERSONALIZE_MODEL": str(model)}
    cli = [sys.executable, "-m", "mlpersonalize", "prepare"]
    busy = 0  # rounds killed while decoding workers ran (the others ended before the kill)
    for round_no in range(1, count + 1):
        delay = rng.uniform(0.2, 1.2)
        child = subprocess.Popen(
            [*cli, str(data), "-o", str(batch), "--append"], env=env, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        workers = _children(child.pid)
        busy += bool(workers)
        child.kill()
        child.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.05)
        left = [w for w in workers if _alive(w)]
        check = subprocess.run(
            [*cli, str(small), "-o", str(batch), "--append", "--no-wait"],
            env=env,
            capture_output=True,
            text=True,
        )
        try:
            assert not left, f"workers {left} outlived the killed prepare"
            assert check.returncode == 0, f"the next prepare --no-wait failed: {check.stderr.strip()}"
            load_batch(batch)
        except AssertionError as exc:
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            print(f"FAILED prepare round {round_no} (delay {delay:.2f}s, seed={seed}): {exc}", flush=True)
            return 1
    print(
        f"soak_kill prepare ok: {count} prepare --append runs killed, {busy} of them while their "
        f"workers decoded, seed={seed}",
        flush=True,
    )
    return 0


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())

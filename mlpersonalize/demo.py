"""`make demo`: the Core ML sample's story on the bundled model, through the real CLI.

Three new emoji stickers are taught from three drawings each (prepare → update), then new
drawings of them and of labels the model already knew are classified before and after.
Everything happens in ./demo (its own MLPERSONALIZE_HOME), so the user's models are untouched.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

STICKERS = {"☂️": "umbrella", "🔔": "bell", "🎵": "music note"}  # emoji label -> what is drawn
KNOWN = ("star", "heart", "house", "fish")
SHOTS, TESTS = 3, 6


def run(*args: str, env: dict[str, str], capture: bool = False) -> str:
    """Show a command as a user would type it, run it, stop the demo if it fails."""
    print(f"\n$ mlpersonalize {shlex.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "mlpersonalize", *args], env=env, text=True, capture_output=capture
    )
    if done.returncode != 0:
        if capture:
            sys.stderr.write(done.stderr)
        sys.exit(done.returncode)
    return done.stdout if capture else ""


def draw(workspace: Path) -> tuple[Path, Path]:
    """Training drawings per sticker folder, and a test folder of unseen drawings."""
    from .sample.doodles import render, sample_rng  # numpy and PIL: after the demo's first steps ran

    train, test = workspace / "drawings", workspace / "test"
    for emoji, subject in STICKERS.items():
        (train / emoji).mkdir(parents=True)
        for n in range(SHOTS):
            render(subject, sample_rng(subject, n, seed=7)).save(train / emoji / f"{n}.png")
    test.mkdir()
    for label, subject in [*STICKERS.items(), *((k, k) for k in KNOWN)]:
        for n in range(TESTS):
            render(subject, sample_rng(subject, 1000 + n, seed=7)).save(test / f"{label}_{n}.png")
    return train, test


def score(jsonl: str) -> tuple[float, float]:
    """(accuracy on the new stickers, accuracy on the known labels) from predict --json output."""
    hits: dict[bool, list[bool]] = {True: [], False: []}
    for line in jsonl.splitlines():
        row = json.loads(line)
        truth = Path(row["file"]).name.rsplit("_", 1)[0]
        hits[truth in STICKERS].append(row.get("label") == truth)
    return sum(hits[True]) / len(hits[True]), sum(hits[False]) / len(hits[False])


def main() -> None:
    workspace = Path("demo").resolve()
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir()
    env = {**os.environ, "MLPERSONALIZE_HOME": str(workspace / "home")}
    env.pop("MLPERSONALIZE_MODEL", None)
    train, test = draw(workspace)
    print(f"Drew {SHOTS} drawings of each new sticker ({', '.join(STICKERS)}) in {train}")
    print(f"and {TESTS} unseen drawings of each, plus of {', '.join(KNOWN)}, in {test}")

    run("inspect", env=env)
    before = score(run("predict", str(test), "--json", env=env, capture=True))
    print(
        f"before: new stickers {before[0]:.0%} right (the model has never seen them), known {before[1]:.0%}"
    )
    batch = workspace / "stickers.npz"
    run("prepare", str(train), "-o", str(batch), env=env)
    run("update", str(batch), env=env)
    run("predict", str(test), env=env)
    after = score(run("predict", str(test), "--json", env=env, capture=True))
    print(
        f"\nafter {SHOTS} drawings each: new stickers {after[0]:.0%} right, known labels {after[1]:.0%} "
        f"(were {before[1]:.0%}). The bundled model is unchanged; the personalized copy is in "
        f"{workspace / 'home'} (delete {workspace} to undo everything)."
    )


if __name__ == "__main__":
    main()

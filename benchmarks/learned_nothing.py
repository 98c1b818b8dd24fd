"""How often an update on real drawings says "learned nothing" (exit 9), in-process.

    python -m benchmarks.learned_nothing [--shots 3] [--seeds 10]

Per seed, the protocol of ``benchmarks.real_digits`` without the CLI: scikit-learn's handwritten
digits rendered as drawings, round 1 teaches five digits (``--shots`` drawings each) to the bundled
model, round 2 five more to its result, with ``update_algorithm.personalize`` (what ``update`` runs).
Prints how many of the updates judged themselves to have learned nothing, and why. An update that
did learn (BENCHMARKS.md section 0: round 2's new labels ~90% right on fresh drawings with 3) and
still exits 9 tells a cron job something is wrong when it is not.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mlpersonalize import package as pk
from mlpersonalize import update_algorithm
from mlpersonalize.batch import Batch
from mlpersonalize.images import load

from .common import BUNDLED
from .real_digits import LABELS, ROUND, load_digits, render


def run(shots: int, seeds: int) -> tuple[int, int, list[tuple[int, int, str]]]:
    """(updates that learned nothing, updates, (seed, round, reason) of each)."""
    images, digits = load_digits()
    base = pk.load_package(BUNDLED)
    constraint = base.manifest.constraint
    flagged: list[tuple[int, int, str]] = []
    total = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        order = rng.permutation(10)
        model, work = base, Path(tempfile.mkdtemp(prefix="mlp-learned-"))
        try:
            for round_no in (1, 2):
                pixels, names = [], []
                for d in order[(round_no - 1) * ROUND : round_no * ROUND]:
                    for i in rng.choice(np.flatnonzero(digits == d), shots, replace=False):
                        png = io.BytesIO()
                        render(images[i], transparent=bool(i % 2)).save(png, format="PNG")
                        pixels.append(load(png.getvalue(), constraint))
                        names.append(LABELS[d])
                batch = Batch.from_pixels(np.stack(pixels), names, model.manifest)
                out = update_algorithm.personalize(model, [batch], model.manifest.update_defaults, 0.02)
                total += 1
                if not out.history["learned"]["learned"]:
                    flagged.append((seed, round_no, str(out.history["learned"]["reason"])))
                out.history.update(
                    time=pk.now_iso(), kind="update", batches=[], engine="-", producer=pk.producer()
                )
                version = work / f"round{round_no}"
                version.mkdir()
                exemplars = (out.exemplar_embeddings, out.exemplar_labels)
                pk.write_version(
                    version, model, out.head, out.labels, exemplars, out.params, out.history, out.unknown
                )
                model = pk.load_package(version)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return len(flagged), total, flagged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args(argv)
    count, total, flagged = run(args.shots, args.seeds)
    print(f"{args.shots} drawings per label: learned nothing after {count} of {total} updates")
    for seed, round_no, reason in flagged:
        print(f"  seed {seed} round {round_no}: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run the benchmarks and write results.json and BENCHMARKS.md.

    python -m benchmarks.run              # --quick: what `make bench` runs (< 10 min on 2 cores)
    python -m benchmarks.run --smoke      # seconds, on any model (the test uses the tiny package)
    python -m benchmarks.run --full       # more seeds and data
    python -m benchmarks.run --model PATH --out DIR --only quality,train

Default output: BENCHMARKS.md at the repository root and benchmarks/results.json.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common, quality, quality_rows, real_digits, report, scaling, speed

SECTIONS = (
    "real_digits",
    "quality",
    "reteach",
    "train",
    "e2e",
    "predict",
    "prepare",
    "startup",
    "scaling",
    "cost",
    "profile",
)


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="default")
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="tiny sizes")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="more seeds/data")
    parser.add_argument("--model", type=Path, default=common.BUNDLED, help="model package (default: bundled)")
    parser.add_argument("--out", type=Path, default=None, help="folder for BENCHMARKS.md and results.json")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(SECTIONS)}")
    parser.set_defaults(mode="quick")
    return parser.parse_args(argv)


def run(model: Path, sizes: common.Sizes, only: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """Every selected benchmark on ``model``; the raw results as one JSON-able dict."""
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": common.machine(),
        "mode": sizes.to_dict(),
        "model": {"path": common.shown_path(model)},
    }
    with tempfile.TemporaryDirectory(prefix="mlp-bench-") as tmp:
        work = Path(tmp)
        data = speed.Data(model, sizes.train_examples)
        m = data.manifest
        results["model"].update(
            name=m.name, model_id=m.model_id, labels=len(m.labels), embedding_dim=m.embedding_dim,
            update_defaults=m.update_defaults.to_dict(), exemplars_per_label=m.exemplars_per_label,
        )  # fmt: skip
        files_dir = None
        if {"predict", "prepare", "profile"} & set(only):
            files_dir = work / "files"
            speed.write_files(files_dir, data.labels, sizes.prepare_files)
        steps = {
            "real_digits": lambda: (
                real_digits.run(model, real_digits.MODES.get(sizes.name, real_digits.SMOKE), log)
                if real_digits.available()
                else {"skipped": "scikit-learn is not installed (pip install -e '.[bench]')"}
            ),
            "quality": lambda: quality.run(model, sizes, log),
            "reteach": lambda: quality_rows.run(model, sizes.seeds, log),
            "train": lambda: speed.train(data, sizes, log),
            "e2e": lambda: speed.e2e(data, sizes, work, log),
            "predict": lambda: speed.predict(data, sizes, files_dir, log),
            "prepare": lambda: speed.prepare(data, sizes, files_dir, work, log),  # type: ignore[arg-type]
            "startup": lambda: speed.startup(model, sizes, log),
            "scaling": lambda: scaling.run(data, sizes, work, log),
            "cost": lambda: speed.cost(data, sizes, work, log),
            "profile": lambda: {
                "update": scaling.profile_update(data, sizes.train_examples, work),
                "prepare": scaling.profile_prepare(data, files_dir, work),  # type: ignore[arg-type]
            },
        }
        for name in SECTIONS:
            if name not in only or (name == "profile" and not sizes.profile):
                continue
            log(f"{name} …")
            t0 = time.perf_counter()
            results[name] = steps[name]()
            results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 2)
    results["targets"] = report.targets(results)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not (args.model / "manifest.json").is_file():
        sys.stderr.write(
            f"Error: no model package at {args.model} (manifest.json missing); pass --model PATH\n"
        )
        return 1
    only = tuple(s for s in args.only.split(",") if s) or SECTIONS
    unknown = set(only) - set(SECTIONS)
    if unknown:
        sys.stderr.write(f"Error: unknown section(s) {', '.join(sorted(unknown))}\n")
        return 2
    sizes = common.MODES[args.mode]
    log(f"mode {sizes.name}, model {args.model}")
    results = run(args.model.resolve(), sizes, only)
    if args.out is None:
        md_path, json_path = common.REPO / "BENCHMARKS.md", common.REPO / "benchmarks" / "results.json"
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        md_path, json_path = args.out / "BENCHMARKS.md", args.out / "results.json"
    json_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    md_path.write_text(report.markdown(results))
    log(f"done in {results['total_seconds']} s: wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

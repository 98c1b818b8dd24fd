"""Write sample doodles to folders, for demos and for trying ``prepare``/``update`` by hand.

    python -m mlpersonalize.sample --out drawings --per-label 3 umbrella key
    python -m mlpersonalize.sample --list

Writes ``OUT/<label>/<n>.png`` and prints each written path on stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import doodles


def main(argv: list[str] | None = None) -> int:
    """Parse options and write the drawings (or list the labels)."""
    parser = argparse.ArgumentParser(
        prog="python -m mlpersonalize.sample", description=__doc__.strip().split("\n")[0]
    )
    parser.add_argument("labels", nargs="*", help="named, novel or proc-<id> labels")
    parser.add_argument("--out", type=Path, help="folder to write <label>/<n>.png into")
    parser.add_argument("--per-label", type=int, default=3, help="drawings per label (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawings (default 0)")
    parser.add_argument("--size", type=int, default=112, help="image side in pixels (default 112)")
    parser.add_argument("--list", action="store_true", help="print the named and novel labels")
    args = parser.parse_args(argv)
    if args.list:
        for family, labels in (("named", doodles.NAMED_LABELS), ("novel", doodles.NOVEL_LABELS)):
            for label in labels:
                print(f"{family}\t{label}")
        return 0
    if args.out is None or not args.labels:
        parser.error("give --out and at least one label (or --list)")
    known = set(doodles.NAMED_LABELS) | set(doodles.NOVEL_LABELS)
    unknown = [x for x in args.labels if x not in known and not x.startswith(doodles.PROC_PREFIX)]
    if unknown:
        parser.error(f"unknown label(s): {', '.join(unknown)} (see --list)")
    if not 1 <= args.per_label <= 10_000 or not 16 <= args.size <= 2048:
        parser.error("--per-label must be 1..10000 and --size 16..2048")
    for path in doodles.write_folder(args.out, args.labels, args.per_label, args.seed, args.size):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How the bundled model's "unknown" threshold trades kept answers for refused ones.

    python -m benchmarks.threshold [--model PATH] [--per-label N]

For each threshold: the share of correct predictions on fresh drawings of the model's own
labels that stay answered, of its mistakes that become "unknown", and of drawings of labels it
never saw (NOVEL_LABELS) that become "unknown". The manifest's threshold was chosen from this.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlpersonalize.inference import Classifier
from mlpersonalize.package import load_package
from mlpersonalize.sample.doodles import NOVEL_LABELS, make_dataset
from mlpersonalize.store import bundled_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=bundled_model_path())
    parser.add_argument("--per-label", type=int, default=20)
    args = parser.parse_args()
    package = load_package(args.model)
    classifier = Classifier(package)
    constraint = package.manifest.constraint
    pixels, ids = make_dataset(list(package.manifest.labels), args.per_label, 999, constraint)
    probs = classifier.probabilities(pixels)
    confidence, right = probs.max(axis=1), probs.argmax(axis=1) == ids
    novel, _ = make_dataset(list(NOVEL_LABELS), args.per_label, 999, constraint)
    novel_confidence = classifier.probabilities(novel).max(axis=1)
    threshold = package.manifest.unknown_threshold
    print(f"accuracy {right.mean():.3f} on {len(ids)} drawings; manifest threshold {threshold}")
    print("threshold | correct kept | mistakes -> unknown | never-seen -> unknown")
    for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        print(
            f"{t:9.1f} | {(confidence[right] >= t).mean():12.3f} | {(confidence[~right] < t).mean():19.3f} | "
            f"{(novel_confidence < t).mean():.3f}"
        )


if __name__ == "__main__":
    main()

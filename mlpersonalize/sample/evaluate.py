"""How well the sample backbone classifies and transfers: held-out accuracy and few-shot episodes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Embed = Callable[[np.ndarray], np.ndarray]


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, np.float32).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def pixels_as_features(pixels: np.ndarray) -> np.ndarray:
    """The raw-pixel baseline: each drawing's pixels as one unit vector."""
    return unit(pixels.astype(np.float32))


def accuracy(features: np.ndarray, ids: np.ndarray, rows: np.ndarray) -> float:
    """Top-1 accuracy of a cosine classifier with the given class rows."""
    return float(np.mean(np.argmax(unit(features) @ unit(rows).T, axis=1) == ids))


def confusions(
    features: np.ndarray, ids: np.ndarray, rows: np.ndarray, labels: list[str], top: int = 6
) -> str:
    """The most frequent (true → predicted) mistakes, for the build log."""
    pred = np.argmax(unit(features) @ unit(rows).T, axis=1)
    pairs, counts = np.unique(np.stack([ids, pred], 1)[pred != ids], axis=0, return_counts=True)
    worst = np.argsort(-counts, kind="stable")[:top]
    return ", ".join(f"{labels[pairs[i][0]]}→{labels[pairs[i][1]]} ×{counts[i]}" for i in worst) or "none"


def few_shot(
    features: np.ndarray, ids: np.ndarray, ways: int, shots: int, episodes: int, seed: int, queries: int = 10
) -> float:
    """Mean accuracy of nearest-class-mean (cosine) over random ``ways``-way ``shots``-shot episodes."""
    rng = np.random.default_rng(seed)
    feats = unit(features)
    by_class = [np.flatnonzero(ids == c) for c in np.unique(ids)]
    correct = total = 0
    for _ in range(episodes):
        chosen = rng.choice(len(by_class), size=ways, replace=False)
        protos, query_feats, query_ids = [], [], []
        for k, c in enumerate(chosen):
            order = rng.permutation(by_class[c])
            protos.append(feats[order[:shots]].mean(axis=0))
            query_feats.append(feats[order[shots : shots + queries]])
            query_ids.append(np.full(len(query_feats[-1]), k))
        pred = np.argmax(np.concatenate(query_feats) @ unit(np.stack(protos)).T, axis=1)
        correct += int(np.sum(pred == np.concatenate(query_ids)))
        total += len(pred)
    return correct / total


def learn_without_forgetting(
    named: tuple[np.ndarray, np.ndarray, np.ndarray],
    novel: tuple[np.ndarray, np.ndarray],
    ways: int,
    shots: int,
    episodes: int,
    seed: int,
) -> tuple[float, float]:
    """Imprint ``ways`` novel labels from ``shots`` drawings next to the named head rows.

    Returns (accuracy on the new labels' other drawings, accuracy on held-out named drawings),
    both over the grown label set: what an update from three drawings has to achieve.
    """
    named_feats, named_ids, rows = named
    novel_feats, novel_ids = unit(novel[0]), novel[1]
    rng = np.random.default_rng(seed)
    classes = np.unique(novel_ids)
    new_acc, old_acc = [], []
    base = len(rows)
    for _ in range(episodes):
        chosen = rng.choice(classes, size=ways, replace=False)
        protos, q_feats, q_ids = [], [], []
        for k, c in enumerate(chosen):
            order = rng.permutation(np.flatnonzero(novel_ids == c))
            protos.append(novel_feats[order[:shots]].mean(axis=0))
            q_feats.append(novel_feats[order[shots:]])
            q_ids.append(np.full(len(order) - shots, base + k))
        grown = np.concatenate([unit(rows), unit(np.stack(protos))])
        new_acc.append(accuracy(np.concatenate(q_feats), np.concatenate(q_ids), grown))
        old_acc.append(accuracy(named_feats, named_ids, grown))
    return float(np.mean(new_acc)), float(np.mean(old_acc))


def transfer_report(
    embed: Embed, novel_pixels: np.ndarray, novel_ids: np.ndarray, seed: int, episodes: int = 300
) -> dict[str, float]:
    """Few-shot accuracy on novel labels, embedding vs raw pixels, 5- and 10-way × 1/3/5 shots."""
    feats = {"embedding": embed(novel_pixels), "pixels": pixels_as_features(novel_pixels)}
    out: dict[str, float] = {}
    ways_options = [w for w in (5, 10) if w <= len(np.unique(novel_ids))]
    for ways in ways_options:
        for shots in (1, 3, 5):
            for name, f in feats.items():
                out[f"fewshot_{ways}way_{shots}shot_{name}"] = round(
                    few_shot(f, novel_ids, ways, shots, episodes, seed), 4
                )
    return out

"""Quality: teach new doodle labels from 1, 3 or 5 drawings; compare three ways of updating.

(a) ``shipped``: :func:`mlpersonalize.update` (the public API; what ``mlpersonalize update``
    runs: imprinting, rehearsal of the exemplar memory, anchor, guard pass and final pass), with
    the manifest's update defaults, as the CLI uses them. Its guard verdict is recorded: a refused
    update leaves the model unchanged unless ``--force`` (here forced, to measure it anyway).
(b) ``naive``: a plain updatable layer: new rows random-initialised, the head fine-tuned on the
    new examples only (no imprinting, no rehearsal, no anchor), same epochs / rate / batch size,
    through the same engine and training loop (``engines``, ``fitting``).
(c) ``knn``: k-nearest neighbours over embeddings (k=3, inverse-distance weights) as Apple's
    drawing sample does; every example kept: the package's exemplars of the old labels plus the
    new drawings.

New-label top-1 is measured on fresh held-out drawings of the new labels, over the full label set
(old + new). Old-label accuracy is measured on fresh drawings of the model's own labels, before
and after.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import Sizes, make_batch, mean_std, novel_and_named

K = 3
METHODS = ("shipped", "shipped_recommended", "naive", "naive_lr10", "knn")


def knn_predict(
    memory: np.ndarray, memory_idx: np.ndarray, query: np.ndarray, n_classes: int, k: int = K
) -> np.ndarray:
    """Inverse-distance-weighted k-NN vote (Euclidean distance on unit embeddings)."""
    from mlpersonalize.heads.cosine import normalize

    mem, q = normalize(memory), normalize(query)
    dist = np.sqrt(np.maximum(2.0 - 2.0 * (q @ mem.T), 0.0))
    k = min(k, len(mem))
    near = np.argpartition(dist, k - 1, axis=1)[:, :k]
    votes = np.zeros((len(q), n_classes), np.float64)
    rows = np.arange(len(q))[:, None]
    np.add.at(votes, (np.broadcast_to(rows, near.shape), memory_idx[near]), 1.0 / (dist[rows, near] + 1e-6))
    return np.argmax(votes, axis=1)


def _acc(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(pred == truth)) if len(truth) else float("nan")


def run(model: Path, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    import tempfile

    import onnx

    import mlpersonalize
    from mlpersonalize import engines, fitting
    from mlpersonalize.batch import save_batch
    from mlpersonalize.heads import FitResult, StoredHead
    from mlpersonalize.heads.cosine import WEIGHT, CosineHead, cosine_logits, head_weight
    from mlpersonalize.manifest import HEAD_FILE
    from mlpersonalize.params import UpdateParams
    from mlpersonalize.updater import DEFAULT_MAX_DROP, UpdateOptions

    shipped_model = mlpersonalize.load_model(model)
    package = shipped_model.package
    manifest = package.manifest
    old_weight = head_weight(onnx.load(str(package.path / HEAD_FILE)))
    scale = manifest.logit_scale

    def cosine_predict(emb: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return np.argmax(cosine_logits(emb, weight, scale), axis=1)

    def fine_tune(weight: np.ndarray, emb: np.ndarray, idx: np.ndarray, params: UpdateParams) -> FitResult:
        head = StoredHead(weight, scale)
        session = engines.get("ort").open(CosineHead.graph(head), CosineHead.trainable(head), params)
        try:
            losses = fitting.train(session, emb, idx, params)
            return FitResult(session.parameters()[WEIGHT], losses)
        finally:
            session.close()

    n_old = len(manifest.labels)
    params = UpdateOptions().params(manifest.update_defaults, manifest.update_ranges)  # as the CLI
    # The recommended new-label parameters (training.RECOMMENDED in older trees, else the tool's
    # UpdateParams defaults), measured too when they differ from the manifest's defaults.
    RECOMMENDED = UpdateParams()  # noqa: N806
    recommended = UpdateOptions(
        epochs=RECOMMENDED.epochs, learning_rate=RECOMMENDED.learning_rate, batch_size=RECOMMENDED.batch_size
    ).params(manifest.update_defaults, manifest.update_ranges)
    variants = {"shipped": params}
    if recommended != params:
        variants["shipped_recommended"] = recommended
    ex_emb, ex_idx = package.exemplars()
    new_pool, old_test_labels = novel_and_named(manifest)
    old_pos = np.array([manifest.labels.index(label) for label in old_test_labels], np.int64)
    from .common import doodles

    constraint = manifest.constraint
    emb_of = shipped_model.embed
    scratch = tempfile.TemporaryDirectory(prefix="bench-quality-")
    runs = 0

    max_new = max(sizes.new_label_counts)
    max_shots = max(sizes.shots)
    records: list[dict[str, Any]] = []
    for seed in range(sizes.seeds):
        rng = np.random.default_rng(1000 + seed)
        chosen = [new_pool[i] for i in rng.permutation(len(new_pool))[:max_new]]
        old_px, old_ids = doodles(old_test_labels, sizes.test_old_per_label, 5000 + seed, constraint)
        old_emb, old_truth = emb_of(old_px), old_pos[old_ids]
        test_px, test_ids = doodles(chosen, sizes.test_new_per_label, 6000 + seed, constraint)
        test_emb = emb_of(test_px)
        train_px, train_ids = doodles(chosen, max_shots, 7000 + seed, constraint)
        train_emb = emb_of(train_px)
        old_before = _acc(shipped_model.predict_embeddings(old_emb), old_truth)
        for n_new in sizes.new_label_counts:
            labels = chosen[:n_new]
            test_mask = test_ids < n_new
            t_emb, t_truth = test_emb[test_mask], n_old + test_ids[test_mask]
            for shots in sizes.shots:
                pick = np.flatnonzero((train_ids < n_new) & (np.arange(len(train_ids)) % max_shots < shots))
                px, ids = train_px[pick], train_ids[pick]
                new_idx = n_old + ids
                result: dict[str, Any] = {
                    "seed": seed,
                    "new_labels": n_new,
                    "shots": shots,
                    "labels": labels,
                    "old_before": old_before,
                }

                # (a) the shipped update path (and with the recommended parameters)
                batch_file = Path(scratch.name) / f"batch{runs}.npz"
                save_batch(batch_file, make_batch(px, [labels[i] for i in ids], manifest), force=True)
                for name, chosen_params in variants.items():
                    runs += 1
                    updated = mlpersonalize.update(
                        batch_file,
                        package.path,
                        output=Path(scratch.name) / f"model{runs}",
                        epochs=chosen_params.epochs,
                        learning_rate=chosen_params.learning_rate,
                        batch_size=chosen_params.batch_size,
                        force=True,  # a refused update is measured too; its verdict is recorded
                        max_drop=DEFAULT_MAX_DROP,
                    )
                    after = mlpersonalize.load_model(updated.model)
                    position = {label: i for i, label in enumerate(after.labels)}
                    truth_a = np.array([position[labels[i - n_old]] for i in t_truth], np.int64)
                    guard = updated.history["guard"]
                    result[name] = {
                        "new_top1": _acc(after.predict_embeddings(t_emb), truth_a),
                        "old_after": _acc(after.predict_embeddings(old_emb), old_truth),
                        "guard_passed": bool(guard["passed"]),
                        "guard_reason": guard["reason"],
                        "final_loss": updated.history["final_loss"],
                    }

                # (b) naive fine-tuning of a plain layer: random new rows, new examples only
                init = np.random.default_rng(seed).standard_normal((n_new, old_weight.shape[1]))
                weight0 = np.concatenate([old_weight, init.astype(np.float32)])
                # the same budget, and a 10x learning rate (how far the naive way can be pushed)
                naive_lr10 = params.replace(learning_rate=min(1.0, 10 * params.learning_rate))
                for name, chosen_params in (("naive", params), ("naive_lr10", naive_lr10)):
                    fitted = fine_tune(weight0, train_emb[pick], new_idx, chosen_params)
                    result[name] = {
                        "new_top1": _acc(cosine_predict(t_emb, fitted.weight), t_truth),
                        "old_after": _acc(cosine_predict(old_emb, fitted.weight), old_truth),
                    }

                # (c) k-NN over embeddings: old exemplars + the new drawings
                memory = np.concatenate([ex_emb, train_emb[pick]])
                memory_idx = np.concatenate([ex_idx, new_idx])
                n_all = n_old + n_new
                result["knn"] = {
                    "new_top1": _acc(knn_predict(memory, memory_idx, t_emb, n_all), t_truth),
                    "old_after": _acc(knn_predict(memory, memory_idx, old_emb, n_all), old_truth),
                }
                records.append(result)
        log(f"quality: seed {seed + 1}/{sizes.seeds} done")
    scratch.cleanup()
    return {
        "params": params.to_dict(),
        "recommended_params": recommended.to_dict() if "shipped_recommended" in variants else None,
        "max_drop": DEFAULT_MAX_DROP,
        "knn_k": K,
        "old_test_labels": len(old_test_labels),
        "test_new_per_label": sizes.test_new_per_label,
        "test_old_per_label": sizes.test_old_per_label,
        "summary": summarize(records, sizes),
        "runs": records,
    }


def summarize(records: list[dict[str, Any]], sizes: Sizes) -> list[dict[str, Any]]:
    """Mean ± std over seeds for each (new labels, shots) and method; drops in points."""
    out = []
    for n_new in sizes.new_label_counts:
        for shots in sizes.shots:
            group = [r for r in records if r["new_labels"] == n_new and r["shots"] == shots]
            if not group:
                continue
            row: dict[str, Any] = {
                "new_labels": n_new,
                "shots": shots,
                "old_before": mean_std([r["old_before"] for r in group]),
            }
            for method in METHODS:
                if method not in group[0]:
                    continue
                row[method] = {
                    "new_top1": mean_std([r[method]["new_top1"] for r in group]),
                    "old_after": mean_std([r[method]["old_after"] for r in group]),
                    "old_drop_points": mean_std(
                        [100 * (r["old_before"] - r[method]["old_after"]) for r in group]
                    ),
                }
            for method in ("shipped", "shipped_recommended"):
                if method in row:
                    row[method]["guard_refused"] = sum(not r[method]["guard_passed"] for r in group)
            out.append(row)
    return out

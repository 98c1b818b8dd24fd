"""The analysis section of BENCHMARKS.md: what the numbers say and what would move them.

The text is written from this run's numbers; the explanations were checked against the
profiles (section 4) and the code under test when these benchmarks were written.
"""

from __future__ import annotations

from typing import Any


def _row(results: dict[str, Any], n_new: int, shots: int) -> dict[str, Any] | None:
    for row in (results.get("quality") or {}).get("summary", []):
        if row["new_labels"] == n_new and row["shots"] == shots:
            return row
    return None


def _quality(results: dict[str, Any]) -> list[str]:
    lines = []
    for n_new in (3, 10):
        row = _row(results, n_new, 3)
        if row is None:
            continue
        a, b, c = (row[m]["new_top1"]["mean"] * 100 for m in ("shipped", "naive", "knn"))
        drop = {m: row[m]["old_drop_points"]["mean"] for m in ("shipped", "naive", "knn")}
        lines.append(
            f"- **{n_new} new labels, 3 drawings each**: `update` reaches {a:.1f}% new-label top-1 "
            f"(naive fine-tune {b:.1f}%, k-NN {c:.1f}%); old-label accuracy changes by "
            f"{-drop['shipped']:+.1f} points (naive {-drop['naive']:+.1f}, k-NN {-drop['knn']:+.1f}); "
            "the guard refused "
            f"{row['shipped']['guard_refused']} of {row['shipped']['new_top1']['n']} updates."
        )
    if not lines:
        return []
    for n_new in (3, 10):
        row = _row(results, n_new, 3)
        if row is not None and "naive_lr10" in row:
            hi = row["naive_lr10"]
            lines.append(
                f"- The naive way needs a larger step to learn at all: at 10× the rate it reaches "
                f"{100 * hi['new_top1']['mean']:.1f}% on {n_new} new labels but old-label accuracy falls "
                f"{hi['old_drop_points']['mean']:.1f} points (no rehearsal: catastrophic forgetting)."
            )
    one = _row(results, 10, 1) or _row(results, 3, 1)
    if one is not None:
        lines.append(
            "- **One drawing per label** is the hard case: `update` "
            f"{100 * one['shipped']['new_top1']['mean']:.1f}%, "
            f"naive {100 * one['naive']['new_top1']['mean']:.1f}%, k-NN "
            f"{100 * one['knn']['new_top1']['mean']:.1f}% "
            f"({one['new_labels']} new labels); with one drawing no example is held out, so the "
            "guard can only "
            "judge the old labels."
        )
    rec = [r for r in results["quality"]["summary"] if "shipped_recommended" in r]
    if rec:
        gains = [
            100 * (r["shipped_recommended"]["new_top1"]["mean"] - r["shipped"]["new_top1"]["mean"])
            for r in rec
        ]
        lines.append(
            f"- The recommended parameters (a') change new-label top-1 by {min(gains):+.1f} to "
            f"{max(gains):+.1f} "
            "points against the manifest's defaults across the settings."
        )
    params = results["quality"]["params"]
    lines.append(
        f"- The update used the manifest's defaults ({params['epochs']} epochs, "
        f"lr {params['learning_rate']}, batch {params['batch_size']}), as the CLI does without flags."
    )
    return [
        "### Quality",
        "",
        *lines,
        "- How the three differ: `update` starts each new row at the normalised mean of its drawings "
        "(imprinting: a nearest-class-mean classifier before any training), then trains on the new "
        "drawings plus the exemplar memory (rehearsal) in label-balanced epochs, pulling old rows halfway "
        "back after each epoch (anchor). The naive update starts new rows at random and sees only the new "
        "drawings: with 3–50 drawings an epoch is one to four optimizer steps, so in the same budget the "
        "new rows move little, and the cross-entropy only ever pushes old labels down. k-NN keeps each "
        "new label's few drawings against `exemplars_per_label` stored embeddings of every old label, so "
        "near a boundary the old labels win the vote by numbers; its old-label accuracy is that of k-NN on "
        "the exemplars, not of the trained head.",
        "- What would move it: the backbone is the ceiling (imprinted rows are only as separable as the "
        "embeddings; see NOTES.md: class variety in pretraining matters most); augmenting the few drawings "
        "(shifted / rotated copies embedded once) gives imprinting and training more than 3 points per "
        "label; letting new rows train at a higher rate than old rows (or more epochs for them only); "
        "a per-label bias or temperature calibration so new rows are not under-confident against old rows.",
        "",
    ]


def _speed(results: dict[str, Any]) -> list[str]:
    lines = ["### Speed", ""]
    t = results.get("train")
    if t:
        o, f = t["ours"], t["full_graph"]
        steps = t["examples"] * t["epochs"] / t["batch_size"]
        lines.append(
            f"- **Training loop ({t['speedup']:.1f}×)**: this row times the shared loop alone, not "
            "`update` (which runs two passes with rehearsal: its steps are in section 2b): "
            f"{o['embed_seconds']:.3f} s running "
            f"the backbone once and {o['head_seconds']:.3f} s on the head (artifact generation plus about "
            f"{steps:.0f} steps, about {1e6 * o['head_seconds'] / steps:.0f} µs per step: almost "
            "all of it is "
            "ONNX Runtime's per-call cost of `train_step` + `optimizer_step` on a tiny graph). "
            "The full-graph "
            f"loop pays the backbone forward (and the graph's bookkeeping) on every step: "
            f"{1e6 * f['loop_seconds'] / steps:.0f} µs per step. The ratio is therefore (backbone cost per "
            "example × epochs) / (one backbone pass + per-step overhead): it grows with the backbone, the "
            "epochs and the batch size. To move it: larger head batches (fewer steps; the head is tiny, so "
            "batch 64 costs about what batch 8 does per step), or fewer epochs."
        )
    e = results.get("e2e")
    if e:
        text = (
            f"- **End to end**: `update` takes {e['ours']['seconds']:.2f} s in this venv and "
            f"{e['ours_no_torch']['seconds']:.2f} s with torch hidden from it. The difference is "
            "an import, not "
            "work: with torch installed, `onnxruntime.training.artifacts` (needed to generate the head's "
            "training artifacts) imports `onnxruntime.tools.convert_onnx_models_to_ort`, and "
            "`onnxruntime/tools/__init__.py` imports torch whenever `find_spec('torch')` finds it "
            f"(peak memory {e['ours']['peak_rss_mb']:.0f} MB vs {e['ours_no_torch']['peak_rss_mb']:.0f} MB). "
            "The rest is: interpreter + numpy + onnxruntime import (~0.2–0.3 s), the backbone once, two "
            "training passes (guard pass and final pass) whose epochs follow the new examples "
            "(fitting.EpochPlan; steps in section 2b), the training artifacts generated once (the "
            "second pass and the written package reuse them), building and checking "
            "model.onnx, hashing and fsyncing the package."
        )
        if e.get("speedup_vs_torch") is not None:
            text += (
                " PyTorch pays `import torch` "
                f"(~{e['torch_frozen_in_loop_1thread']['import_torch_seconds']:.1f} s "
                "here) and, in the plain form, the backbone every step; with cached embeddings it is "
                f"{e['torch_cached_1thread']['seconds']:.2f} s. Its default thread count spins badly on "
                "shared cores, so the faster of default and 1 thread is the baseline."
            )
        lines.append(text)
    p = results.get("predict")
    if p:
        lines.append(
            f"- **Predict ({100 * p['ratio']:.0f}% of a raw session)**: the only extra work in "
            "`Classifier.probabilities` is `images.to_model_input` per run of 64 (uint8 → float32, "
            "scale/bias, NHWC → NCHW copy) plus a concatenate, which the raw loop was given for free "
            "(pre-converted floats). To move it: put the Cast/scale/transpose into model.onnx (feed uint8), "
            "or convert with one fused `np.multiply(..., out=float32)` on the transposed view. A single big "
            f"run is not faster here ({p['raw_session_one_run_images_per_s']:.0f} images/s): runs of 64 are "
            "the right size on 2 cores. The CLI over files is bound by decoding and preprocessing each PNG "
            f"({p.get('cli_images_per_s', 0):.0f} images/s including process start)."
        )
    r = results.get("prepare")
    if r:
        prof = (results.get("profile") or {}).get("prepare")
        where = ""
        if prof:
            top = {row["function"]: row for row in prof["cumulative"]}
            parts = []
            for key, label in (
                ("(open_image)", "open_image (read, Pillow decode, EXIF transpose)"),
                ("'decode' of 'ImagingDecoder'", "of which Pillow's decoder"),
                ("(preprocess)", "preprocess (gray, ink crop, fit)"),
            ):
                hit = next((row for name, row in top.items() if key in name), None)
                if hit is not None:
                    parts.append(f"{label} {hit['cumtime']:.2f} s")
            where = (
                f" With one worker under the profiler ({prof['seconds']:.2f} s): " + ", ".join(parts) + "."
            )
        scaling = r["prepare_images_per_s"] / r["prepare_one_worker_images_per_s"]
        lines.append(
            f"- **Prepare ({r['ratio']:.2f}× single-threaded Pillow; one worker "
            f"{r['ratio_one_worker']:.2f}×)**: "
            "per image prepare does more than the baseline — reads the whole file and hashes it (duplicate "
            "detection), decodes with format checks and the bomb guard, applies EXIF orientation, finds the "
            "ink's bounding box — but fits only the strokes, with a box reduce to within 2× of the target "
            "and then bicubic (`images.DRAWING_REDUCING_GAP`, `DRAWING_RESAMPLE`), where the baseline "
            f"resamples the whole 256×256 canvas with bicubic and no reduce.{where} Two worker processes "
            f"give {scaling:.2f}× one worker on this machine's two shared cores (see the load average); the "
            "folder scan, the pool start and the batch write (zlib level 1) stay serial. The largest part "
            "per image is Pillow's PNG decode, which both sides pay (profile in section 4). Steps that "
            "moved it, in order: reading by the file's size instead of a 100 MiB buffer, the batch at zlib "
            "level 1 instead of 6, `255 - pixels` instead of a table lookup on white and black grounds, "
            "fitting only the strokes with a 2× reducing gap and bicubic instead of LANCZOS after 3× "
            "(per drawing 227 → 106 µs; the bundled model is trained on the new pixels), then with the "
            "same pixels: the strokes' box from one comparison and Pillow's getbbox, the fitted strokes "
            "placed in a numpy canvas rather than a Pillow one, files read by descriptor (12 → 7 µs) and "
            "a few files read ahead of decoding them in each worker task (read + decode + preprocess "
            "331 → 268 µs per doodle). Tried and not "
            "kept: starting the workers while the folders are still listed (5% slower on two busy cores: "
            "the listing competes with both workers), gc.freeze before the fork, threads, the main "
            "process as a second worker, parallel compression on save. To move it further: a faster "
            "PNG decoder (libspng "
            "via pyspng decodes these files in 93 µs against Pillow's 173 µs, but has no wheels for Linux "
            "aarch64 or macOS x86_64), and the batch write (about 17 ms per 1,000 images, serial)."
        )
    s = results.get("startup")
    if s:
        med = s["median_seconds"]
        lines.append(
            f"- **Start-up**: `--help` {med['mlpersonalize --help']:.3f} s: the commands import their heavy "
            f"modules lazily. `inspect` {med['mlpersonalize inspect']:.2f} s "
            f"({med.get('mlpersonalize inspect (torch hidden)', float('nan')):.2f} s with torch hidden): "
            "it never imports onnxruntime or onnx (the engine's version comes from package metadata); its "
            "time is Python, typer and rich (as for `--help`), numpy and Pillow (about 0.07 s, "
            "`python -X importtime`), and reading and hashing every file of the package (verify on load). "
            "To move it: import numpy lazily in the package reader (inspect needs it only for exemplars)."
        )
    sc = results.get("scaling")
    if sc:
        rows = sc["rows"]
        fixed = max(0.0, rows[0]["seconds"] - sc["marginal_ms_per_example"] * rows[0]["examples"] / 1000)
        kb_per_example = 1000 * sc["memory_growth_mb"] / max(1, rows[-1]["examples"] - rows[0]["examples"])
        lines.append(
            f"- **Scaling**: from {rows[0]['examples']} to {rows[-1]['examples']} examples the "
            "wall time goes "
            f"{rows[0]['seconds']:.2f} → {rows[-1]['seconds']:.2f} s (a fixed ~{fixed:.1f} s of start-up, "
            "imports, artifact generation and package writing, then "
            f"{sc['marginal_ms_per_example']:.2f} ms per "
            "example: the backbone once, then epochs of at most 8,192 new draws, two passes); peak memory "
            f"grows {sc['memory_growth_mb']:.0f} MB, about {kb_per_example:.1f} kB per "
            "example: the batch's pixels (784 B each, let go once embedded), the embeddings (D float32 "
            "each, one array) and one copy of them while a pass trains. The backbone runs 64 examples at "
            "a time. Batches holding more than 512 MiB of pixels are refused before they are read "
            "(batch.MAX_UPDATE_PIXEL_BYTES); 100,000 examples: section 2b."
        )
    lines.append("")
    return lines


def analysis(results: dict[str, Any]) -> list[str]:
    return ["## 5. Analysis", "", *_quality(results), *_speed(results)]

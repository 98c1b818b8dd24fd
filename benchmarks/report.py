"""Targets and the BENCHMARKS.md text, from the raw results of one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

METHOD_NAMES = {
    "shipped": "(a) `update` as shipped",
    "shipped_recommended": "(a') `update`, recommended params",
    "naive": "(b) naive head fine-tune",
    "naive_lr10": "(b') naive, 10× learning rate",
    "knn": "(c) k-NN (k=3)",
}


def _get(d: Any, *keys: Any) -> Any:
    for key in keys:
        if d is None:
            return None
        d = d.get(key) if isinstance(d, dict) else None
    return d


def _row(results: dict[str, Any], new_labels: int, shots: int) -> dict[str, Any] | None:
    for row in _get(results, "quality", "summary") or []:
        if row["new_labels"] == new_labels and row["shots"] == shots:
            return row
    return None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what was measured and whether it is met (None: not measured)."""
    out: list[dict[str, Any]] = []

    def add(name: str, goal: str, value: Any, met: bool | None) -> None:
        out.append({"target": name, "goal": goal, "measured": value, "met": met})

    for n_new in (3, 10):
        row = _row(results, n_new, 3)
        if row is None:
            continue
        a = row["shipped"]
        top1, drop = a["new_top1"]["mean"], a["old_drop_points"]["mean"]
        add(
            f"quality, {n_new} new labels, 3 shots: new-label top-1",
            "≥ 90%",
            round(100 * top1, 1),
            top1 >= 0.9,
        )
        add(f"quality, {n_new} new labels, 3 shots: old-label drop", "≤ 2 points", round(drop, 2), drop <= 2)
        ahead = all(top1 > row[m]["new_top1"]["mean"] for m in ("naive", "knn"))
        add(f"quality, {n_new} new labels, 3 shots: ahead of naive and k-NN", "a > b, c", ahead, ahead)
        refused = a.get("guard_refused", 0)
        add(
            f"quality, {n_new} new labels, 3 shots: guard accepted",
            "every seed",
            f"{refused} refused",
            not refused,
        )
    speedup = _get(results, "train", "speedup")
    if speedup is not None:
        add("speed (a): update training vs full graph every epoch", "≥ 10×", round(speedup, 2), speedup >= 10)
    for key, what in (
        ("speedup_vs_torch", "as installed"),
        ("speedup_vs_torch_no_torch_update", "torch hidden"),
    ):
        e2e = _get(results, "e2e", key)
        if _get(results, "e2e") is not None:
            value = round(e2e, 2) if e2e is not None else "torch not installed"
            add(f"speed (b): update end to end vs PyTorch fine-tune ({what})", "faster (> 1×)", value,
                None if e2e is None else e2e > 1)  # fmt: skip
    ratio = _get(results, "predict", "ratio")
    if ratio is not None:
        add(
            "speed (c): Classifier vs raw InferenceSession (same session options)",
            "≥ 80%",
            round(100 * ratio, 1),
            ratio >= 0.8,
        )
    ratio = _get(results, "prepare", "ratio")
    if ratio is not None:
        add("speed (d): prepare vs single-threaded Pillow", "≥ 1.5×", round(ratio, 2), ratio >= 1.5)
    for key in ("mlpersonalize --help", "mlpersonalize --help (torch hidden)"):
        helps = _get(results, "startup", "median_seconds", key)
        if helps is not None:
            add(f"speed (e): `{key}` wall time", "≤ 0.3 s", round(helps, 3), helps <= 0.3)
    rows = _get(results, "scaling", "rows")
    if rows and len(rows) >= 2:
        per = [r["ms_per_example"] for r in rows]
        linear = (
            rows[-1]["seconds"] <= 1.5 * rows[-1]["examples"] / rows[-2]["examples"] * rows[-2]["seconds"]
        )
        add("scaling: time grows at most linearly", "≤ 1.5× linear", [round(p, 3) for p in per], linear)
        grow = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
        per_example_kb = 1000 * grow / max(1, rows[-1]["examples"] - rows[0]["examples"])
        add(
            "scaling: peak memory bounded (growth per example, smallest → largest batch)",
            "≤ 16 kB per example, no blow-up",
            f"{grow:.0f} MB = {per_example_kb:.1f} kB/example",
            per_example_kb <= 16,
        )
    out += cost_targets(results)
    return out


def cost_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The cost section's targets (issue 17): fixed costs, label mix, scale."""
    out: list[dict[str, Any]] = []
    c = results.get("cost")
    if not c:
        return out
    ratios = c["fixed"]["ratio_to_floor"]
    for key, goal, limit in (
        ("update_seed", "≤ 2× the import floor", 2.0),
        ("inspect_json", "≤ 1.5× the import floor", 1.5),
        ("predict_one", "≤ 1.5× the import floor", 1.5),
    ):
        value = ratios[key]
        out.append({"target": f"cost: `{key}` wall vs the floor", "goal": goal, "measured": round(value, 2),
                    "met": value <= limit})  # fmt: skip
    mix = c["label_mix"]["ratio_2_over_10"]
    out.append({"target": f"cost: {c['label_mix']['examples']} examples as 2 vs 10 labels", "goal": "≤ 1.3×",
                "measured": round(mix, 2), "met": max(mix, 1 / mix) <= 1.3})  # fmt: skip
    large = c["large"]
    if large["examples"] >= 100_000:
        per = large["bytes_per_example_over_seed"] / large["pixels_plus_embedding_bytes"]
        out.append(
            {
                "target": f"cost: {large['examples']:,} examples",
                "goal": "≤ 30 s, ≤ 300 MiB, ≤ 1.5× bytes/example",
                "measured": f"{large['wall_s']:.1f} s, {large['peak_mb']:.0f} MiB, {per:.2f}×",
                "met": large["wall_s"] <= 30 and large["peak_mb"] <= 300 and per <= 1.5,
            }
        )
    return out


def cost_section(results: dict[str, Any]) -> list[str]:
    """What an update costs, as whole processes (issue 17)."""
    c = results.get("cost")
    if not c:
        return []
    f, runs = c["fixed"], c["fixed"]["runs"]
    steps = " + ".join(str(s) for s in f["steps"])
    lines = [
        "## 2b. What an update costs (whole processes, interleaved runs, medians)",
        "",
        f"**Fixed costs**: the seed's case (bundled model, 3 new labels × 5 generated drawings; "
        f"{steps} training steps in its {len(f['steps'])} trainings) and one-image commands against "
        "the floor "
        f'`python -c "import numpy, onnxruntime, PIL"` ({f["repeats"]} rounds; ratios are the median '
        "of round-by-round ratios, after one untimed run of each; torch hidden from every process, "
        "as in a runtime-only install; bytecode cached, as Python does by default and an installed "
        "package has it):",
        "",
        "| command | wall s | CPU s | peak MB | wall / floor | CPU / floor |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    names = {
        "floor": "the floor",
        "update_seed": "`update` (15 drawings, --output, --json)",
        "inspect_json": "`inspect --json`",
        "predict_one": "`predict` one 256×256 PNG, --json",
    }
    for key, label in names.items():
        r = runs[key]
        ratio = f"{f['ratio_to_floor'][key]:.2f}×" if key != "floor" else "1"
        cpu = f"{f['cpu_ratio_to_floor'][key]:.2f}×" if key != "floor" else "1"
        lines.append(
            f"| {label} | {r['wall_s']:.3f} | {r['cpu_s']:.3f} | {r['peak_mb']:.0f} | {ratio} | {cpu} |"
        )
    m = c["label_mix"]
    lines += [
        "",
        f"**Label mix**: the same {m['examples']:,} generated drawings as 2 or 10 new labels "
        f"({m['repeats']} rounds):",
        "",
        "| labels | wall s | CPU s | peak MB | training steps (each training) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k in (2, 10):
        r = m["runs"][f"labels_{k}"]
        st = " + ".join(str(x) for x in m["steps"].get(str(k), m["steps"].get(k, [])))  # type: ignore[call-overload]
        lines.append(f"| {k} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_mb']:.0f} | {st} |")
    lines += [
        "",
        f"2 labels / 10 labels: **{m['ratio_2_over_10']:.2f}×** wall, {m['cpu_ratio_2_over_10']:.2f}× CPU.",
        "",
    ]
    t = c["threads"]
    lines += [
        "**Threads**: `update --threads 1` against the default (ONNX Runtime's one thread per core for the "
        "backbone; the head always trains on one thread):",
        "",
        "| examples | default wall s / CPU s | `--threads 1` wall s / CPU s | wall ratio | CPU ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in t.values():
        d, one = row["runs"]["default"], row["runs"]["one_thread"]
        lines.append(
            f"| {row['examples']:,} | {d['wall_s']:.2f} / {d['cpu_s']:.2f} | {one['wall_s']:.2f} / "
            f"{one['cpu_s']:.2f} | {row['wall_ratio']:.2f}× | {row['cpu_ratio']:.2f}× |"
        )
    g = c["large"]
    lines += [
        "",
        f"**Scale**: {g['examples']:,} generated drawings (10 new labels), one run: "
        f"{g['wall_s']:.1f} s wall, {g['cpu_s']:.1f} s CPU, peak {g['peak_mb']:.0f} MB, "
        + " + ".join(str(x) for x in g["steps"])
        + f" training steps; {g['bytes_per_example_over_seed']:.0f} bytes per example over the seed's case "
        f"peak, against {g['pixels_plus_embedding_bytes']} bytes of pixels plus embedding "
        f"({g['bytes_per_example_over_seed'] / g['pixels_plus_embedding_bytes']:.2f}×).",
        "",
    ]
    sk = c.get("sklearn")
    if sk:
        lines += [
            "**Baselines on the same embeddings** (in-process; `update`'s core is `personalize`: both "
            "passes, guard and exemplar choice, embedding excluded; scikit-learn fitted on the exemplar "
            "memory plus the new drawings, unit-normalised, LogisticRegression with balanced class "
            "weights; new-label top-1 on 20 fresh drawings per label, over all labels):",
            "",
            "| examples (labels) | `update` s (steps) | LogisticRegression s | 3-NN fit + predict s "
            "| top-1 `update` / LR / k-NN |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in sk["rows"]:
            lines.append(
                f"| {r['examples']} ({r['labels']}) | {r['update_s']:.3f} "
                f"({' + '.join(map(str, r['update_steps']))}) | {r['logreg_s']:.3f} | {r['knn_s']:.3f} "
                f"| {r['update_new_top1']:.3f} / "
                f"{r['logreg_new_top1']:.3f} / {r['knn_new_top1']:.3f} |"
            )
        lines.append("")
    return lines


def _pct(ms: dict[str, float] | None) -> str:
    if not ms:
        return "–"
    return f"{100 * ms['mean']:.1f} ± {100 * ms['std']:.1f}"


def _pts(ms: dict[str, float] | None) -> str:
    if not ms:
        return "–"
    return f"{ms['mean']:+.1f} ± {ms['std']:.1f}"


def _mark(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[met]


def real_digits_section(results: dict[str, Any]) -> list[str]:
    from .real_digits import BEFORE, markdown_section

    before = json.loads(BEFORE.read_text()) if BEFORE.is_file() else None
    return markdown_section(results.get("real_digits"), before)


def quality_section(results: dict[str, Any]) -> list[str]:
    q = results.get("quality")
    if not q:
        return []
    p = q["params"]
    lines = [
        "## 1. Quality: new labels from a few drawings",
        "",
        f"Held-out doodle classes the model never saw; new-label top-1 over all labels on "
        f"{q['test_new_per_label']} fresh drawings per new label; old-label accuracy on "
        f"{q['test_old_per_label']} fresh drawings of each of the model's {q['old_test_labels']} labels. "
        f"Mean ± std over {results['mode']['seeds']} seeds (each seed: other new labels, drawings and "
        "test sets). Update parameters as the CLI uses them (the manifest's defaults): "
        f"{p['epochs']} epochs, "
        f"lr {p['learning_rate']}, batch {p['batch_size']}, {p['optimizer']}; guard max drop "
        f"{100 * q['max_drop']:g} points. Naive fine-tune: same parameters, new rows random, new examples "
        f"only ((b'): the same with a 10× learning rate). k-NN: k={q['knn_k']}, inverse-distance "
        "weights, memory = package exemplars + new drawings.",
        "",
        *(
            [
                f"(a') is the same path with the recommended parameters (docs/update.md: "
                f"`--epochs {q['recommended_params']['epochs']} --learning-rate "
                f"{q['recommended_params']['learning_rate']} --batch-size "
                f"{q['recommended_params']['batch_size']}`), which differs from this manifest's defaults.",
                "",
            ]
            if q.get("recommended_params")
            else []
        ),
        "| new labels | shots | method | new-label top-1 % | old-label % before | old-label % after "
        "| old drop (points) | guard refused |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in q["summary"]:
        for method in ("shipped", "shipped_recommended", "naive", "naive_lr10", "knn"):
            if method not in row:
                continue
            m = row[method]
            refused = f"{m['guard_refused']}/{m['new_top1']['n']}" if "guard_refused" in m else ""
            lines.append(
                f"| {row['new_labels']} | {row['shots']} | {METHOD_NAMES[method]} | {_pct(m['new_top1'])} "
                f"| {_pct(row['old_before'])} | {_pct(m['old_after'])} | {_pts(m['old_drop_points'])} "
                f"| {refused} |"
            )
    lines.append("")
    return lines


def reteach_section(results: dict[str, Any]) -> list[str]:
    """Issue 19: a known label re-taught in the user's style (style rows), and conflicts."""
    r = results.get("reteach")
    if not r or "records" not in r:
        return []
    recs = r["records"]

    def ms(key: str) -> str:
        v = np.array([x[key] for x in recs]) * 100
        return f"{v.mean():.1f} ± {v.std():.1f}"

    lines = [
        "## 1b. Quality: a known label drawn the user's way (style rows), and conflicts",
        "",
        f"`python -m benchmarks.quality_rows --part style` (generated drawings, not real ones): "
        f"{r['teach']} {r['style']}-drawn stars (benchmarks/styles.py; the model reads them as `sun`) "
        f"labelled `{r['label']}`, taught by the update algorithm of `mlpersonalize update`; top-1 on "
        f"{r['held_out']} held-out drawings of that style, 20 standard generated drawings of `star` and of "
        f"each of the model's labels, before and after. Mean ± std over {len(recs)} seeds.",
        "",
        "| measured | before % | after % |",
        "| --- | --- | --- |",
        f"| held-out {r['style']} stars read `{r['label']}` | {ms('style_before')} | {ms('style_after')} "
        f"({ms('style_after_calibrated')} with the calibrated `unknown` counted wrong) |",
        f"| standard stars read `{r['label']}` | {ms('standard_before')} | {ms('standard_after')} |",
        f"| all labels' standard drawings | {ms('all_before')} | {ms('all_after')} |",
        "",
        "Heads chosen: "
        + ", ".join(sorted({x["head"] for x in recs}))
        + f"; learned: {sum(x['learned'] for x in recs)}/{len(recs)}.",
        "",
        "Conflicts (20 standard drawings, labels swapped; refused with exit 6 unless `--force`):",
        "",
    ]
    for what, c in r["conflicts"].items():
        named = "; ".join(
            f"{n['drawings']} of {n['of']} labelled `{n['label']}` read as "
            + ", ".join(f"`{k}` ({v})" for k, v in n["read_as"].items())
            for n in c.get("named", [])
        )
        lines.append(f"- {what}: " + (f"refused: {named}" if c["refused"] else "not refused"))
    return lines + [""]


def speed_section(results: dict[str, Any]) -> list[str]:
    lines = ["## 2. Speed (ratios measured in the same run, same data)", ""]
    t = results.get("train")
    if t:
        o, f = t["ours"], t["full_graph"]
        lines += [
            f"**(a) training**, {t['examples']} examples, {t['epochs']} epochs, batch {t['batch_size']} "
            f"(median of {results['mode']['repeats']}):",
            "",
            "| way | setup s | embed s | training loop s | total s |",
            "| --- | --- | --- | --- | --- |",
            f"| the shared training loop (not all of `update`: one pass, no rehearsal; section 2b has "
            f"`update`'s steps): backbone once (InferenceSession) + head artifacts on cached embeddings "
            f"| – | {o['embed_seconds']:.3f} | {o['head_seconds']:.3f} (incl. artifacts) | "
            f"{o['total_seconds']:.3f} |",
            f"| naive ORT: backbone + head training graph, backbone frozen, every epoch "
            f"| {f['setup_seconds']:.3f} | – | {f['loop_seconds']:.3f} | {f['total_seconds']:.3f} |",
            "",
            f"Speed-up: **{t['speedup']:.1f}×** (loop only: {t['speedup_loop_only']:.1f}×).",
            "",
        ]
    e = results.get("e2e")
    if e:
        lines += [
            f"**(b) end to end** (a fresh process each, start to exit; {e['examples']} examples, "
            f"{e['epochs']} epochs, batch {e['batch_size']}):",
            "",
            "| process | wall s | peak RSS MB | `import torch` s |",
            "| --- | --- | --- | --- |",
            f"| `mlpersonalize update batch.npz --model copy --force` (rehearsal, 2 passes, guard, "
            f"package written and swapped), this venv: torch installed, and onnxruntime's training "
            "artifacts module imports it "
            f"| {e['ours']['seconds']:.2f} | {e['ours']['peak_rss_mb']:.0f} | (inside) |",
            f"| the same with torch hidden from the process (a machine without torch) "
            f"| {e['ours_no_torch']['seconds']:.2f} | {e['ours_no_torch']['peak_rss_mb']:.0f} | – |",
        ]
        torch_rows = (
            ("frozen_in_loop", "frozen backbone run every step, torch's default threads"),
            ("frozen_in_loop_1thread", "frozen backbone run every step, 1 thread"),
            ("cached_1thread", "embeddings cached (backbone once), 1 thread"),
        )
        for mode, label in torch_rows:
            tr = e.get(f"torch_{mode}")
            if tr:
                lines.append(
                    f"| PyTorch CPU fine-tune (`import torch` included), {label}; weights saved, "
                    "nothing else "
                    f"| {tr['seconds']:.2f} | {tr['peak_rss_mb']:.0f} | {tr['import_torch_seconds']:.2f} |"
                )
        lines.append("")
        if e.get("speedup_vs_torch") is not None:
            lines.append(
                f"Plain PyTorch fine-tune (faster of its two thread settings) / `update`: "
                f"**{e['speedup_vs_torch']:.2f}×** as installed here, "
                f"{e['speedup_vs_torch_no_torch_update']:.2f}× "
                f"with torch hidden from `update`; PyTorch with cached embeddings / `update`: "
                f"{e['speedup_vs_torch_cached']:.2f}×."
            )
        else:
            lines.append(f"PyTorch comparison skipped: {e.get('note')}")
        lines.append("")
    p = results.get("predict")
    if p:
        lines += [
            f"**(c) predict** ({p['examples']} decoded 28×28 drawings, runs of {p['run_batch']}):",
            "",
            "| way | images/s |",
            "| --- | --- |",
            f"| `Classifier.probabilities` (uint8 in) | {p['classifier_images_per_s']:.0f} |",
            "| raw `InferenceSession.run` on float32 input, same run size | "
            f"{p['raw_session_images_per_s']:.0f} |",
            f"| raw session, one run over everything | {p['raw_session_one_run_images_per_s']:.0f} |",
        ]
        if "cli_images_per_s" in p:
            lines.append(
                f"| `mlpersonalize predict DIR --json` over {p['cli_files']} 256×256 PNG files "
                f"(process start, decode, preprocess, output) | {p['cli_images_per_s']:.0f} |"
            )
        lines += ["", f"Classifier / raw: **{100 * p['ratio']:.0f}%**.", ""]
    r = results.get("prepare")
    if r:
        lines += [
            f"**(d) prepare** ({r['files']} files, {r['image_size']}, {r['workers']} worker processes):",
            "",
            "| way | images/s |",
            "| --- | --- |",
            "| single-threaded Pillow loop: open, convert L, resize to 28×28 | "
            f"{r['pillow_images_per_s']:.0f} |",
            f"| `prepare()` (default workers) | {r['prepare_images_per_s']:.0f} |",
            f"| `prepare()` with one worker | {r['prepare_one_worker_images_per_s']:.0f} |",
            f"| `mlpersonalize prepare` CLI (incl. process start) | {r['cli_images_per_s']:.0f} |",
            "",
            f"prepare / Pillow: **{r['ratio']:.2f}×** (one worker: {r['ratio_one_worker']:.2f}×), the median "
            f"of {r.get('rounds', 1)} rounds' ratios, timed in a fresh interpreter; by round: "
            + ", ".join(f"{x:.2f}" for x in r.get("ratio_by_round", [r["ratio"]]))
            + ".",
            "",
        ]
    s = results.get("startup")
    if s:
        med, over = s["median_seconds"], s["over_python_seconds"]
        lines += [
            f"**(e) start-up** (median of {s['repeats']}, interleaved):",
            "",
            "| command | wall s | over `python -c pass` s |",
            "| --- | --- | --- |",
        ]
        for key, value in med.items():
            lines.append(f"| `{key}` | {value:.3f} | {over.get(key, 0.0):.3f} |")
        lines.append("")
    return lines


def scaling_section(results: dict[str, Any]) -> list[str]:
    sc = results.get("scaling")
    if not sc:
        return []
    lines = [
        f"## 3. Scaling of `update` (a fresh process each; manifest defaults: {sc['epochs']} "
        "epochs, 2 passes)",
        "",
        "| examples | wall s | ms / example | peak RSS MB | batch file MB | guard passed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in sc["rows"]:
        lines.append(
            f"| {r['examples']} | {r['seconds']:.2f} | {r['ms_per_example']:.3f} | {r['peak_rss_mb']:.0f} "
            f"| {r['batch_file_mb']:.2f} | {r['guard_passed']} |"
        )
    lines += [
        "",
        f"Marginal cost {sc['marginal_ms_per_example']:.3f} ms per example; peak memory grows "
        f"{sc['memory_growth_mb']:.0f} MB from the smallest to the largest batch (`inspect` alone peaks at "
        f"{sc['inspect_peak_rss_mb']:.0f} MB).",
        "",
    ]
    return lines


def profile_section(results: dict[str, Any]) -> list[str]:
    pr = results.get("profile")
    if not pr:
        return []
    lines = ["## 4. Where the time goes (cProfile)", ""]
    for name, title in (("update", "`updater.update`, in-process"), ("prepare", "`prepare()`, one worker")):
        prof = pr[name]
        extra = f", {prof['examples']} examples" if "examples" in prof else ""
        lines += [
            f"{title}{extra}: {prof['seconds']:.2f} s under the profiler. Top by cumulative time:",
            "",
            "| function | calls | self s | cumulative s |",
            "| --- | --- | --- | --- |",
        ]
        for row in prof["cumulative"][:14]:
            lines.append(
                f"| `{row['function']}` | {row['calls']} | {row['tottime']:.3f} | {row['cumtime']:.3f} |"
            )
        lines.append("")
    return lines


def markdown(results: dict[str, Any]) -> str:
    from .analysis import analysis

    m = results["machine"]
    model = results["model"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks.run` (`make bench`); do not edit by hand. Raw numbers: "
        "`benchmarks/results.json` and the JSON block at the end.",
        "",
        f"- Date: {m['date']}; mode `{results['mode']['name']}`; total {results['total_seconds']} s",
        f"- Machine: {m['cpu']} ({m['cores_available']} cores available), {m['platform']}, "
        f"load average at start {m['load_average_at_start']} (the cores are shared)",
        f"- Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"- Model: `{model.get('name')}` ({model.get('labels')} labels, {model.get('embedding_dim')}-d "
        f"embedding, id {model.get('model_id')}) at `{model['path']}`",
        "",
        "## Targets",
        "",
        "| target | goal | measured | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {_mark(t['met'])} |")
    lines.append("")
    lines += real_digits_section(results)
    lines += quality_section(results)
    lines += reteach_section(results)
    lines += speed_section(results)
    lines += cost_section(results)
    lines += scaling_section(results)
    lines += profile_section(results)
    lines += analysis(results)
    engines = Path(__file__).with_name("engines.md")  # measured by hand: benchmarks/engines.py
    if engines.is_file():
        lines += engines.read_text(encoding="utf-8").splitlines()
    lines += ["## Raw results", "", "```json", json.dumps(results, indent=1, default=float), "```", ""]
    return "\n".join(lines)

"""Speed, each as a ratio against a plain baseline measured in the same run on the same data.

train    update's training (backbone once + head epochs on cached embeddings) vs an ORT training
         graph of backbone + head (backbone frozen, in the graph) run every epoch.
e2e      `mlpersonalize update` as a process (start → model swapped) vs the PyTorch fine-tune.
predict  Classifier.probabilities on decoded uint8 arrays vs a raw InferenceSession on floats;
         and the CLI over files.
prepare  prepare() images/s vs a single-threaded Pillow open + resize loop on the same PNGs.
startup  `mlpersonalize --help` / `inspect` vs `python -c pass`.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    REPO,
    Sizes,
    check,
    cli,
    copy_model,
    distinct_copies,
    doodles,
    interleaved_times,
    novel_and_named,
    run_child,
    write_batch,
)

Log = Callable[[str], None]


class Data:
    """Drawings shared by the speed benchmarks: ``n`` examples over up to 10 new labels."""

    def __init__(self, model: Path, n: int) -> None:
        from mlpersonalize.package import load_package

        self.package = load_package(model)
        self.manifest = self.package.manifest
        new, _ = novel_and_named(self.manifest)
        self.labels = new[: min(10, max(2, n // 10))]
        per = -(-n // len(self.labels))
        pixels, ids = doodles(self.labels, per, 42, self.manifest.constraint, workers=2 if n > 500 else 1)
        order = np.random.default_rng(0).permutation(len(ids))[:n]  # labels mixed, still balanced
        self.pixels, self.ids = pixels[order], ids[order]

    def label_names(self, ids: np.ndarray | None = None) -> list[str]:
        return [self.labels[i] for i in (self.ids if ids is None else ids)]


def _params(manifest: Any, epochs: int, batch: int) -> Any:
    from mlpersonalize.updater import UpdateOptions

    return UpdateOptions(epochs=epochs, batch_size=batch).params(
        manifest.update_defaults, manifest.update_ranges
    )


# --- (a) training: cached embeddings vs the whole graph every epoch ----------------------------


def full_graph_artifacts(
    package_path: Path, weight: np.ndarray, scale: float, params: Any, out: Path
) -> None:
    """ORT training artifacts of backbone + head; the backbone's weights are frozen params."""
    import onnx

    from mlpersonalize import _ort
    from mlpersonalize.engines.ort import MAX_IR_VERSION, optimizer_block
    from mlpersonalize.heads import StoredHead
    from mlpersonalize.heads.cosine import WEIGHT, CosineHead

    backbone = onnx.load(str(package_path / "backbone.onnx"))
    head = CosineHead.graph(StoredHead(weight, scale))
    out_name = backbone.graph.output[0].name
    merged = onnx.compose.merge_models(backbone, head, io_map=[(out_name, "embedding")])
    frozen = [i.name for i in backbone.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and i.dims]
    artifacts = _ort.artifacts_api()
    out.mkdir(parents=True, exist_ok=True)
    with _ort.stderr_captured():  # generate_artifacts logs at INFO to fd 2
        artifacts.generate_artifacts(
            merged,
            requires_grad=[WEIGHT],
            frozen_params=frozen,
            loss=artifacts.LossType.CrossEntropyLoss,
            optimizer=optimizer_block(params),
            artifact_directory=str(out),
        )
    _ort.quiet_logs()
    opt = onnx.load(str(out / "optimizer_model.onnx"))
    if opt.ir_version > MAX_IR_VERSION:
        opt.ir_version = MAX_IR_VERSION
        onnx.save(opt, str(out / "optimizer_model.onnx"))


def naive_full_graph(data: Data, weight: np.ndarray, params: Any) -> dict[str, float]:
    """Every epoch runs the backbone inside the training graph (the plain ORT way)."""
    from mlpersonalize import _ort
    from mlpersonalize.fitting import balanced_order
    from mlpersonalize.images import to_model_input

    manifest = data.manifest
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-full-") as tmp:
        full_graph_artifacts(data.package.path, weight, manifest.logit_scale, params, Path(tmp))
        api = _ort.training_api()
        state = api.CheckpointState.load_checkpoint(str(Path(tmp) / "checkpoint"))
        module = api.Module(str(Path(tmp) / "training_model.onnx"), state, device="cpu")
        optimizer = api.Optimizer(str(Path(tmp) / "optimizer_model.onnx"), module)
        optimizer.set_learning_rate(float(params.learning_rate))
        setup = time.perf_counter() - start
        x = to_model_input(data.pixels, manifest.constraint)
        idx = np.asarray(data.ids + len(manifest.labels), np.int64)
        rng = np.random.default_rng(params.seed)
        loop_start = time.perf_counter()
        module.train()
        for _ in range(params.epochs):
            order = balanced_order(idx, rng)
            for i in range(0, len(order), params.batch_size):
                batch = order[i : i + params.batch_size]
                module(x[batch], idx[batch])
                optimizer.step()
                module.lazy_reset_grad()
        loop = time.perf_counter() - loop_start
    return {"setup_seconds": setup, "loop_seconds": loop, "total_seconds": time.perf_counter() - start}


def ours_cached(data: Data, weight: np.ndarray, params: Any) -> dict[str, float]:
    """What update does: the backbone once (InferenceSession), then head epochs on embeddings."""
    from mlpersonalize import engines, fitting
    from mlpersonalize.embedding import embed
    from mlpersonalize.heads import StoredHead
    from mlpersonalize.heads.cosine import CosineHead
    from mlpersonalize.manifest import BACKBONE_FILE

    manifest = data.manifest
    start = time.perf_counter()
    emb = embed(data.package.path / BACKBONE_FILE, data.pixels, manifest.constraint)
    embed_s = time.perf_counter() - start
    head = StoredHead(weight, manifest.logit_scale)
    session = engines.get("ort").open(CosineHead.graph(head), CosineHead.trainable(head), params)
    try:
        fitting.train(session, emb, data.ids + len(manifest.labels), params)
    finally:
        session.close()
    total = time.perf_counter() - start
    return {"embed_seconds": embed_s, "head_seconds": total - embed_s, "total_seconds": total}


def train(data: Data, sizes: Sizes, log: Log) -> dict[str, Any]:
    import onnx

    from mlpersonalize.heads.cosine import head_weight

    params = _params(data.manifest, sizes.train_epochs, sizes.train_batch)
    old = head_weight(onnx.load(str(data.package.path / "head.onnx")))
    rng = np.random.default_rng(0)
    weight = np.concatenate([old, rng.standard_normal((len(data.labels), old.shape[1])).astype(np.float32)])
    ours = [ours_cached(data, weight, params) for _ in range(sizes.repeats)]
    naive = [naive_full_graph(data, weight, params) for _ in range(sizes.repeats)]
    med = {k: statistics.median(r[k] for r in ours) for k in ours[0]}
    med_naive = {k: statistics.median(r[k] for r in naive) for k in naive[0]}
    log(f"speed/train: ours {med['total_seconds']:.3f} s, full graph {med_naive['total_seconds']:.3f} s")
    return {
        "examples": len(data.ids),
        "epochs": params.epochs,
        "batch_size": params.batch_size,
        "ours": med,
        "full_graph": med_naive,
        "speedup": med_naive["total_seconds"] / med["total_seconds"],
        "speedup_loop_only": med_naive["loop_seconds"] / med["total_seconds"],
        "runs": {"ours": ours, "full_graph": naive},
    }


# --- (b) end to end: the CLI process vs the PyTorch process ------------------------------------


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def e2e(data: Data, sizes: Sizes, work: Path, log: Log) -> dict[str, Any]:
    params = _params(data.manifest, sizes.train_epochs, sizes.train_batch)
    batch = write_batch(work / "e2e.npz", data.pixels, data.label_names(), data.manifest)
    home = work / "home-e2e"
    out: dict[str, Any] = {
        "examples": len(data.ids),
        "epochs": params.epochs,
        "batch_size": params.batch_size,
    }
    for key, hide in (("ours", False), ("ours_no_torch", True)):
        runs = []
        for i in range(max(1, min(3, sizes.repeats))):
            copy = copy_model(data.package.path, work / f"e2e-model-{key}-{i}")
            cmd = cli("update", str(batch), "--model", str(copy), "--json", "--force", hide_torch=hide)
            cmd += ["--epochs", str(params.epochs), "--batch-size", str(params.batch_size)]
            env = {"MLPERSONALIZE_HOME": str(home / f"{key}-{i}")}
            run = check(run_child(cmd, env=env), "mlpersonalize update")
            runs.append(run.seconds)
        last = json.loads(run.stdout.strip().splitlines()[-1])
        out[key] = {
            "seconds": statistics.median(runs),
            "runs": runs,
            "peak_rss_mb": run.max_rss_mb,
            "guard": last.get("guard"),
        }
    ours = out["ours"]["seconds"]
    if not torch_available():
        out["torch"] = None
        out["note"] = "torch is not installed: `pip install -e '.[bench]'` (torch==2.13.0 CPU) to compare"
        log("speed/e2e: torch not installed, PyTorch comparison skipped")
        return out
    script = str(REPO / "benchmarks" / "torch_finetune.py")
    # torch's default intra-op threads spin badly when the cores are shared, so one thread is
    # measured too and the faster of the two plain runs is the baseline (the conservative ratio).
    variants = {
        "frozen_in_loop": [],
        "frozen_in_loop_1thread": ["--threads", "1"],
        "cached_1thread": ["--cached", "--threads", "1"],
    }
    for mode, extra in variants.items():
        times, info = [], {}
        for _ in range(1 if sizes.name != "full" else 3):
            cmd = [
                sys.executable,
                script,
                str(data.package.path),
                str(batch),
                str(work / f"torch-{mode}.npy"),
            ]
            cmd += ["--epochs", str(params.epochs), "--batch-size", str(params.batch_size)]
            cmd += ["--lr", str(params.learning_rate), "--scale", str(data.manifest.logit_scale), *extra]
            run = check(run_child(cmd), f"torch fine-tune ({mode})")
            times.append(run.seconds)
            info = json.loads(run.stdout.strip().splitlines()[-1])
        out[f"torch_{mode}"] = {
            "seconds": statistics.median(times),
            "runs": times,
            "import_torch_seconds": info.get("import_seconds"),
            "peak_rss_mb": run.max_rss_mb,
            "speedup_vs_torch": statistics.median(times) / ours,
            "speedup_vs_torch_no_torch_update": statistics.median(times) / out["ours_no_torch"]["seconds"],
        }
    plain = min(out["torch_frozen_in_loop"]["seconds"], out["torch_frozen_in_loop_1thread"]["seconds"])
    out["torch_plain_best_seconds"] = plain
    out["speedup_vs_torch"] = plain / ours
    out["speedup_vs_torch_no_torch_update"] = plain / out["ours_no_torch"]["seconds"]
    out["speedup_vs_torch_cached"] = out["torch_cached_1thread"]["seconds"] / ours
    log(
        f"speed/e2e: update {ours:.2f} s (no torch {out['ours_no_torch']['seconds']:.2f} s), "
        f"torch {out['torch_frozen_in_loop']['seconds']:.2f} s / 1 thread "
        f"{out['torch_frozen_in_loop_1thread']['seconds']:.2f} s / cached "
        f"{out['torch_cached_1thread']['seconds']:.2f} s"
    )
    return out


# --- (c) predict ---------------------------------------------------------------------------------


def predict(data: Data, sizes: Sizes, files_dir: Path | None, log: Log) -> dict[str, Any]:
    import onnxruntime as ort

    from mlpersonalize.images import to_model_input
    from mlpersonalize.inference import RUN_BATCH, Classifier

    classifier = Classifier(data.package)
    pixels = data.pixels
    n = len(pixels)
    classifier.probabilities(pixels[:RUN_BATCH])  # warm up
    from mlpersonalize import _ort

    model = data.package.path / "model.onnx"
    # The wrapper's overhead is measured against a raw session with the tool's own session options
    # (idle threads sleep instead of spinning: the cron-friendly setting, docs/update.md "Threads")
    # that fetches what predict fetches (a calibrated model's open-set scores too); ONNX Runtime's
    # default session, whose idle threads spin, is reported beside it.
    same = _ort.inference_session(model)
    default = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = same.get_inputs()[0].name
    x = to_model_input(pixels, data.manifest.constraint)

    fetched = ["probabilities"] + (["scores"] if classifier.thresholds is not None else [])  # as predict

    def raw(batch: int, session: Any = same) -> None:
        for i in range(0, n, batch):
            session.run(fetched, {name: x[i : i + batch]})

    raw(RUN_BATCH)
    raw(RUN_BATCH, default)
    med = settled_rotation(
        {
            "ours": lambda: classifier.probabilities(pixels),
            "raw": lambda: raw(RUN_BATCH),
            "raw_all": lambda: raw(n),
            "raw_default_session": lambda: raw(RUN_BATCH, default),
        },
        2 * sizes.repeats + 1,
    )
    ours, raw_s, raw_all = med["ours"], med["raw"], med["raw_all"]
    out: dict[str, Any] = {
        "examples": n,
        "run_batch": RUN_BATCH,
        "classifier_images_per_s": n / ours,
        "raw_session_images_per_s": n / raw_s,
        "raw_session_one_run_images_per_s": n / raw_all,
        "raw_default_session_images_per_s": n / med["raw_default_session"],
        "ratio": (n / ours) / (n / raw_s),
        "ratio_vs_default_session": med["raw_default_session"] / ours,
    }
    if files_dir is not None:
        files = sorted(files_dir.rglob("*.png"))
        run = check(
            run_child(cli("predict", str(files_dir), "--model", str(data.package.path), "--json")),
            "mlpersonalize predict",
        )
        lines = run.stdout.strip().splitlines()
        out["cli_files"] = len(files)
        out["cli_seconds"] = run.seconds
        out["cli_images_per_s"] = len(lines) / run.seconds
    log(
        f"speed/predict: ratio {out['ratio']:.2f} ({out['classifier_images_per_s']:.0f} img/s), "
        f"{out['ratio_vs_default_session']:.2f} of a default (spinning) session"
    )
    return out


# A spinning session's pool threads keep spinning after its run returns: on 2 cores whatever ran
# next paid for them (the wrapper, timed right after the default session, measured 0.77-0.82 of the
# raw session; 0.94-0.98 when it came after a non-spinning one).
SETTLE_S = 0.05


def settled_rotation(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median wall time of each function; each round runs them in a rotated order (no function
    always follows the same one), each after a SETTLE_S pause that is not timed."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(1, repeats)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# --- (d) prepare -------------------------------------------------------------------------------


def write_files(directory: Path, labels: list[str], total: int, size: int = 256) -> list[Path]:
    from mlpersonalize.sample.doodles import write_folder

    per = -(-total // len(labels))
    return write_folder(directory, labels, per, seed=9, size=size)


def pillow_loop(files: list[Path], width: int, height: int) -> float:
    """The plain baseline: open, grayscale, resize, to an array, one file after another."""
    from PIL import Image

    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            np.asarray(image.convert("L").resize((width, height)))
    return time.perf_counter() - start


def prepare_timings(files_dir: Path, model: Path, work: Path, rounds: int) -> dict[str, list[float]]:
    """Seconds of the Pillow loop, prepare() and prepare() with one worker, run in turns."""
    from mlpersonalize.package import load_package
    from mlpersonalize.prepare import prepare as run_prepare

    manifest = load_package(model).manifest
    files = sorted(files_dir.rglob("*.png"))
    c = manifest.constraint
    out = work / "prepared.npz"
    fns = {
        "pillow": lambda: pillow_loop(files, c.width, c.height),
        "ours": lambda: run_prepare([files_dir], out, manifest, force=True),
        "one": lambda: run_prepare([files_dir], out, manifest, force=True, workers=1),
    }
    for fn in fns.values():  # warm every side alike: imports, plugins, the page cache
        fn()
    return interleaved_times(fns, rounds)


def prepare(data: Data, sizes: Sizes, files_dir: Path, work: Path, log: Log) -> dict[str, Any]:
    """Timed in a fresh interpreter, as the CLI runs: the harness's heap (data, sessions) would
    slow both sides' garbage collection and the workers' fork."""
    from mlpersonalize.decoding import default_workers

    child = "import sys; from benchmarks.speed import _prepare_child; _prepare_child(*sys.argv[1:])"
    rounds = 2 * sizes.repeats + 1  # a second each: the shared cores' load drifts, rounds are cheap
    args = [str(files_dir), str(manifest_path(data)), str(work), str(rounds)]
    run = check(run_child([sys.executable, "-c", child, *args], cwd=REPO), "prepare timings")
    times = json.loads(run.stdout)
    base, ours, one = (statistics.median(times[k]) for k in ("pillow", "ours", "one"))
    # each round's ratio, then the median: the three runs of a round share the machine's load
    ratios = [p / o for p, o in zip(times["pillow"], times["ours"], strict=True)]
    ratios_one = [p / o for p, o in zip(times["pillow"], times["one"], strict=True)]
    files = sorted(files_dir.rglob("*.png"))
    cmd = cli(
        "prepare", str(files_dir), "-o", str(work / "cli.npz"), "--force", "--model", str(manifest_path(data))
    )
    run = check(run_child(cmd), "mlpersonalize prepare")
    n = len(files)
    result = {
        "files": n,
        "image_size": "256x256 PNG",
        "workers": default_workers(),
        "pillow_images_per_s": n / base,
        "prepare_images_per_s": n / ours,
        "prepare_one_worker_images_per_s": n / one,
        "cli_images_per_s": n / run.seconds,
        "rounds": rounds,
        "ratio": statistics.median(ratios),
        "ratio_one_worker": statistics.median(ratios_one),
        "ratio_by_round": ratios,
    }
    log(f"speed/prepare: {result['ratio']:.2f}x Pillow ({result['prepare_images_per_s']:.0f} img/s)")
    return result


def manifest_path(data: Data) -> Path:
    return data.package.path


def _prepare_child(files_dir: str, model: str, work: str, repeats: str) -> None:
    print(json.dumps(prepare_timings(Path(files_dir), Path(model), Path(work), int(repeats))))


# --- (e) start-up ------------------------------------------------------------------------------


def startup(model: Path, sizes: Sizes, log: Log) -> dict[str, Any]:
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "mlpersonalize --help": cli("--help"),
        "mlpersonalize inspect": cli("inspect", "--model", str(model), "--json"),
        "mlpersonalize --help (torch hidden)": cli("--help", hide_torch=True),
        "mlpersonalize inspect (torch hidden)": cli(
            "inspect", "--model", str(model), "--json", hide_torch=True
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(sizes.startup_repeats):
        for key, cmd in commands.items():  # interleaved so load changes hit all alike
            times[key].append(check(run_child(cmd), key).seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["python -c pass"]
    out = {
        "repeats": sizes.startup_repeats,
        "median_seconds": med,
        "over_python_seconds": {k: v - base for k, v in med.items() if k != "python -c pass"},
        "runs": times,
    }
    log(f"speed/startup: --help {med['mlpersonalize --help']:.3f} s, python {base:.3f} s")
    return out


# --- (f) what an update costs: fixed costs, label mix, threads, scale, scikit-learn ------------

# The process floor. torch is hidden from it and from every command of this section, as in a
# runtime-only install: with torch installed (the bench extra) `import onnxruntime` probes it and
# takes seconds; mlpersonalize's own imports never do (_ort.py).
FLOOR = [sys.executable, "-c", "import sys; sys.modules['torch'] = None; import numpy, onnxruntime, PIL"]


def _update_cmd(batch: Path, model: Path, out: Path, *extra: str) -> list[str]:
    args = ("update", str(batch), "--model", str(model), "--output", str(out), "--json", "--force", *extra)
    return cli(*args, hide_torch=True)


def _steps(out: Path) -> list[int]:
    """The training steps of each pass, from the history entry the update wrote."""
    history = json.loads((out / "manifest.json").read_text())["history"][-1]
    return list(history.get("training_steps") or [])


def _paired(commands: dict[str, Callable[[int], list[str]]], repeats: int) -> dict[str, Any]:
    """Each command run ``repeats`` times in turn (A B C A B C …); medians of wall, CPU and peak.

    One untimed run of each comes first (index ``repeats``): the bytecode cache and the page cache
    are then warm for every timed run, as they are for a command a user runs again."""
    runs: dict[str, list[Any]] = {k: [] for k in commands}
    for key, make in commands.items():
        check(run_child(make(repeats)), key)
    for i in range(repeats):
        for key, make in commands.items():
            runs[key].append(check(run_child(make(i)), key))
    out: dict[str, Any] = {}
    for key, rs in runs.items():
        out[key] = {
            "wall_s": statistics.median(r.seconds for r in rs),
            "cpu_s": statistics.median(r.cpu_seconds for r in rs),
            "peak_mb": statistics.median(r.max_rss_mb for r in rs),
            "walls": [r.seconds for r in rs],
            "cpus": [r.cpu_seconds for r in rs],
        }
    return out


def _ratio(results: dict[str, Any], a: str, b: str, what: str = "walls") -> float:
    """The median of run-by-run ratios a/b (runs were interleaved, so each pair shares the load)."""
    return statistics.median(x / y for x, y in zip(results[a][what], results[b][what], strict=True))


def cost(data: Data, sizes: Sizes, work: Path, log: Log) -> dict[str, Any]:
    """Whole processes, interleaved: the seed's case (3 new labels x 5 drawings) and `inspect` /
    `predict` of one image against the import floor; the same examples as 2 or 10 labels; one
    thread against the default; the largest batch; scikit-learn baselines in-process."""
    from PIL import Image

    model = data.package.path
    manifest = data.manifest
    out: dict[str, Any] = {}
    # (1) fixed costs: the seed's case
    new_labels = data.labels[:3]
    pixels, ids = doodles(new_labels, 5, 7, manifest.constraint)
    seed_batch = write_batch(work / "cost-seed.npz", pixels, [new_labels[i] for i in ids], manifest)
    image = work / "cost-one.png"
    Image.fromarray(pixels[0, :, :, 0]).resize((256, 256)).save(image)
    repeats = max(3, sizes.startup_repeats)
    fixed = _paired(
        {
            "floor": lambda i: FLOOR,
            "update_seed": lambda i: _update_cmd(seed_batch, model, work / f"cost-seed-out-{i}"),
            "inspect_json": lambda i: cli("inspect", "--model", str(model), "--json", hide_torch=True),
            "predict_one": lambda i: cli(
                "predict", str(image), "--model", str(model), "--json", hide_torch=True
            ),
        },
        repeats,
    )
    out["fixed"] = {
        "repeats": repeats,
        "runs": fixed,
        "steps": _steps(work / "cost-seed-out-0"),
        "ratio_to_floor": {k: _ratio(fixed, k, "floor") for k in fixed if k != "floor"},
        "cpu_ratio_to_floor": {k: _ratio(fixed, k, "floor", "cpus") for k in fixed if k != "floor"},
    }
    log(f"speed/cost: seed update {out['fixed']['ratio_to_floor']['update_seed']:.2f}x the floor")
    # (2) the same examples as 2 or 10 labels
    n = max(sizes.scaling)
    mix_pixels = distinct_copies(data.pixels, n)
    pool = novel_and_named(manifest)[0][:10]
    batches = {}
    for k in (2, 10):
        names = [pool[i % k] for i in range(n)]
        batches[k] = write_batch(work / f"cost-mix-{k}.npz", mix_pixels, names, manifest)
    mix_repeats = max(1, min(3, sizes.repeats))
    mix = _paired(
        {
            f"labels_{k}": (lambda i, k=k: _update_cmd(batches[k], model, work / f"cost-mix-{k}-{i}"))
            for k in (2, 10)
        },
        mix_repeats,
    )
    out["label_mix"] = {
        "examples": n,
        "repeats": mix_repeats,
        "runs": mix,
        "steps": {k: _steps(work / f"cost-mix-{k}-0") for k in (2, 10)},
        "ratio_2_over_10": _ratio(mix, "labels_2", "labels_10"),
        "cpu_ratio_2_over_10": _ratio(mix, "labels_2", "labels_10", "cpus"),
    }
    log(f"speed/cost: {n} examples, 2 / 10 labels {out['label_mix']['ratio_2_over_10']:.2f}x")
    # (3) one thread against the default, at 15 and n examples
    threads: dict[str, Any] = {}
    for name, batch in (("seed", seed_batch), ("mix", batches[10])):
        pair = _paired(
            {
                "default": lambda i, b=batch, nm=name: _update_cmd(b, model, work / f"cost-thr-{nm}-d{i}"),
                "one_thread": lambda i, b=batch, nm=name: _update_cmd(
                    b, model, work / f"cost-thr-{nm}-1-{i}", "--threads", "1"
                ),
            },
            mix_repeats if name == "mix" else repeats,
        )
        threads[name] = {
            "examples": 15 if name == "seed" else n,
            "runs": pair,
            "wall_ratio": _ratio(pair, "one_thread", "default"),
            "cpu_ratio": _ratio(pair, "one_thread", "default", "cpus"),
        }
    out["threads"] = threads
    # (4) the largest batch: time and peak memory
    large = LARGE_EXAMPLES if sizes.name != "smoke" else 2 * n
    big_pixels = distinct_copies(data.pixels, large)
    # each copy keeps its drawing's own label
    big_names = [data.labels[data.ids[i % len(data.ids)]] for i in range(large)]
    big = write_batch(work / "cost-large.npz", big_pixels[:large], big_names, manifest)
    del big_pixels
    run = check(run_child(_update_cmd(big, model, work / "cost-large-out")), "update (large)")
    pixel_bytes = int(np.prod(manifest.constraint.shape))
    out["large"] = {
        "examples": large,
        "wall_s": run.seconds,
        "cpu_s": run.cpu_seconds,
        "peak_mb": run.max_rss_mb,
        "steps": _steps(work / "cost-large-out"),
        "bytes_per_example_over_seed": (run.max_rss_mb - fixed["update_seed"]["peak_mb"]) * 2**20 / large,
        "pixels_plus_embedding_bytes": pixel_bytes + 4 * manifest.embedding_dim,
    }
    log(f"speed/cost: {large} examples {run.seconds:.1f} s, {run.max_rss_mb:.0f} MB")
    out["sklearn"] = sklearn_baselines(data, log)
    return out


LARGE_EXAMPLES = 100_000


def sklearn_baselines(data: Data, log: Log) -> dict[str, Any] | None:
    """In-process, same embeddings: `personalize` (both passes, guard, exemplars; embedding
    excluded) against scikit-learn's LogisticRegression and k-NN fitted on the exemplar memory
    plus the new examples; new-label top-1 on fresh drawings for each. numpy's and scikit-learn's
    BLAS get one thread, as `update` gives its own (threads.small_blas): OpenBLAS's pool on busy
    cores made this in-process `update` 0.54 s instead of 0.10 s at 15 examples."""
    if importlib.util.find_spec("sklearn") is None:
        return None
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    with threadpool_limits(1, user_api="blas"):
        return _sklearn_baselines(data, log)


def _sklearn_baselines(data: Data, log: Log) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    import mlpersonalize.update_algorithm as algorithm
    from mlpersonalize.batch import Batch
    from mlpersonalize.heads.cosine import normalize
    from mlpersonalize.params import UpdateParams

    package, manifest = data.package, data.manifest
    ex_emb, ex_idx = package.exemplars()
    n_old = len(manifest.labels)
    warm = normalize(ex_emb)  # first fits pay scikit-learn's lazy imports: not timed
    LogisticRegression(max_iter=50).fit(warm, ex_idx)
    KNeighborsClassifier(3).fit(warm, ex_idx).predict(warm[:5])
    rows = []
    for n in (15, 1000):
        labels = data.labels[:3] if n == 15 else data.labels
        pixels, ids = doodles(labels, -(-n // len(labels)), 11, manifest.constraint)
        pixels, ids = pixels[:n], ids[:n]
        test_px, test_ids = doodles(labels, 20, 12, manifest.constraint)
        batch = Batch.from_pixels(pixels, [labels[i] for i in ids], manifest)
        emb = algorithm.embed(package.path / "backbone.onnx", pixels, manifest.constraint)
        test_emb = algorithm.embed(package.path / "backbone.onnx", test_px, manifest.constraint)
        cached = algorithm.embed

        def cached_embed(
            *args: Any, order: np.ndarray | None = None, _emb: np.ndarray = emb, **kw: Any
        ) -> Any:
            out = _emb if order is None else _emb[order]  # the embedding is timed apart
            ahead = int(kw.get("ahead", 0))  # the room the update asks for before the embeddings
            return np.concatenate([np.empty((ahead, out.shape[1]), np.float32), out]) if ahead else out

        algorithm.embed = cached_embed  # type: ignore[assignment]
        try:
            start = time.perf_counter()
            outcome = algorithm.personalize(package, [batch], UpdateParams(), 0.02)
            ours_s = time.perf_counter() - start
        finally:
            algorithm.embed = cached  # type: ignore[assignment]
        from mlpersonalize.heads.cosine import cosine_logits

        position = {label: i for i, label in enumerate(outcome.labels)}
        truth = np.array([position[labels[i]] for i in test_ids])
        ours_acc = float(
            np.mean(np.argmax(cosine_logits(test_emb, outcome.weight, manifest.logit_scale), 1) == truth)
        )
        x = normalize(np.concatenate([ex_emb, emb]))
        y = np.concatenate([ex_idx, n_old + ids])
        start = time.perf_counter()
        lr = LogisticRegression(max_iter=1000, class_weight="balanced").fit(
            x, y
        )  # 3 drawings vs 20 exemplars
        lr_s = time.perf_counter() - start
        start = time.perf_counter()
        knn = KNeighborsClassifier(3, weights="distance").fit(x, y)
        knn_pred = knn.predict(normalize(test_emb))
        knn_s = time.perf_counter() - start
        rows.append(
            {
                "examples": n,
                "labels": len(labels),
                "update_s": ours_s,
                "update_steps": outcome.history["training_steps"],
                "logreg_s": lr_s,
                "knn_s": knn_s,
                "update_new_top1": ours_acc,
                "logreg_new_top1": float(np.mean(lr.predict(normalize(test_emb)) == n_old + test_ids)),
                "knn_new_top1": float(np.mean(knn_pred == n_old + test_ids)),
            }
        )
        log(f"speed/cost: sklearn at {n}: update {ours_s:.3f} s, logreg {lr_s:.3f} s, knn {knn_s:.3f} s")
    return {"rows": rows, "blas_threads": 1}

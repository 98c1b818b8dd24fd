"""Two engines, one package format: which engine an update uses, what a package carries, and
that a whole update gives the same head and predictions on both engines.

Where onnxruntime-training-cpu is missing (CPython 3.13, aarch64), the tests that compare with
the "ort" engine skip; the rest run there as they do here, and simulate the stock runtime where
the training package is installed (``_ort.has_training`` reporting False).
"""

from __future__ import annotations

import json
from pathlib import Path

import byo_models as bm
import numpy as np
import onnx
import pytest
from clirun import main_cli
from conftest import NEW, OLD, make_tiny_package, write_batch
from onnx import numpy_helper

import mlpersonalize
from mlpersonalize import _ort, engines
from mlpersonalize.batch import Batch, save_batch
from mlpersonalize.byo import ByoOptions, make_updatable
from mlpersonalize.errors import ModelError, UsageError
from mlpersonalize.manifest import MANIFEST, PORTABLE_STEP_FILE, TRAINING_FILES
from mlpersonalize.package import load_package

HAS_ORT = _ort.has_training()
needs_ort = pytest.mark.skipif(
    not HAS_ORT, reason="needs the ort engine: onnxruntime-training-cpu is not installed for this Python"
)


@pytest.fixture
def stock_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """As where only the stock onnxruntime is installed: no training modules."""
    monkeypatch.setattr(_ort, "has_training", lambda: False)


def _mlp_package(folder: Path, trainable: tuple[str, ...] = (), arch: str = "mlp") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(bm.build(arch), folder / "m.onnx")
    return make_updatable(folder / "m.onnx", folder / "pkg", ByoOptions(trainable=trainable)).path


def _byo_batch(path: Path, package: Path, per_class: int = 5, seed: int = 20) -> Path:
    manifest = load_package(package).manifest
    pixels, ids = bm.gratings(bm.NEW, per_class, manifest.constraint.shape[2], seed=seed, jitter=0.3)
    batch = Batch.from_pixels(pixels, tuple(f"new{i}" for i in ids), manifest)
    save_batch(path, batch, force=True)
    return path


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


# --- choosing an engine ---------------------------------------------------------------------


def test_the_engine_is_ort_where_installed_else_portable() -> None:
    assert engines.get(None).name == ("ort" if HAS_ORT else "portable")
    assert engines.get("portable").name == "portable"
    with pytest.raises(UsageError, match="unknown training engine 'tpu'; choose one of ort, portable"):
        engines.get("tpu")


def test_portable_is_chosen_and_ort_refused_where_training_is_not_installed(stock_runtime: None) -> None:
    assert engines.get(None).name == "portable"
    with pytest.raises(UsageError, match=r"onnxruntime-training-cpu.*not installed.*--engine portable"):
        engines.get("ort")


def test_update_engine_ort_without_the_training_package_is_a_usage_error(
    stock_runtime: None, doodle_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[:1])
    args = ["update", str(batch), "--model", str(doodle_model), "--output", str(tmp_path / "out")]
    code, _, err = main_cli([*args, "--engine", "ort"], capsys)
    assert code == 2
    assert err.startswith("Error: ") and err.count("\n") == 1
    assert "pip install onnxruntime-training-cpu" in err and "--engine portable" in err
    assert not (tmp_path / "out").exists()
    code, _, err = main_cli([*args, "--engine", "portable"], capsys)
    assert code == 0, err
    assert load_package(tmp_path / "out").manifest.history[-1]["engine"] == "portable"


def test_a_head_the_portable_engine_cannot_train_is_refused_naming_what_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A branch head whose trainable layer is a convolution: refused before anything trains."""
    package = _mlp_package(tmp_path / "conv", bm.BRANCH["mobilenet"], "mobilenet")
    manifest = load_package(package).manifest
    assert manifest.engines["portable"] == "unsupported"
    assert PORTABLE_STEP_FILE not in manifest.files
    batch = _byo_batch(tmp_path / "b.npz", package)
    args = ["update", str(batch), "--model", str(package), "--output", str(tmp_path / "out")]
    code, _, err = main_cli([*args, "--engine", "portable"], capsys)
    assert code == 4
    assert err.startswith("Error: ") and err.count("\n") == 1
    assert "'Conv'" in err and "--engine ort" in err and "onnxruntime-training-cpu" in err
    assert not (tmp_path / "out").exists()


# --- what a package carries ------------------------------------------------------------------


def test_every_package_carries_the_portable_step_and_says_which_engines_it_has(tiny_model: Path) -> None:
    manifest = load_package(tiny_model).manifest
    assert manifest.engines == {"ort": "current" if HAS_ORT else "regenerate", "portable": "current"}
    assert PORTABLE_STEP_FILE in manifest.files
    assert all((name in manifest.files) == HAS_ORT for name in TRAINING_FILES)
    step = onnx.load(str(tiny_model / PORTABLE_STEP_FILE))
    onnx.checker.check_model(step, full_check=True)
    assert {node.domain for node in step.graph.node} == {""}
    # One step of the stored graph, run by a plain InferenceSession, moves the stored head.
    weight = _initializers(tiny_model / "head.onnx")["head.weight"]
    feeds = {
        i.name: np.zeros([d.dim_value or 2 for d in i.type.tensor_type.shape.dim], np.float32)
        for i in step.graph.input
    }
    feeds.update(
        {
            "head.weight": weight,
            "step": np.zeros(1, np.int64),
            "learning_rate": np.array([0.1], np.float32),
            "x": np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32),
            "y": np.array([0, 1], np.int64),
        }
    )
    moved, loss = _ort.inference_session(tiny_model / PORTABLE_STEP_FILE).run(
        ["head.weight.next", "loss"], feeds
    )
    assert np.isfinite(loss) and not np.allclose(moved, weight)


def test_inspect_shows_the_engines(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = main_cli(["inspect", "--model", str(tiny_model), "--json"], capsys)
    assert code == 0 and json.loads(out)["engines"] == load_package(tiny_model).manifest.engines
    code, out, _ = main_cli(["inspect", "--model", str(tiny_model)], capsys)
    line = next(line for line in out.splitlines() if line.startswith("engines: "))
    if HAS_ORT:
        assert line == "engines: ort, portable"
    else:
        assert line.startswith("engines: portable; ort: its files must be regenerated")


def test_where_training_is_not_installed_packages_carry_no_stale_ort_artifacts(
    stock_runtime: None, doodle_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = make_tiny_package(tmp_path / "made")
    manifest = load_package(made).manifest
    assert manifest.engines == {"ort": "regenerate", "portable": "current"}
    assert not (made / "training" / "checkpoint").exists()
    # An update where only the stock runtime exists drops the base's ORT artifacts (now stale).
    assert load_package(doodle_model).manifest.engines["ort"] == ("current" if HAS_ORT else "regenerate")
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[:1])
    result = mlpersonalize.update(batch, model=doodle_model, output=tmp_path / "out")
    updated = load_package(result.model).manifest
    assert updated.engines == {"ort": "regenerate", "portable": "current"}
    assert result.history["engine"] == "portable"
    assert not any(name in updated.files for name in TRAINING_FILES)
    assert not (result.model / "training" / "training_model.onnx").exists()
    code, out, _ = main_cli(["inspect", "--model", str(result.model)], capsys)
    assert code == 0
    assert "engines: portable; ort: its files must be regenerated, by an update where it is installed" in out


@needs_ort
def test_the_next_update_where_training_is_installed_regenerates_the_ort_artifacts(
    doodle_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[:1])
    with monkeypatch.context() as patch:
        patch.setattr(_ort, "has_training", lambda: False)
        mlpersonalize.update(batch, model=doodle_model, output=tmp_path / "portable")
    again = write_batch(tmp_path / "c.npz", tmp_path / "portable", NEW[1:2])
    result = mlpersonalize.update(again, model=tmp_path / "portable", output=tmp_path / "regenerated")
    manifest = load_package(result.model).manifest
    assert manifest.engines == {"ort": "current", "portable": "current"}
    assert result.history["engine"] == "ort"
    state = _ort.training_api().CheckpointState.load_checkpoint(str(result.model / "training" / "checkpoint"))
    np.testing.assert_allclose(
        np.asarray(state.parameters["head.weight"].data),
        _initializers(result.model / "head.onnx")["head.weight"],
    )
    assert len(manifest.labels) == len(OLD) + 2


def test_a_manifest_from_before_the_engines_field_reads_what_its_files_show(tiny_model: Path) -> None:
    data = json.loads((tiny_model / MANIFEST).read_text())
    del data["engines"]
    (tiny_model / MANIFEST).write_text(json.dumps(data))
    assert load_package(tiny_model).manifest.engines == {
        "ort": "current" if HAS_ORT else "regenerate",
        "portable": "current",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["engines"].update(tpu="current"), "engines: 'tpu'"),
        (lambda d: d["engines"].update(portable="maybe"), "engines: 'portable': 'maybe'"),
        (
            lambda d: d["files"].pop(PORTABLE_STEP_FILE),
            "engine 'portable' is current but files lists no entry",
        ),
        (
            lambda d: d["engines"].update(portable="regenerate"),
            "engine 'portable' is regenerate but its files",
        ),
        (lambda d: d.update(engines=["ort"]), "engines must be an object"),
    ],
)
def test_engine_faults_in_a_manifest_are_one_clear_error(tiny_model: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads((tiny_model / MANIFEST).read_text())
    change(data)
    (tiny_model / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message):
        load_package(tiny_model)


def test_a_package_without_ort_artifacts_loads_predicts_and_updates(
    stock_runtime: None, tmp_path: Path
) -> None:
    made = make_tiny_package(tmp_path / "made", OLD)
    model = mlpersonalize.load_model(made)
    assert len(model.predict(np.zeros((2, 28, 28, 1), np.uint8))) == 2
    batch = write_batch(tmp_path / "b.npz", made, NEW[:1])
    result = mlpersonalize.update(batch, model=made, output=tmp_path / "out", force=True)
    assert result.labels_added == (NEW[0],)


# --- same result either way ------------------------------------------------------------------


def _both(update_args: dict, tmp_path: Path) -> tuple[Path, Path]:  # type: ignore[type-arg]
    out = {}
    for engine in ("ort", "portable"):
        result = mlpersonalize.update(**update_args, output=tmp_path / engine, engine=engine, seed=3)
        assert result.history["engine"] == engine
        out[engine] = result.model
    return out["ort"], out["portable"]


def _assert_same_update(ort_pkg: Path, portable_pkg: Path, atol: float = 1e-4) -> None:
    ort_head, portable_head = _initializers(ort_pkg / "head.onnx"), _initializers(portable_pkg / "head.onnx")
    assert set(ort_head) == set(portable_head)
    for name, value in ort_head.items():
        np.testing.assert_allclose(portable_head[name], value, atol=atol, err_msg=name)
    ort_m, portable_m = load_package(ort_pkg).manifest, load_package(portable_pkg).manifest
    ort_h, portable_h = ort_m.history[-1], portable_m.history[-1]
    np.testing.assert_allclose(portable_h["losses"], ort_h["losses"], atol=1e-4)
    assert portable_h["accuracy"] == ort_h["accuracy"]  # both guard passes judged alike
    assert portable_h["guard"] == ort_h["guard"]
    assert ort_m.labels == portable_m.labels
    np.testing.assert_array_equal(*(np.load(p / "exemplars.npz")["labels"] for p in (ort_pkg, portable_pkg)))


@needs_ort
def test_cosine_head_same_head_and_predictions_on_both_engines(doodle_model: Path, tmp_path: Path) -> None:
    """The bundled kind: cross-validated choice of the imprinted or trained head (each fold trains
    through the engine: rehearsal of the exemplar memory, anchored rows)."""
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[:2], per_label=4)
    ort_pkg, portable_pkg = _both({"batches": batch, "model": doodle_model}, tmp_path)
    history = load_package(ort_pkg).manifest.history[-1]
    assert history["accuracy"]["held_out_examples"] == 8  # every drawing held out in one fold
    trained = history["selection"]["head"] != "imprinted"
    assert len(history["losses"]) == (history["epochs"] if trained else 0)
    _assert_same_update(ort_pkg, portable_pkg)
    from conftest import make_dataset

    labels = [*NEW[:2], *OLD]
    pixels, _ = make_dataset(labels, 6, seed=11, constraint=load_package(ort_pkg).manifest.constraint)
    ort_pred = [p.label for p in mlpersonalize.load_model(ort_pkg).predict(pixels)]
    portable_pred = [p.label for p in mlpersonalize.load_model(portable_pkg).predict(pixels)]
    assert ort_pred == portable_pred


@needs_ort
def test_a_style_row_update_is_the_same_on_both_engines(tmp_path: Path) -> None:
    """Issue 19: a known label re-taught in the user's style (a style row beside the label's own
    row) trains to the same head, rows and predictions on either engine."""
    from benchmarks.styles import style_drawings
    from mlpersonalize.store import bundled_model_path

    bundled = bundled_model_path()
    manifest = load_package(bundled).manifest
    drawings = style_drawings("asterisk", 15, seed=3, constraint=manifest.constraint)
    batch = tmp_path / "style.npz"
    save_batch(batch, Batch.from_pixels(drawings[:5], ["star"] * 5, manifest), force=True)
    ort_pkg, portable_pkg = _both({"batches": batch, "model": bundled}, tmp_path)
    star = list(manifest.labels).index("star")
    for pkg in (ort_pkg, portable_pkg):
        assert load_package(pkg).manifest.row_labels.count(star) == 2  # the label's row and a style row
    history = load_package(ort_pkg).manifest.history[-1]  # the folds trained on both engines either way
    assert len(history["losses"]) == (history["epochs"] if history["selection"]["head"] != "imprinted" else 0)
    _assert_same_update(ort_pkg, portable_pkg)
    held = drawings[5:]
    ort_pred = [p.label for p in mlpersonalize.load_model(ort_pkg).predict(held)]
    portable_pred = [p.label for p in mlpersonalize.load_model(portable_pkg).predict(held)]
    assert ort_pred == portable_pred


@needs_ort
@pytest.mark.parametrize("kind", ["linear", "branch-mlp"])
def test_brought_model_heads_same_head_and_predictions_on_both_engines(tmp_path: Path, kind: str) -> None:
    """A brought model's linear head (frozen rows, margin gate, noise stand-ins rehearsed), and
    the branch kind with a trainable hidden layer (Gemm, Relu: ops the portable engine has)."""
    package = _mlp_package(tmp_path / "made", bm.BRANCH["mlp"] if kind == "branch-mlp" else ())
    manifest = load_package(package).manifest
    assert manifest.head_kind == kind.split("-")[0] and manifest.frozen_labels == len(bm.OLD)
    assert manifest.engines == {"ort": "current", "portable": "current"}
    assert {"head.weight_frozen", "head.weight_gate"} <= set(_initializers(package / "head.onnx"))
    batch = _byo_batch(tmp_path / "b.npz", package)
    ort_pkg, portable_pkg = _both({"batches": batch, "model": package}, tmp_path)
    # The branch's hidden layer: Adam divides each gradient by its own running RMS, so where a
    # ReLU's input sits near 0 the engines' float rounding of a near-zero gradient becomes a
    # step of up to ~lr; measured: 41 of 32,768 hidden weights differ, by at most 1.9e-4.
    _assert_same_update(ort_pkg, portable_pkg, 1e-4 if kind == "linear" else 1e-3)
    pixels, _ = bm.gratings(bm.OLD + bm.NEW, 10, 1, seed=99, jitter=0.3)
    ort_pred = bm.predict(str(ort_pkg / "model.onnx"), pixels, "nchw", "probabilities")
    portable_pred = bm.predict(str(portable_pkg / "model.onnx"), pixels, "nchw", "probabilities")
    np.testing.assert_array_equal(ort_pred, portable_pred)


# --- ONNX Runtime's artifacts: generated once per head shape ---------------------------------
def _cosine_head(weight: np.ndarray) -> onnx.ModelProto:
    from mlpersonalize.heads.base import StoredHead
    from mlpersonalize.heads.cosine import CosineHead

    return CosineHead.graph(StoredHead(weight, 10.0))


@needs_ort
def test_an_updates_sessions_and_package_share_one_generation_and_get_their_own_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlpersonalize.engines import ort
    from mlpersonalize.params import UpdateParams

    made: list[Path] = []
    real = ort.generate_artifacts

    def counted(head: onnx.ModelProto, trainable: list[str], directory: Path, *args: object) -> None:
        made.append(directory)
        real(head, trainable, directory, *args)

    monkeypatch.setattr(ort, "generate_artifacts", counted)
    ort.MODELS.clear()
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(5, 8)).astype(np.float32) for _ in range(3)]
    params = UpdateParams()
    for weight in weights[:2]:  # the guard pass and the final pass: one shape, other values
        session = ort.ENGINE.open(_cosine_head(weight), ["head.weight"], params)
        try:
            np.testing.assert_array_equal(session.parameters()["head.weight"], weight)
            session.step(rng.normal(size=(4, 8)).astype(np.float32), np.array([0, 1, 2, 3]))
            assert not np.array_equal(session.parameters()["head.weight"], weight)
        finally:
            session.close()
    files = ort.artifact_files(_cosine_head(weights[2]), ["head.weight"], params)
    assert len(made) == 1
    # the package's checkpoint is byte for byte the one a fresh generation writes for its head
    real(_cosine_head(weights[2]), ["head.weight"], tmp_path, ort.optimizer_block(params), ort.EXTRA_OUTPUTS)
    assert files["checkpoint"] == (tmp_path / "checkpoint").read_bytes()
    assert sorted(files) == sorted(p.name for p in tmp_path.iterdir())
    # another shape, or other optimizer hyperparameters, generate anew
    ort.artifact_files(_cosine_head(weights[0][:4]), ["head.weight"], params)
    ort.artifact_files(_cosine_head(weights[0]), ["head.weight"], UpdateParams(beta1=0.8))
    assert len(made) == 3
    # models removed under the process (a temp cleaner) are generated again, not missed
    for folder in made:
        for file in folder.iterdir():
            file.unlink()
    assert (
        ort.artifact_files(_cosine_head(weights[2]), ["head.weight"], params)["checkpoint"]
        == files["checkpoint"]
    )
    assert len(made) == 4
    ort.MODELS.clear()
    assert not any(folder.exists() for folder in made)


@needs_ort
def test_the_ort_step_without_modules_wrapping_trains_exactly_as_module_call_does(doodle_model: Path) -> None:
    """OrtSession.step calls the C++ train step and reads only the loss (44 against 78 us a step):
    the losses and parameters are bit for bit those of ONNX Runtime's Module.__call__."""
    from mlpersonalize.engines import ort as ort_engine
    from mlpersonalize.heads import kind_of

    package = load_package(doodle_model)
    kind = kind_of(package.manifest)
    stored = kind.read(package)
    graph, trainable = kind.graph(stored), kind.trainable(stored)
    rng = np.random.default_rng(3)
    classes = len(stored.weight)
    steps = [
        (rng.standard_normal((8, stored.weight.shape[1])).astype(np.float32), rng.integers(0, classes, 8))
        for _ in range(20)
    ]
    results = []
    for direct in (True, False):
        session = ort_engine.ENGINE.open(graph, trainable, package.manifest.update_defaults)
        try:
            assert session._train_step is not None  # the fast path is the one in use here
            if not direct:
                session._train_step = None  # the public path: Module.__call__
            losses = [session.step(x, y) for x, y in steps]
            results.append((losses, session.parameters()))
        finally:
            session.close()
    (fast_losses, fast), (public_losses, public) = results
    assert fast_losses == public_losses
    assert fast.keys() == public.keys()
    assert all(np.array_equal(fast[name], public[name]) for name in fast)

"""Bring your own model, with real trained classifiers (tests/fixtures/byo, PyTorch-trained ONNX).

Each fixture is made updatable and updated through the CLI as a user would; the data are
generated doodles (``mlpersonalize.sample.doodles``), held-out from seeds the models never saw.
The retention goals of issue 14 are asserted too: the ones today's update misses are marked
``xfail(strict=True)``, so they fail loudly the day they pass and the mark must go.
Updates run with ``--force``: a guard refusal would hide what the update does to the labels.
``python -m benchmarks.byo`` measures the same over several seeds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.byo import BRANCH_LAYERS, Fixture, LastLayer, fixtures, ncm_predict
from mlpersonalize import _ort
from mlpersonalize.batch import Batch
from mlpersonalize.byo import DEFAULTS, ByoOptions, make_updatable
from mlpersonalize.cli.app import main
from mlpersonalize.images import load, to_model_input
from mlpersonalize.package import load_package
from mlpersonalize.sample.doodles import write_folder
from mlpersonalize.update_algorithm import personalize

FIXTURES = fixtures()
HELDOUT = 20  # held-out drawings per label
SHOTS = 3  # drawings of each new label in the batch
OLD_SHOTS = 5  # drawings of each own label in the batch of the "with old data" update
KEEP = 0.97  # issue 14: share of the original accuracy kept without old data
KEEP_WITH_OLD = 0.99  # ... with 5 examples per own label in the batch
NCM_MARGIN = 0.05  # new labels reach nearest-class-mean accuracy, less this


@contextlib.contextmanager
def _env(home: Path) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("MLPERSONALIZE_HOME", "MLPERSONALIZE_MODEL")}
    os.environ["MLPERSONALIZE_HOME"] = str(home)
    os.environ.pop("MLPERSONALIZE_MODEL", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def cli(home: Path, *args: str) -> str:
    """The console entry point in-process with its own data dir; stdout (asserting exit 0)."""
    out, err = io.StringIO(), io.StringIO()
    with _env(home), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
    assert exit_info.value.code in (0, None), (args, err.getvalue())
    return out.getvalue()


def predictions(home: Path, model: str, folder: Path) -> dict[str, dict]:
    """``predict --json`` of every drawing in ``folder``, by file path."""
    rows = [
        json.loads(line)
        for line in cli(home, "predict", str(folder), "--model", model, "--json").splitlines()
    ]
    return {str(Path(r["file"]).resolve()): r for r in rows}


def top1_accuracy(rows: dict[str, dict], labels: tuple[str, ...]) -> float:
    hits = [
        r["top"][0]["label"] == Path(f).parent.name for f, r in rows.items() if Path(f).parent.name in labels
    ]
    return float(np.mean(hits))


@dataclass
class Scenario:
    fixture: Fixture
    work: Path
    package: Path
    heldout: Path
    before: dict[str, dict]
    after: dict[str, dict]  # after an update with 3 drawings of each of 5 new labels
    after_with_old: dict[str, dict]  # the same batch plus 5 drawings of each own label
    after_with_examples: dict[str, dict]  # the new batch, the package made with --examples (5 each)
    ncm_old: float
    ncm_new: float


_SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    """Make the fixture updatable, predict, update twice (once per data dir); cached per module."""
    if name in _SCENARIOS:
        return _SCENARIOS[name]
    fx = FIXTURES[name]
    work = tmp_path_factory.mktemp(f"byo-{name}")
    package = work / "pkg"
    cli(work / "home", "make-updatable", str(fx.path), "-o", str(package), *fx.make_updatable_args())
    heldout = work / "heldout"
    write_folder(heldout, fx.labels + fx.new_labels, HELDOUT, seed=4242)
    before = predictions(work / "home", str(package), heldout)
    new_files = write_folder(work / "batch" / "new", fx.new_labels, SHOTS, seed=31)
    old_files = write_folder(work / "batch" / "old", fx.labels, OLD_SHOTS, seed=32)
    seeded = work / "pkg-examples"
    examples = ["--examples", str(work / "batch" / "old")]
    cli(
        work / "home", "make-updatable", str(fx.path), "-o", str(seeded), *fx.make_updatable_args(), *examples
    )
    after = {}
    for kind, folders, made in (
        ("new", ["new"], package),
        ("old", ["new", "old"], package),
        ("examples", ["new"], seeded),
    ):
        home = work / f"home-{kind}"
        batch = work / f"{kind}.npz"
        cli(
            home,
            "prepare",
            *[str(work / "batch" / f) for f in folders],
            "-o",
            str(batch),
            "--model",
            str(made),
        )
        cli(home, "update", str(batch), "--model", str(made), "--seed", "0", "--force")
        after[kind] = predictions(home, fx.name, heldout)
    # Nearest class mean in the model's own features, 3 drawings of every label.
    layer = LastLayer(fx.path)
    all_labels = fx.labels + fx.new_labels
    train = new_files + [f for f in old_files if int(f.stem) < SHOTS]
    test = sorted(heldout.rglob("*.png"))

    def feats(files: list[Path]) -> np.ndarray:
        return layer.run(to_model_input(np.stack([load(f, fx.constraint) for f in files]), fx.constraint))[1]

    def ids(files: list[Path]) -> np.ndarray:
        return np.array([all_labels.index(f.parent.name) for f in files])

    right = ncm_predict(feats(train), ids(train), feats(test), len(all_labels)) == ids(test)
    old = ids(test) < len(fx.labels)
    made = Scenario(
        fx,
        work,
        package,
        heldout,
        before,
        after["new"],
        after["old"],
        after["examples"],
        float(right[old].mean()),
        float(right[~old].mean()),
    )
    _SCENARIOS[name] = made
    print(  # `pytest -s` shows what the retention tests judge
        f"{name}: own labels {top1_accuracy(before, fx.labels):.3f} before, "
        f"{top1_accuracy(after['new'], fx.labels):.3f} after, {top1_accuracy(after['old'], fx.labels):.3f} "
        f"with old examples, {top1_accuracy(after['examples'], fx.labels):.3f} with --examples; new labels {top1_accuracy(after['new'], fx.new_labels):.3f} "
        f"(NCM {made.ncm_new:.3f}, own labels {made.ncm_old:.3f})"
    )
    return made


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_is_a_trained_classifier(name: str, tmp_path: Path) -> None:
    """The committed file runs in plain ONNX Runtime and knows its labels on fresh drawings."""
    fx = FIXTURES[name]
    assert fx.path.stat().st_size < 1_000_000
    labels = fx.labels_file.read_text(encoding="utf-8").split()
    session = ort.InferenceSession(str(fx.path), providers=["CPUExecutionProvider"])
    files = write_folder(tmp_path, fx.labels, 10, seed=777)
    x = to_model_input(np.stack([load(f, fx.constraint) for f in files]), fx.constraint)
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert out.shape == (len(files), len(fx.labels)) and len(labels) == len(set(labels))
    accuracy = np.mean([fx.labels[k] == f.parent.name for k, f in zip(out.argmax(1), files, strict=True)])
    assert accuracy >= min(0.85, fx.heldout_accuracy - 0.05), accuracy


@pytest.mark.parametrize("name", list(FIXTURES))
def test_made_package_predicts_what_the_original_does(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    s = scenario(name, tmp_path_factory)
    fx = s.fixture
    manifest = json.loads((s.package / "manifest.json").read_text(encoding="utf-8"))
    assert tuple(manifest["labels"]) == fx.labels
    assert manifest["input"]["image"]["layout"] == fx.constraint.layout
    assert manifest["input"]["image"]["ink"] == fx.constraint.ink
    files = sorted(s.before)
    x = to_model_input(np.stack([load(f, fx.constraint) for f in files]), fx.constraint)
    session = ort.InferenceSession(str(fx.path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)
    if not np.allclose(out.sum(1), 1, atol=1e-4):  # a logits model: the package adds the softmax
        out = np.exp(out - out.max(1, keepdims=True))
        out /= out.sum(1, keepdims=True)
    for f, probs in zip(files, out, strict=True):
        top = s.before[f]["top"][0]
        assert top["label"] == fx.labels[int(probs.argmax())], f
        assert top["probability"] == pytest.approx(probs.max(), abs=1e-4), f


@pytest.mark.parametrize("name", list(FIXTURES))
def test_update_adds_the_new_labels(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    s = scenario(name, tmp_path_factory)
    fx = s.fixture
    info = json.loads(cli(s.work / "home-new", "inspect", "--model", fx.name, "--json"))
    labels = tuple(info["labels"])
    assert labels[: len(fx.labels)] == fx.labels and sorted(labels[len(fx.labels) :]) == sorted(fx.new_labels)
    predicted = {r["top"][0]["label"] for r in s.after.values()}
    assert set(fx.new_labels) <= predicted  # each new label is predicted for some drawing
    assert top1_accuracy(s.after, fx.new_labels) > 2 / (len(fx.labels) + len(fx.new_labels))
    # The original package is untouched: it still predicts what it did.
    again = predictions(s.work / "home-new", str(s.package), s.heldout)
    assert {f: r["top"][0]["label"] for f, r in again.items()} == {
        f: r["top"][0]["label"] for f, r in s.before.items()
    }


# Where the update (frozen brought rows; added rows are distance rows behind the margin gate,
# heads/linear.py) still misses the goals in this test's run (`pytest -s` prints it; `python -m
# benchmarks.byo` measures over seeds). Own labels before / after / with 5 old examples / with
# --examples, new labels vs NCM: resnet 0.994 / 0.994 / 0.994 / 0.994, 0.470 vs 0.930; mobilenet
# 0.906 / 0.900 / 0.906 / 0.900, 0.290 vs 0.600; mlp 0.994 / 0.988 / 0.994 / 0.994, 0.350 vs 0.640;
# nhwc 0.925 / 0.917 / 0.917 / 0.917, 0.340 vs 0.660. Retention is bought with the new labels'
# accuracy: the ball an added row wins in is small, since without the old data nothing tells
# where the brought labels' inputs lie. NCM is out of reach on mobilenet, mlp and nhwc whatever
# the rule: a 7-NN own-vs-new gate fitted on the held-out drawings themselves only just reaches it
# at >= 97% kept (`python -m benchmarks.byo`, the ceiling rows; docs/bring-your-own-model.md, "Why
# the new labels stay below NCM").
_KEEP_FAILS: set[str] = set()
_KEEP_WITH_OLD_FAILS: set[str] = set()
_KEEP_WITH_EXAMPLES_FAILS: set[str] = set()
_NCM_FAILS = {"resnet", "mobilenet", "mlp", "nhwc"}


def _mark(name: str, failing: set[str], reason: str) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if name in failing else []
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize(
    "name",
    [_mark(n, _KEEP_FAILS, "issue 14 item 2: the update forgets the brought labels") for n in FIXTURES],
)
def test_update_keeps_the_brought_accuracy_without_old_data(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    s = scenario(name, tmp_path_factory)
    before, after = top1_accuracy(s.before, s.fixture.labels), top1_accuracy(s.after, s.fixture.labels)
    assert after >= KEEP * before, (before, after)


@pytest.mark.parametrize(
    "name",
    [
        _mark(n, _KEEP_WITH_OLD_FAILS, "issue 14 item 3: old labels in the batch do not keep them")
        for n in FIXTURES
    ],
)
def test_update_keeps_the_brought_accuracy_with_five_old_examples(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    s = scenario(name, tmp_path_factory)
    before, after = (
        top1_accuracy(s.before, s.fixture.labels),
        top1_accuracy(s.after_with_old, s.fixture.labels),
    )
    assert after >= KEEP_WITH_OLD * before, (before, after)


@pytest.mark.parametrize(
    "name",
    [
        _mark(n, _KEEP_WITH_EXAMPLES_FAILS, "issue 14 item 3: the exemplar memory does not keep them")
        for n in FIXTURES
    ],
)
def test_update_keeps_the_brought_accuracy_with_five_examples_from_make_updatable(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`make-updatable --examples DIR` (5 drawings per own label) seeds the exemplar memory; an
    update with new labels only then keeps >= 99%."""
    s = scenario(name, tmp_path_factory)
    before = top1_accuracy(s.before, s.fixture.labels)
    after = top1_accuracy(s.after_with_examples, s.fixture.labels)
    assert after >= KEEP_WITH_OLD * before, (before, after)


@pytest.mark.parametrize(
    "name", [_mark(n, _NCM_FAILS, "issue 14 item 2: new labels below the features' NCM") for n in FIXTURES]
)
def test_new_labels_reach_nearest_class_mean(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    s = scenario(name, tmp_path_factory)
    new = top1_accuracy(s.after, s.fixture.new_labels)
    assert new >= s.ncm_new - NCM_MARGIN, (new, s.ncm_new)


@pytest.mark.slow
def test_benchmark_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m benchmarks.byo` with tiny sizes: every method measured, the table printed."""
    from benchmarks import byo

    out = tmp_path / "byo.json"
    assert byo.main(["--seeds", "1", "--heldout", "2", "--fixture", "mlp", "--json", str(out)]) == 0
    record = json.loads(out.read_text(encoding="utf-8"))["fixtures"]["mlp"]
    assert record["before"] == pytest.approx(record["before_direct_onnx"])
    methods = {(r["method"], r["old_shots"]) for r in record["runs"]}
    assert {
        ("update", 0),
        ("update", 3),
        ("update", 5),
        ("naive", 5),
        ("naive-new", 0),
        ("ncm", 3),
    } <= methods
    table = capsys.readouterr().out
    assert "| mlp (8, " in table and table.count("\n|") == len(byo.ROWS) + 2 + len(byo.RULES) + 2
    assert {r["rule"] for r in record["runs"] if r["method"] == "rule"} == set(byo.RULES)
    assert {("gate-score", 0), ("gate-knn", 0)} <= methods


@pytest.mark.slow
def test_benchmark_measures_the_branch_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m benchmarks.byo --trainable`: refusals and forced retention of the branch kind."""
    from benchmarks import byo

    out = tmp_path / "byo.json"
    assert (
        byo.main(["--trainable", "--seeds", "1", "--heldout", "2", "--fixture", "mlp", "--json", str(out)])
        == 0
    )
    record = json.loads(out.read_text(encoding="utf-8"))["fixtures"]["mlp"]
    assert record["trainable"] == list(BRANCH_LAYERS["mlp"])
    assert [(r["method"], r["refused"]) for r in record["runs"]] == [("update-branch", True)]
    run = record["runs"][0]  # next to the linear kind and the branch behind the linear kind's rows
    assert all(0 <= run[k] <= 1 for k in ("linear_old", "linear_new", "gated_old", "gated_new"))
    assert run["gated_old"] == run["linear_old"]  # the gate decides own vs new: the same own answers
    assert "| mlp (`features.3.weight features.3.bias`) |" in capsys.readouterr().out


def test_brought_update_trains_its_rows_in_few_steps_and_writes_the_distance_rows(tmp_path: Path) -> None:
    """A package with distance features replaces the rows it trains by distance rows, so its
    epochs are fitting's epoch plan (new drawings and stand-ins drawn 10 per label), not
    label-balanced epochs over 256 stand-ins (510-1080 steps a pass on the fixtures), and the
    head it writes does not depend on how long the rows trained."""
    fx = FIXTURES["mlp"]
    made = make_updatable(fx.path, tmp_path / "pkg", ByoOptions(labels=fx.labels_file, ink=fx.constraint.ink))
    package = load_package(made.path)
    files = write_folder(tmp_path / "new", fx.new_labels, SHOTS, seed=31)
    pixels = np.stack([load(f, fx.constraint) for f in files])
    batch = Batch.from_pixels(pixels, [f.parent.name for f in files], package.manifest)
    params = DEFAULTS.replace(seed=0)
    long = personalize(package, [batch], params, 0.02)
    short = personalize(package, [batch], params.replace(epochs=1), 0.02)
    # at most 10 draws of each of the 5 new and 8 brought labels per epoch
    most = params.epochs * math.ceil(10 * (len(fx.new_labels) + len(fx.labels)) / params.batch_size)
    assert 0 < max(long.history["training_steps"]) <= most, long.history["training_steps"]
    np.testing.assert_array_equal(long.weight, short.weight)
    assert len(long.history["losses"]) == params.epochs  # the losses are still reported per epoch


def cli_exit(home: Path, *args: str) -> tuple[int, str]:
    """The console entry point in-process; (exit code, stderr)."""
    err = io.StringIO()
    with _env(home), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
    return int(exit_info.value.code or 0), err.getvalue()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# A convolution in the branch needs the ort engine (the portable engine refuses it: exit 4).
_NEEDS_ORT = pytest.mark.skipif(
    not _ort.has_training(),
    reason="needs the ort engine: onnxruntime-training-cpu is not installed for this Python",
)


def _branch_marks(name: str) -> list[pytest.MarkDecorator]:
    return ([pytest.mark.slow] if name == "resnet" else []) + ([_NEEDS_ORT] if name != "mlp" else [])


def _branch_fit(name: str, tmp_path: Path, batch_seed: int, seed: int) -> tuple[Any, Any]:
    """The branch kind's fit of 5 new labels x SHOTS generated drawings on fixture ``name`` made
    updatable with its BRANCH_LAYERS, in-process: (the BranchHead, its FitResult)."""
    from mlpersonalize.embedding import embed
    from mlpersonalize.engines import get
    from mlpersonalize.heads.branch import BranchHead
    from mlpersonalize.manifest import BACKBONE_FILE

    fx = FIXTURES[name]
    options = ByoOptions(labels=fx.labels_file, ink=fx.constraint.ink, trainable=BRANCH_LAYERS[name])
    package = load_package(make_updatable(fx.path, tmp_path / "pkg", options).path)
    files = write_folder(tmp_path / "new", fx.new_labels, SHOTS, seed=batch_seed)
    pixels = np.stack([load(f, fx.constraint) for f in files])
    emb = embed(package.path / BACKBONE_FILE, pixels, package.manifest.constraint)
    labels = fx.labels + fx.new_labels
    idx = np.array([labels.index(f.parent.name) for f in files])
    params = DEFAULTS.replace(seed=seed)
    head = BranchHead(package, labels, params, get(None))
    exemplars = package.exemplars()
    rows = list(range(len(fx.labels), len(labels)))
    return head, head.fit(emb, idx, rows, head.rehearsal(*exemplars), exemplars, params)


@pytest.mark.parametrize("name", [pytest.param(n, marks=_branch_marks(n)) for n in BRANCH_LAYERS])
def test_branch_kind_update_is_refused_or_keeps_the_brought_accuracy(name: str, tmp_path: Path) -> None:
    """`--trainable` naming an earlier layer (the branch kind): an update with 3 drawings of each
    of 5 new labels and no old data either keeps >= 97% of the own labels' accuracy or is refused
    (exit 6, the package, the store and the batch as they were).

    The branch's added rows are trained rows behind the margin gate, without the linear kind's
    distance rows, and take the own labels' inputs: forced through (guard off), this test's
    batch left 0.44 of 0.99 (mlp), 0.60 of 0.91 (mobilenet), 0.60 of 0.93 (nhwc), 0.82 of 0.99
    (resnet). Without old data the guard sees it in what the added rows answer on scrambled
    copies of the batch's drawings (heads/branch.py, ``scrambled``).
    """
    fx = FIXTURES[name]
    home, package = tmp_path / "home", tmp_path / "pkg"
    trainable = [arg for layer in BRANCH_LAYERS[name] for arg in ("--trainable", layer)]
    cli(home, "make-updatable", str(fx.path), "-o", str(package), *fx.make_updatable_args(), *trainable)
    heldout = tmp_path / "heldout"
    write_folder(heldout, fx.labels + fx.new_labels, HELDOUT, seed=4242)
    before = top1_accuracy(predictions(home, str(package), heldout), fx.labels)
    write_folder(tmp_path / "new", fx.new_labels, SHOTS, seed=31)
    batch = tmp_path / "b.npz"
    cli(home, "prepare", str(tmp_path / "new"), "-o", str(batch), "--model", str(package))
    made, prepared, stored = _tree(package), batch.read_bytes(), _tree(home)
    code, err = cli_exit(home, "update", str(batch), "--model", str(package), "--seed", "0")
    if code == 6:
        assert err.startswith("Error: update refused") and err.count("\n") == 1, err
        assert "scrambled copies" in err, err
        assert _tree(package) == made and batch.read_bytes() == prepared
        # no personalized copy was made (the store's empty lock file may be left, as for any update)
        assert {k: v for k, v in _tree(home).items() if Path(k).name != "lock"} == stored
        return
    assert code == 0, err
    after = top1_accuracy(predictions(home, fx.name, heldout), fx.labels)
    assert after >= KEEP * before, (before, after)


def test_branch_guard_judges_what_the_added_rows_answer(tmp_path: Path) -> None:
    """The probe behind the refusal (``BranchHead.own_labels_reason``) judges the added rows: the
    trained ones of the mlp's update answer the scrambled drawings and are refused; the same
    trained branch with added rows that never win is accepted."""
    head, result = _branch_fit("mlp", tmp_path, batch_seed=31, seed=0)
    reason = head.own_labels_reason(result, 0.02)
    assert "scrambled copies" in reason and "inputs it is surest of" in reason
    quiet = result.weight.copy()
    quiet[head.frozen :, -1] = -1e6  # the same rows, their biases far below any brought logit
    result.weight = quiet
    assert head.own_labels_reason(result, 0.02) == ""


@pytest.mark.slow
@_NEEDS_ORT
def test_branch_guard_refuses_the_update_that_costs_least(tmp_path: Path) -> None:
    """The closest of the 20 measured damaging updates (resnet, batch seed 102, ``--seed 2``): it
    keeps 91.7% of the own labels' accuracy, its added rows answer 12% of the scrambled probes and
    change the brought model's answer on 40% of the inputs it is surest of; refused."""
    head, result = _branch_fit("resnet", tmp_path, batch_seed=102, seed=2)
    assert "inputs it is surest of" in head.own_labels_reason(result, 0.02)


def test_linear_kind_update_without_old_data_is_not_refused(tmp_path: Path) -> None:
    """The same batch on the mlp made without --trainable (the linear kind, whose added rows are
    distance rows) passes the guard without --force: the branch kind's probe is not asked."""
    fx = FIXTURES["mlp"]
    home, package = tmp_path / "home", tmp_path / "pkg"
    cli(home, "make-updatable", str(fx.path), "-o", str(package), *fx.make_updatable_args())
    write_folder(tmp_path / "new", fx.new_labels, SHOTS, seed=31)
    batch = tmp_path / "b.npz"
    cli(home, "prepare", str(tmp_path / "new"), "-o", str(batch), "--model", str(package))
    assert cli_exit(home, "update", str(batch), "--model", str(package), "--seed", "0") == (0, "")


def test_scrambled_probes_keep_each_drawings_values_and_are_bounded() -> None:
    from mlpersonalize.heads.branch import MAX_PROBES, PROBES, scrambled

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 50)).astype(np.float32)
    probes = scrambled(emb, np.random.default_rng(1))
    assert probes.shape == (3 * PROBES, 50)
    for i, probe in enumerate(probes):  # the same values, in another order
        np.testing.assert_array_equal(np.sort(probe), np.sort(emb[i // PROBES]))
        assert not np.array_equal(probe, emb[i // PROBES])
    large = scrambled(rng.normal(size=(1000, 8)).astype(np.float32), np.random.default_rng(1))
    assert len(large) == MAX_PROBES


@pytest.mark.slow
def test_gate_study_measures_the_update_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m benchmarks.byo --gate-study N`: every rule of STUDY_RULES over N batches, the
    update's own distance rows among them, kept shares and new labels' top-1 per batch."""
    from benchmarks import byo

    out = tmp_path / "gates.json"
    assert byo.main(["--gate-study", "2", "--heldout", "4", "--fixture", "mlp", "--json", str(out)]) == 0
    study = json.loads(out.read_text(encoding="utf-8"))
    cells = study["fixtures"]["mlp"]
    assert set(cells) == {rule[0] for rule in byo.STUDY_RULES} and byo.UPDATE_RULE in cells
    for cell in cells.values():
        assert len(cell["kept"]) == len(cell["new"]) == len(cell["answering"]) == 2
        assert all(0 <= v <= 1 for v in cell["new"] + cell["answering"]) and all(v >= 0 for v in cell["kept"])
    table = capsys.readouterr().out
    assert table.count("\n|") == len(byo.STUDY_RULES) + 2 and "| mlp |" in table


def test_examples_of_every_own_label_give_the_own_distance_feature(tmp_path: Path) -> None:
    """`make-updatable --examples` with drawings of every own label: the backbone also outputs the
    squared distance to the nearest of them (the manifest says how many), the exemplar memory's
    rows lie at 0, and an update's added labels never answer one of those drawings. With a label
    missing from the examples the package has no such feature (it would not protect that label)."""
    from mlpersonalize import margin_gate
    from mlpersonalize.embedding import embed
    from mlpersonalize.manifest import BACKBONE_FILE

    fx = FIXTURES["mlp"]
    home = tmp_path / "home"
    old = tmp_path / "old"
    write_folder(old, fx.labels, 3, seed=32)
    package = tmp_path / "pkg"
    cli(
        home,
        "make-updatable",
        str(fx.path),
        "-o",
        str(package),
        *fx.make_updatable_args(),
        "--examples",
        str(old),
    )
    loaded = load_package(package)
    gate = loaded.manifest.training["brought"]["gate"]
    assert gate["own_examples"] == 3 * len(fx.labels)
    emb, _ = loaded.exemplars()
    assert np.abs(emb[:, -1]).max() < 1e-3 * float(np.median((emb**2).sum(axis=1)))
    files = sorted(old.rglob("*.png"))
    pixels = np.stack([load(f, fx.constraint) for f in files])
    held = write_folder(tmp_path / "held", fx.labels, 2, seed=77)
    held_emb = embed(package / BACKBONE_FILE, np.stack([load(f, fx.constraint) for f in held]), fx.constraint)
    dim = LastLayer(fx.path).weight.shape[1]
    core = embed(package / BACKBONE_FILE, pixels, fx.constraint)[:, :dim]
    np.testing.assert_allclose(
        held_emb[:, -1], margin_gate.own_distance(held_emb[:, :dim], core), rtol=1e-3, atol=1e-3
    )
    write_folder(tmp_path / "new", fx.new_labels, SHOTS, seed=31)
    batch = tmp_path / "b.npz"
    cli(home, "prepare", str(tmp_path / "new"), "-o", str(batch), "--model", str(package))
    cli(home, "update", str(batch), "--model", str(package), "--seed", "0", "--force")
    answers = predictions(home, fx.name, old)
    assert all(r["top"][0]["label"] in fx.labels for r in answers.values())

    partial = tmp_path / "partial"
    (partial / fx.labels[0]).mkdir(parents=True)
    for f in (old / fx.labels[0]).iterdir():
        (partial / fx.labels[0] / f.name).write_bytes(f.read_bytes())
    other = tmp_path / "pkg-partial"
    cli(
        home,
        "make-updatable",
        str(fx.path),
        "-o",
        str(other),
        *fx.make_updatable_args(),
        "--examples",
        str(partial),
    )
    assert "own_examples" not in load_package(other).manifest.training["brought"]["gate"]

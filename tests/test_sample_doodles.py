"""The sample doodle generator and the pretraining script of the bundled model."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from mlpersonalize import _ort
from mlpersonalize.images import ImageConstraint, preprocess
from mlpersonalize.sample import doodles

CONSTRAINT = ImageConstraint(width=28, height=28)


def test_named_and_novel_labels_are_many_and_disjoint() -> None:
    assert len(doodles.NAMED_LABELS) >= 40
    assert len(doodles.NOVEL_LABELS) >= 15
    assert not set(doodles.NAMED_LABELS) & set(doodles.NOVEL_LABELS)
    assert not any(
        label.startswith(doodles.PROC_PREFIX) for label in doodles.NAMED_LABELS + doodles.NOVEL_LABELS
    )


@pytest.mark.parametrize("label", [*doodles.NAMED_LABELS, *doodles.NOVEL_LABELS, "proc-0", "proc-1234"])
def test_every_label_renders_a_visible_drawing(label: str) -> None:
    for n in range(3):
        image = doodles.render(label, doodles.sample_rng(label, n, seed=0), size=96)
        assert image.size == (96, 96)
        pixels = preprocess(image, CONSTRAINT)
        assert pixels.shape == (28, 28, 1)
        assert (pixels > 100).sum() >= 15, f"{label} drawing {n} is (nearly) empty"


def test_drawings_are_deterministic_by_seed_and_vary_between_samples() -> None:
    first, ids = doodles.make_dataset(["star", "key", "proc-7"], 3, seed=5, constraint=CONSTRAINT)
    again, _ = doodles.make_dataset(["star", "key", "proc-7"], 3, seed=5, constraint=CONSTRAINT)
    other, _ = doodles.make_dataset(["star", "key", "proc-7"], 3, seed=6, constraint=CONSTRAINT)
    assert first.shape == (9, 28, 28, 1) and first.dtype == np.uint8
    assert ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first[0], first[1])


def test_worker_processes_do_not_change_the_dataset() -> None:
    gc.collect()  # the workers are forked: not with threads that garbage of earlier tests holds
    labels = ["circle", "house", "umbrella", "proc-3", "proc-4"]
    single, _ = doodles.make_dataset(labels, 2, seed=1, constraint=CONSTRAINT, workers=1)
    double, _ = doodles.make_dataset(labels, 2, seed=1, constraint=CONSTRAINT, workers=2)
    assert np.array_equal(single, double)


def test_procedural_classes_have_fixed_distinct_templates() -> None:
    a = doodles.procedural_template(11)
    b = doodles.procedural_template(11)
    assert all(np.array_equal(pa, pb) for (_, pa), (_, pb) in zip(a, b, strict=True))
    assert doodles.procedural_labels(3, start=10) == ["proc-10", "proc-11", "proc-12"]
    with pytest.raises(KeyError):
        doodles.render("no such doodle", np.random.default_rng(0))


def test_write_folder_lays_out_label_folders(tmp_path: Path) -> None:
    paths = doodles.write_folder(tmp_path, ["heart", "cup"], 3, seed=0, size=64)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        "cup/0.png",
        "cup/1.png",
        "cup/2.png",
        "heart/0.png",
        "heart/1.png",
        "heart/2.png",
    ]


@pytest.mark.skipif(
    not _ort.has_training(),
    reason="needs the ort engine: onnxruntime-training-cpu is not installed for this Python",
)
def test_quick_pretraining_writes_a_package(tmp_path: Path) -> None:
    from mlpersonalize.sample import pretrain

    out = tmp_path / "doodles"
    assert pretrain.main(["--quick", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["labels"]) == list(doodles.NAMED_LABELS)
    assert "heldout_accuracy" in manifest["metrics"]
    assert not set(manifest["labels"]) & set(doodles.NOVEL_LABELS)


def test_sample_command_writes_drawings_and_prints_their_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlpersonalize.sample.__main__ import main

    assert main(["--out", str(tmp_path), "--per-label", "2", "umbrella", "smiley face"]) == 0
    printed = capsys.readouterr().out.split("\n")
    assert printed[:4] == [
        str(tmp_path / label / f"{n}.png") for label in ("umbrella", "smiley face") for n in (0, 1)
    ]
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "no such doodle"])


@pytest.mark.parametrize(
    "char",
    # digits of several scripts, number forms, CJK numerals
    ["7", "٣", "७", "７", "Ⅻ", "①", "²", "三", "〇", "½"],  # fmt: skip
)
def test_no_digit_or_number_is_ever_a_pretraining_glyph(char: str) -> None:
    from mlpersonalize.sample import glyphs

    assert not glyphs.is_allowed(char)


@pytest.mark.parametrize("char", ["O", "l", "S", "Z", "a", "Ж", "ש", "あ", "★"])
def test_letters_and_symbols_may_be_pretraining_glyphs(char: str) -> None:
    from mlpersonalize.sample import glyphs

    assert glyphs.is_allowed(char)


def test_no_doodle_template_is_a_digit() -> None:
    """Pretraining uses no digits: no named, novel or template label names or looks like one."""
    digit_words = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "digit"}
    for label in (*doodles.NAMED_LABELS, *doodles.NOVEL_LABELS):
        assert not any(ch.isdigit() for ch in label), label
        assert not set(label.lower().split()) & digit_words, label


def _glyphs_ready():  # type: ignore[no-untyped-def]
    pytest.importorskip("fontTools")
    pytest.importorskip("skimage")
    from mlpersonalize.sample import glyphs

    if glyphs.missing_packages():
        pytest.skip("font packages missing: " + " ".join(glyphs.missing_packages()))
    return glyphs


def test_glyph_classes_are_many_scripts_and_no_digits() -> None:
    glyphs = _glyphs_ready()
    classes = glyphs.glyph_classes(600, seed=0)
    chars = [c for c, _ in classes]
    assert len(set(chars)) == 600
    assert all(glyphs.is_allowed(c) for c in chars)
    import unicodedata

    scripts = {unicodedata.name(c, "?").split()[0] for c in chars}
    assert len(scripts) >= 20  # many writing systems, not only Latin
    assert classes == glyphs.glyph_classes(600, seed=0)


def test_glyph_drawings_are_deterministic_and_visible() -> None:
    glyphs = _glyphs_ready()
    classes = glyphs.glyph_classes(8, seed=3)
    a, ids = glyphs.make_dataset(classes, 3, seed=1, constraint=CONSTRAINT)
    b, _ = glyphs.make_dataset(classes, 3, seed=1, constraint=CONSTRAINT, workers=2)
    assert a.shape == (24, 28, 28, 1) and list(ids[:4]) == [0, 0, 0, 1]
    assert np.array_equal(a, b)
    assert (a.reshape(24, -1).max(axis=1) > 128).all()  # light strokes on dark, every drawing inked


def test_torch_pretraining_is_deterministic(tmp_path: Path) -> None:
    """`make sample-model`'s engine: the same configuration gives the same model bytes."""
    pytest.importorskip("torch")
    glyphs = _glyphs_ready()
    from mlpersonalize.sample import pretrain

    args = ["--quick", "--set", "engine=torch", "--set", "glyph_classes=20", "--set", "per_glyph=3"]
    assert glyphs.glyph_classes(20, 0)
    assert pretrain.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert pretrain.main([*args, "--out", str(tmp_path / "b")]) == 0
    for name in ("backbone.onnx", "head.onnx", "model.onnx", "exemplars.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["training"]["engine"].startswith("torch")


def test_torch_experiments_train_and_the_rows_of_every_class_are_saved(tmp_path: Path) -> None:
    """The levers of docs/backbone-experiments.md's fourth session run, and ``--rows`` saves every
    pretraining class's row (the named labels first, as benchmarks/open_set_levers.py reads them)."""
    pytest.importorskip("torch")
    _glyphs_ready()
    from mlpersonalize.sample import pretrain

    args = ["--quick", "--set", "engine=torch", "--set", "glyph_classes=10", "--set", "per_glyph=3"]
    rows = tmp_path / "rows.npy"
    extra = ["--set", "affine=10", "--set", "rotation_aux=0.5", "--rows", str(rows)]
    assert pretrain.main([*args, *extra, "--out", str(tmp_path / "m")]) == 0
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["training"]["affine"] == 10 and manifest["training"]["rotation_aux"] == 0.5
    saved = np.load(rows)
    assert saved.shape == (manifest["training"]["classes"], pretrain.QUICK.shape.embedding)
    head = onnx.numpy_helper.to_array(
        next(i for i in onnx.load(str(tmp_path / "m" / "head.onnx")).graph.initializer if i.dims[0] == 43)
    )
    unit = saved[:43] / np.linalg.norm(saved[:43], axis=1, keepdims=True)
    assert np.allclose(head, unit, atol=1e-3)


def test_deeper_blocks_build_the_graph_the_torch_engine_trains() -> None:
    """Extra convolutions per block (Shape.convs) reach the ONNX backbone, computed as in training."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F  # noqa: N812

    from mlpersonalize.sample import network

    shape = network.Shape((4, 8, 8), 16, convs=(1, 2, 3))
    weights = network.init_weights(shape, 5, np.random.default_rng(0))
    assert network.blocks(weights) == [["conv1"], ["conv2", "conv2_1"], ["conv3", "conv3_1", "conv3_2"]]
    backbone = network.build({k: v for k, v in weights.items() if k != "head.w"}, with_head=False)
    assert sum(node.op_type == "Conv" for node in backbone.graph.node) == 6
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    got = _ort.inference_session(backbone.SerializeToString()).run(["embedding"], {"image": x})[0]
    t = torch.from_numpy(x)
    for names in network.blocks(weights):
        for name in names:
            w, b = torch.from_numpy(weights[f"{name}.w"]), torch.from_numpy(weights[f"{name}.b"])
            t = F.relu(F.conv2d(t, w, b, padding=1))
        t = F.max_pool2d(t, 2)
    e = F.linear(t.flatten(1), torch.from_numpy(weights["fc.w"]), torch.from_numpy(weights["fc.b"]))
    assert np.allclose(got, F.normalize(e, dim=1).numpy(), atol=1e-5)


def test_pretraining_options_reach_the_config_and_bad_ones_are_refused(tmp_path: Path) -> None:
    from mlpersonalize.sample import pretrain

    seen = []
    original = pretrain.build
    try:
        pretrain.build = lambda cfg, out, rows=None: seen.append(cfg) or {}  # type: ignore[assignment]
        argv = ["--quick", "--no-package", "--set", "margin=0.25", "--set", "shape=8,16,24,40"]
        assert pretrain.main([*argv, "--set", "convs=1,2,2"]) == 0
    finally:
        pretrain.build = original  # type: ignore[assignment]
    cfg = seen[0]
    assert cfg.margin == 0.25 and cfg.shape.channels == (8, 16, 24) and cfg.shape.embedding == 40
    assert cfg.shape.convs == (1, 2, 2)
    # affine and rotation_aux are torch-engine experiments: refused on the onnxruntime engine
    for bad in (
        "shape=8,16,24",
        "convs=1,0,2",
        "shape=a,b,c,d",
        "no_such_field=1",
        "affine=10",
        "rotation_aux=0.5",
    ):
        with pytest.raises(SystemExit) as exc:
            pretrain.main(["--quick", "--no-package", "--set", bad])
        assert exc.value.code == 2


def test_a_wider_pen_draws_heavier_glyph_strokes() -> None:
    glyphs = _glyphs_ready()
    classes = glyphs.glyph_classes(6, seed=0)
    thin, _ = glyphs.make_dataset(classes, 8, seed=0, constraint=CONSTRAINT)
    wide, _ = glyphs.make_dataset(classes, 8, seed=0, constraint=CONSTRAINT, pen_max=0.15)
    assert wide.mean() > thin.mean() * 1.1

"""Drawing-style variants (mlpersonalize.augment): deterministic, on the canvas, the ink kept."""

from __future__ import annotations

import numpy as np

from benchmarks.augment import variants


def ring(side: int = 28, ink: str = "light") -> np.ndarray:
    """A ring drawn with a 3-pixel pen, as the preprocessing gives a drawing: [H, W, 1] uint8."""
    ys, xs = np.mgrid[0:side, 0:side]
    r = np.hypot(xs - (side - 1) / 2, ys - (side - 1) / 2)
    plane = np.where(np.abs(r - side * 0.3) <= 1.5, 255, 0).astype(np.uint8)
    return (plane if ink == "light" else 255 - plane)[:, :, None]


def test_the_same_drawing_gives_the_same_variants_wherever_it_sits_in_a_batch() -> None:
    a, b = ring(), np.roll(ring(), 3, axis=1)
    first = variants(np.stack([a, b]), 4, seed=7)
    second = variants(np.stack([b, a]), 4, seed=7)
    assert first.shape == (8, 28, 28, 1) and first.dtype == np.uint8
    assert np.array_equal(first[:4], second[4:]) and np.array_equal(first[4:], second[:4])
    assert not np.array_equal(first, variants(np.stack([a, b]), 4, seed=8))  # the seed counts


def test_variants_differ_from_the_drawing_but_keep_its_ink_on_the_canvas() -> None:
    original = ring()
    out = variants(original[None], 6, seed=0)
    ink = original.astype(float).sum()
    for v in out:
        assert not np.array_equal(v, original)
        assert 0.2 * ink < v.astype(float).sum() < 2.5 * ink  # moved, bent, pen changed: not lost
        assert v[0].max() < 128 and v[-1].max() < 128  # the margin stays ground
    # as drawn, a light-on-dark drawing: the corners (far from the ring) stay dark
    assert out[:, :3, :3].max() == 0


def test_dark_ink_is_moved_as_strokes_on_a_white_ground() -> None:
    dark = variants(ring(ink="dark")[None], 3, seed=1, ink="dark")
    light = variants(ring()[None], 3, seed=1)
    assert dark[:, :3, :3].min() == 255  # the ground filled in white, not black
    # the same strokes either way: a drawing's variants do not depend on its ink colour's seed bytes
    assert np.abs((255 - dark.astype(int)).sum() - light.astype(int).sum()) < 0.5 * light.astype(int).sum()


def test_drawings_joining_the_calibration_only_move_the_taught_labels_thresholds_alone() -> None:
    """``personalize_rows``' ``calibration_extra`` (what ``quality_rows --part augment`` measures
    with): the rows, the training and the exemplar memory are those of the update without it."""
    from benchmarks.common import BUNDLED
    from benchmarks.quality_rows import base_view, update_once
    from mlpersonalize.embedding import embed
    from mlpersonalize.params import UpdateParams
    from mlpersonalize.sample.doodles import make_dataset

    view = base_view(BUNDLED)
    constraint = view.manifest.constraint
    taught = ["umbrella", "key"]
    pixels, y = make_dataset(taught, 3, seed=5, constraint=constraint)
    emb = embed(BUNDLED / "backbone.onnx", pixels, constraint)
    names = [taught[int(k)] for k in y]
    extra = embed(BUNDLED / "backbone.onnx", variants(pixels, 4, seed=0, ink=constraint.ink), constraint)
    plain, out = update_once(view, emb, names, UpdateParams(seed=0))
    joined, out_extra = update_once(
        view,
        emb,
        names,
        UpdateParams(seed=0),
        calibration_extra=(extra, [n for n in names for _ in range(4)]),
    )
    assert np.array_equal(out.head.weight, out_extra.head.weight)
    assert np.array_equal(out.exemplar_embeddings, out_extra.exemplar_embeddings)
    assert out.history["selection"] == out_extra.history["selection"]
    before = np.array(plain.manifest.unknown["thresholds"])
    after = np.array(joined.manifest.unknown["thresholds"])
    new = [plain.manifest.labels.index(n) for n in taught]
    assert np.all(np.abs(after[new] - before[new]) > 1e-6)  # the variants were counted

"""Shared fixtures: an isolated data dir for every test, and small model packages built on the spot.

* ``tiny_model``: a package over a fixed pooled-pixel backbone with random rows (fast, knows nothing).
* ``doodle_model``: the same backbone with rows and exemplars imprinted from rendered drawings of
  OLD, so updates with drawings of NEW really learn and really can forget. Built once per session
  (``doodle_template``); each test gets a fresh copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlpersonalize.batch import Batch, save_batch
from mlpersonalize.embedding import embed
from mlpersonalize.heads.cosine import imprint
from mlpersonalize.images import ImageConstraint
from mlpersonalize.package import create_package, load_package
from mlpersonalize.sample.doodles import make_dataset

CONSTRAINT = ImageConstraint(28, 28)
OLD = ["circle", "square", "cross", "triangle", "heart", "star"]  # what doodle_model knows
NEW = ["umbrella", "key", "envelope"]  # what updates teach it


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own MLPERSONALIZE_HOME and no model override from the environment."""
    home = tmp_path / "home"
    monkeypatch.setenv("MLPERSONALIZE_HOME", str(home))
    monkeypatch.delenv("MLPERSONALIZE_MODEL", raising=False)
    monkeypatch.delenv("MLPERSONALIZE_FAULT", raising=False)
    return home


def pooled_pixel_backbone(size: int = 28, dim: int = 64, seed: int = 0) -> onnx.ModelProto:
    """A tiny fixed backbone: average-pool the drawing to 7x7, random projection, L2-normalise.

    Not a good feature extractor, but a real ONNX graph that separates simple shapes, so tests
    of the package, update and predict paths run in milliseconds without the bundled model.
    """
    rng = np.random.default_rng(seed)
    pooled = (size // 4) ** 2
    weight = (rng.standard_normal((pooled, dim)) / np.sqrt(pooled)).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["image"], ["small"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Flatten", ["small"], ["flat"]),
        helper.make_node("MatMul", ["flat", "proj"], ["raw"]),
        helper.make_node("LpNormalization", ["raw"], ["embedding"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_backbone",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])],
        [
            numpy_helper.from_array(weight, "proj"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def make_tiny_package(
    directory: Path,
    labels: list[str] | None = None,
    seed: int = 0,
    *,
    weight: np.ndarray | None = None,
    exemplars: dict[str, np.ndarray] | None = None,
) -> Path:
    """A package over ``pooled_pixel_backbone``; head rows and exemplars random unless given."""
    labels = labels or ["circle", "square", "cross"]
    backbone = pooled_pixel_backbone(seed=seed)
    rng = np.random.default_rng(seed)
    if weight is None:
        weight = rng.standard_normal((len(labels), 64)).astype(np.float32)
    if exemplars is None:
        exemplars = {label: rng.standard_normal((5, 64)).astype(np.float32) for label in labels}
    create_package(
        directory,
        backbone=backbone,
        head_weight=weight,
        labels=labels,
        constraint=ImageConstraint(28, 28),
        logit_scale=16.0,
        exemplars=exemplars,
        name="tiny",
        description="Test model: pooled pixels and a random projection.",
        author="mlpersonalize tests",
        license="MIT",
        metrics={},
        training={"note": "built by tests/conftest.py"},
    )
    return directory


@pytest.fixture(scope="session")
def tiny_model_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def tiny_model(tiny_model_template: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the tiny package for one test."""
    return Path(shutil.copytree(tiny_model_template, tmp_path / "tiny"))


def build_doodle_package(directory: Path) -> Path:
    """A tiny model that really knows OLD: head and exemplars imprinted from rendered drawings."""
    pixels, ids = make_dataset(OLD, 20, seed=1, constraint=CONSTRAINT)
    emb = embed(pooled_pixel_backbone().SerializeToString(), pixels, CONSTRAINT)
    return make_tiny_package(
        directory,
        OLD,
        weight=imprint(emb, ids, list(range(len(OLD)))),
        exemplars={label: emb[ids == i] for i, label in enumerate(OLD)},
    )


def write_batch(path: Path, package: Path, labels: list[str], per_label: int = 3, seed: int = 7) -> Path:
    """A batch file of ``per_label`` rendered drawings per label, made for ``package``."""
    manifest = load_package(package).manifest
    pixels, ids = make_dataset(labels, per_label, seed=seed, constraint=manifest.constraint)
    names = tuple(np.array(labels)[ids].tolist())
    save_batch(path, Batch.from_pixels(pixels, names, manifest), force=True)
    return path


@pytest.fixture(scope="session")
def doodle_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_doodle_package(tmp_path_factory.mktemp("doodle") / "tiny")


@pytest.fixture
def doodle_model(doodle_template: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of the doodle package for one test."""
    return Path(shutil.copytree(doodle_template, tmp_path / "original"))

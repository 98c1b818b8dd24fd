"""Shared fixtures: an isolated data dir for every test, and small model packages built on the spot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlpersonalize.images import ImageConstraint
from mlpersonalize.package import create_package


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
    import shutil

    target = tmp_path / "tiny"
    shutil.copytree(tiny_model_template, target)
    return target

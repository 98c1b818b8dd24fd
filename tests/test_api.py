"""The public Python API: prepare -> update -> load_model(...).predict, as a user's script runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CONSTRAINT, NEW, OLD
from PIL import Image

import mlpersonalize
from mlpersonalize import store
from mlpersonalize.errors import RejectedError, UsageError
from mlpersonalize.sample.doodles import make_dataset


def _drawings(folder: Path, labels: list[str], per_label: int, seed: int) -> Path:
    pixels, ids = make_dataset(labels, per_label, seed=seed, constraint=CONSTRAINT)
    for i, (image, k) in enumerate(zip(pixels, ids, strict=True)):
        (folder / labels[k]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[:, :, 0]).save(folder / labels[k] / f"{i}.png")
    return folder


def test_prepare_update_predict(doodle_model: Path, tmp_path: Path) -> None:
    data = _drawings(tmp_path / "data", NEW[:2], 3, seed=7)
    report = mlpersonalize.prepare(data, tmp_path / "batch.npz", doodle_model)
    assert report.to_dict()["examples"] == 6

    events: list[str] = []
    result = mlpersonalize.update(
        tmp_path / "batch.npz", doodle_model, on_event=lambda e: events.append(e["event"])
    )
    assert set(result.labels_added) == set(NEW[:2]) and result.version == "000001"
    assert events[0] == "began" and events[-1] == "completed" and "epoch_end" in events
    assert store.current_version(store.model_home("tiny")) == "000001"

    model = mlpersonalize.load_model("tiny")  # a personalized model by its name
    assert model.path == result.model.resolve() and model.labels == tuple(OLD) + result.labels_added
    test = _drawings(tmp_path / "test", NEW[:2], 10, seed=99)
    predictions = model.predict(sorted(test.iterdir()))
    right = [p.label == Path(p.file).parent.name for p in predictions]
    assert len(predictions) == 20 and np.mean(right) >= 0.7
    # Pixels that already fit the model give the same answers as their files.
    pixels, _ = make_dataset(NEW[:2], 2, seed=5, constraint=CONSTRAINT)
    from_pixels = model.predict(pixels)
    assert [p.file for p in from_pixels] == ["#0", "#1", "#2", "#3"]
    ids = model.predict_embeddings(model.embed(pixels))
    assert [p.label for p in from_pixels] == [model.labels[i] for i in ids]
    assert json.dumps([p.to_dict() for p in from_pixels])


def test_update_runs_blas_on_one_thread_and_gives_the_pool_back(doodle_model: Path, tmp_path: Path) -> None:
    """A program calling update has numpy loaded with its BLAS pool: the update runs it on one
    thread (as the command does), then the program gets its pool back; a size the user chose in
    the environment is left alone. In a child process: sizing the pool starts OpenBLAS threads
    that would outlive the test in this one (and later tests fork)."""
    mlpersonalize.prepare(_drawings(tmp_path / "data", NEW[:2], 3, seed=7), tmp_path / "b.npz", doodle_model)
    program = (
        "import sys, json, mlpersonalize\n"
        "from threadpoolctl import threadpool_info, threadpool_limits\n"
        "import numpy\n"
        "def blas(): return sorted({int(i['num_threads']) for i in threadpool_info() if i['user_api'] == 'blas'})\n"
        "if not blas(): print(json.dumps(None)); sys.exit()\n"
        "seen = set()\n"
        "with threadpool_limits(limits=2, user_api='blas'):\n"
        "    mlpersonalize.update(sys.argv[1], sys.argv[2], output=sys.argv[3],\n"
        "                         on_event=lambda e: seen.update(blas()))\n"
        "    print(json.dumps({'during': sorted(seen), 'after': blas()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    runs = []
    for i, extra in enumerate(({}, {"OPENBLAS_NUM_THREADS": "2"})):  # the second: the user's choice
        args = [
            sys.executable,
            "-c",
            program,
            str(tmp_path / "b.npz"),
            str(doodle_model),
            str(tmp_path / f"o{i}"),
        ]
        done = subprocess.run(args, env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout))
    if runs[0] is None:
        pytest.skip("numpy here has no BLAS that threadpoolctl can size")
    assert runs[0] == {"during": [1], "after": [2]}
    assert runs[1] == {"during": [2], "after": [2]}


def test_api_errors_are_the_tools_errors(doodle_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="give at least one batch"):
        mlpersonalize.update([], doodle_model)
    data = _drawings(tmp_path / "data", ["circle", "square", "cross"], 6, seed=11)
    for old, new in (("circle", "ring"), ("square", "box"), ("cross", "plus")):
        (data / old).rename(data / new)  # look-alikes of known labels: they cost those accuracy
    mlpersonalize.prepare(data, tmp_path / "b.npz", doodle_model)
    with pytest.raises(RejectedError) as caught:
        mlpersonalize.update(tmp_path / "b.npz", doodle_model, max_drop=0.0, output=tmp_path / "out")
    assert caught.value.exit_code == 6 and not (tmp_path / "out").exists()


def test_import_is_cheap_and_exposes_the_api() -> None:
    code = (
        "import sys, mlpersonalize\n"
        "print(sorted(m for m in ('numpy', 'onnx', 'onnxruntime') if m in sys.modules))\n"
        "print(sorted(mlpersonalize.__all__))\n"
        "from mlpersonalize.prepare import scan\n"
        "print(callable(mlpersonalize.prepare) and mlpersonalize.prepare.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "[]",
        "['Model', '__version__', 'load_model', 'prepare', 'update']",
        "mlpersonalize.api",
    ]


def test_a_program_using_the_api_leaves_no_onnx_runtime_telemetry_behind(
    doodle_model: Path, tmp_path: Path
) -> None:
    """The stock onnxruntime 1.32 for Linux writes a telemetry session file into $TMPDIR at import
    and looks its collector up in DNS; mlpersonalize turns that off before it imports onnxruntime
    (no network at run time). A program that only imports mlpersonalize gets no such file."""
    image = _drawings(tmp_path / "data", NEW[:1], 1, seed=3)
    temp = tmp_path / "tmp"
    temp.mkdir()
    script = (
        "import sys, mlpersonalize\n"
        "rows = list(mlpersonalize.load_model(sys.argv[1]).predict(sys.argv[2]))\n"
        "assert len(rows) == 1 and rows[0].label, rows\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["TMPDIR"] = str(temp)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(doodle_model), str(image)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in temp.iterdir()) == []

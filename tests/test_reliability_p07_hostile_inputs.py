"""P7: hostile images, batch files, manifests and label files cannot exhaust memory or run code.

All six attacks run in one subprocess under a 2 GiB address-space limit, so a regression fails
fast (MemoryError) instead of swapping the machine: each must be a clear InputError subclass and
nothing may be written. (Without the limit: test_batch.py and test_prepare.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from reliability_kit import ROOT
from test_batch import header, hostile_npz, pickled_labels_npz
from test_prepare import png_bomb

HOSTILE = """
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from mlpersonalize import images
from mlpersonalize.batch import load_batch
from mlpersonalize.byo import read_labels
from mlpersonalize.errors import BatchError, ImageError, InputError, ModelError
from mlpersonalize.images import ImageConstraint
from mlpersonalize.manifest import read_manifest
out = {}
for path in sys.argv[1:]:
    try:
        if path.endswith(".png"):
            images.load(Path(path), ImageConstraint(28, 28))
        elif path.endswith(".txt"):
            read_labels(Path(path), 2)
        elif Path(path).is_dir():
            read_manifest(Path(path))
        else:
            load_batch(Path(path))
        out[path] = "loaded"
    except (ImageError, BatchError, InputError, ModelError) as exc:
        out[path] = type(exc).__name__ + ": " + str(exc)
print(json.dumps(out))
"""


def test_p7_hostile_inputs_under_an_address_space_limit(tmp_path: Path) -> None:
    zeros = header((200_000, 28, 28, 1))  # 150 MiB of zeros: far over the 100x inflation ratio
    bomb_member = zeros + bytes(200_000 * 784)
    files = {
        "flat.png": png_bomb(20000, 20000),
        "huge_shape.npz": hostile_npz(header((10**12,)) + b"\0" * 64),
        "zip_bomb.npz": hostile_npz(bomb_member, zipfile.ZIP_DEFLATED),
        "pickle.npz": pickled_labels_npz(),
    }
    del bomb_member
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "pkg").mkdir()  # 3 GiB sparse files: read whole, they would not fit under the limit
    for name in ("pkg/manifest.json", "labels.txt"):
        with (tmp_path / name).open("wb") as handle:
            handle.truncate(3 << 30)
    files = {**files, "labels.txt": b"", "pkg": b""}
    before = sorted(p.name for p in tmp_path.iterdir())
    result = subprocess.run(
        [sys.executable, "-c", HOSTILE, *(str(tmp_path / n) for n in files)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    out = {Path(k).name: v for k, v in json.loads(result.stdout).items()}
    assert out["flat.png"].startswith("ImageError") and "refused before decoding" in out["flat.png"]
    assert out["huge_shape.npz"].startswith("BatchError") and "refused" in out["huge_shape.npz"]
    assert out["zip_bomb.npz"].startswith("BatchError") and "would inflate" in out["zip_bomb.npz"]
    assert out["pickle.npz"].startswith("BatchError") and "dtype" in out["pickle.npz"]
    assert out["labels.txt"].startswith("InputError") and "larger than" in out["labels.txt"]
    assert out["pkg"].startswith("ModelError") and "larger than" in out["pkg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_p7_prepare_of_a_bomb_writes_nothing(tmp_path: Path, tiny_model: Path) -> None:
    from reliability_kit import cli

    (tmp_path / "data" / "circle").mkdir(parents=True)
    (tmp_path / "data" / "circle" / "flat.png").write_bytes(png_bomb(20000, 20000))
    result = cli(["prepare", str(tmp_path / "data"), "-o", str(tmp_path / "b.npz"), "-m", str(tiny_model)])
    assert result.returncode == 3 and result.stderr.count("Error:") == 1
    assert "holds no usable image" in result.stderr and not (tmp_path / "b.npz").exists()

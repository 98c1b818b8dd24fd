"""P1: a reader sees the whole old model or the whole new one, never a mix and never "no model".

A reader process loops: resolve the model (store.resolve_model), load it with every hash
verified, predict one image; a writer process runs several updates and a rollback meanwhile.
(test_update.py's ``test_readers_never_fail_while_updates_swap`` loads only, with no rollback.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw
from reliability_kit import NEW, ROOT, personalized, write_batch

READER = """
import json, sys, time
from pathlib import Path
from mlpersonalize.store import resolve_model
from mlpersonalize.package import load_package
from mlpersonalize.inference import Classifier
home, image, stop = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
seen, n, end = {}, 0, time.time() + 15
while not stop.exists() and time.time() < end:
    resolved = resolve_model(home)
    package = load_package(resolved.path)  # ModelError on a missing or mixed file
    (result,) = Classifier(package).classify([image])
    assert not result.error, result.error
    labels = package.manifest.labels
    assert result.label in labels and len(result.top) == min(3, len(labels))
    seen[resolved.path.name] = len(package.manifest.history)
    n += 1
print(json.dumps({"loads": n, "seen": seen}))
"""

WRITER = """
import sys
from pathlib import Path
from mlpersonalize import store, updater
home, batches, stop = Path(sys.argv[1]), [Path(p) for p in sys.argv[3:]], Path(sys.argv[2])
for i, batch in enumerate(batches):
    updater.update([batch], updater.UpdateOptions(model=home, epochs=1, keep=2))
    if i == 2:
        store.rollback(home)
stop.touch()
"""


def test_p1_readers_see_whole_versions_while_updates_and_a_rollback_swap(
    doodle_model: Path, tmp_path: Path
) -> None:
    home = personalized(doodle_model, tmp_path)
    # six updates, each its own drawings (the same drawings again would teach nothing: no version)
    batches = [str(write_batch(tmp_path / f"b{i}.npz", doodle_model, [NEW[i % 3]], seed=i)) for i in range(6)]
    image = tmp_path / "circle.png"
    drawing = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(drawing).ellipse((8, 8, 56, 56), outline=0, width=4)
    drawing.save(image)
    stop = tmp_path / "stop"
    run = [sys.executable, "-c"]
    reader = subprocess.Popen(
        [*run, READER, str(home), str(image), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    writer = subprocess.run(
        [*run, WRITER, str(home), str(stop), *batches], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    out, err = reader.communicate(timeout=60)
    assert writer.returncode == 0, writer.stderr
    assert reader.returncode == 0, err  # no ENOENT, no hash mismatch, no failed prediction
    report = json.loads(out)
    assert report["loads"] > 3 and len(report["seen"]) >= 2, report
    for version, history in report["seen"].items():  # each one a whole update (after rollback: fewer)
        assert 1 <= history <= int(version), report

"""Scaling of `mlpersonalize update` with the batch size, and cProfile of where the time goes."""

from __future__ import annotations

import cProfile
import io
import json
import pstats
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import Sizes, check, cli, copy_model, distinct_copies, run_child, write_batch

Log = Callable[[str], None]


def _tiled(data: Any, n: int) -> tuple[np.ndarray, list[str]]:
    """n examples: the generated drawings repeated, every copy distinct (common.distinct_copies;
    the 1-pixel rolls used before repeated some copies exactly, which update leaves out)."""
    reps = -(-n // len(data.ids))
    ids = np.tile(data.ids, reps)[:n]
    return distinct_copies(data.pixels, n), data.label_names(ids)


def run(data: Any, sizes: Sizes, work: Path, log: Log) -> dict[str, Any]:
    """Wall time and child peak RSS of `update` (default epochs) at each size.

    torch is hidden from the child, so memory is the tool's own (with torch installed, importing
    onnxruntime alone takes ~300 MB more; see the start-up section).
    """
    rows = []
    inspect = cli("inspect", "--model", str(data.package.path), "--json", hide_torch=True)
    idle = check(run_child(inspect), "inspect")
    for n in sizes.scaling:
        pixels, labels = _tiled(data, n)
        batch = write_batch(work / f"scale-{n}.npz", pixels, labels, data.manifest)
        copy = copy_model(data.package.path, work / f"scale-model-{n}")
        cmd = cli("update", str(batch), "--model", str(copy), "--json", "--force", hide_torch=True)
        run = check(run_child(cmd, env={"MLPERSONALIZE_HOME": str(work / f"home-scale-{n}")}), "update")
        done = json.loads(run.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "examples": n,
                "seconds": run.seconds,
                "peak_rss_mb": run.max_rss_mb,
                "batch_file_mb": batch.stat().st_size / 1e6,
                "guard_passed": done["guard"]["passed"],
            }
        )
        log(f"scaling: {n} examples {run.seconds:.2f} s, {run.max_rss_mb:.0f} MB")
    for row in rows:
        row["ms_per_example"] = 1000 * row["seconds"] / row["examples"]
    first, last = rows[0], rows[-1]
    growth = (last["seconds"] - first["seconds"]) / max(1, last["examples"] - first["examples"])
    return {
        "epochs": data.manifest.update_defaults.epochs,
        "rows": rows,
        "inspect_peak_rss_mb": idle.max_rss_mb,
        "marginal_ms_per_example": 1000 * growth,
        "memory_growth_mb": last["peak_rss_mb"] - first["peak_rss_mb"],
    }


def _top(profile: cProfile.Profile, key: str, limit: int = 14) -> list[dict[str, Any]]:
    stats = pstats.Stats(profile, stream=io.StringIO())
    stats.sort_stats(key)
    rows = []
    for func in stats.fcn_list[:limit]:  # type: ignore[attr-defined]
        cc, nc, tt, ct, _ = stats.stats[func]  # type: ignore[attr-defined]
        file, line, name = func
        short = f"{Path(file).parent.name}/{Path(file).name}:{line}({name})" if line else name
        rows.append({"function": short, "calls": nc, "tottime": round(tt, 4), "cumtime": round(ct, 4)})
    return rows


def profile_update(data: Any, n: int, work: Path) -> dict[str, Any]:
    """cProfile of updater.update in-process (n examples, default epochs, --output)."""
    from mlpersonalize.updater import UpdateOptions, update

    pixels, labels = _tiled(data, n)
    batch = write_batch(work / f"profile-{n}.npz", pixels, labels, data.manifest)
    out = work / f"profile-out-{n}"
    profile = cProfile.Profile()
    profile.enable()
    update([batch], UpdateOptions(model=data.package.path, output=out, force=True))
    profile.disable()
    total = pstats.Stats(profile).total_tt  # type: ignore[attr-defined]
    return {
        "examples": n,
        "seconds": total,
        "cumulative": _top(profile, "cumulative"),
        "self": _top(profile, "tottime"),
    }


def profile_prepare(data: Any, files_dir: Path, work: Path) -> dict[str, Any]:
    """cProfile of prepare() with one worker (so the decode work is visible in-process)."""
    from mlpersonalize.prepare import prepare

    profile = cProfile.Profile()
    profile.enable()
    prepare([files_dir], work / "profile-prepare.npz", data.manifest, force=True, workers=1)
    profile.disable()
    total = pstats.Stats(profile).total_tt  # type: ignore[attr-defined]
    return {"seconds": total, "cumulative": _top(profile, "cumulative", 20), "self": _top(profile, "tottime")}

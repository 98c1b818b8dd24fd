"""P6: old versions are deleted only after the new pointer is durable.

That prune never deletes the version `current` names is in test_store.py.

The order (home fsynced after the swap, only then the old versions renamed away) is checked in
test_reliability_p02_durability_order.py (``test_p2_update_writes_syncs_swaps_then_syncs_the_parent``,
step 4); here the process dies at the start of cleanup and at the swap, with keep=1.
"""

from __future__ import annotations

import signal
from pathlib import Path

from reliability_kit import NEW, assert_healthy, cli, personalized, stale_entries, write_batch

from mlpersonalize import store, updater


def test_p6_the_version_current_names_survives_a_kill_at_the_start_of_cleanup(
    doodle_model: Path, tmp_path: Path
) -> None:
    """The kills at update:before-swap and update:after-swap (keep=1) are in test_update.py."""
    home = personalized(doodle_model, tmp_path)
    batch = write_batch(tmp_path / "b.npz", doodle_model, NEW[1:2])
    killed = cli(
        ["update", str(batch), "--model", str(home), "--keep", "1", "--epochs", "2"],
        {"MLPERSONALIZE_FAULT": "update:during-cleanup"},
    )
    assert killed.returncode == -signal.SIGKILL
    assert store.current_version(home) == "000002"  # the new pointer is in place...
    assert store.list_versions(home) == ["000001", "000002"]  # ...and nothing was deleted yet
    assert_healthy(home)
    more = write_batch(tmp_path / "c.npz", doodle_model, NEW[1:2], seed=8)  # new drawings: a new version
    again = updater.update([more], updater.UpdateOptions(model=home, keep=1, epochs=2))
    # keep=1, plus the version this run replaced (a reader may hold it) until the next run
    assert store.list_versions(home) == ["000002", again.version] and stale_entries(home) == []

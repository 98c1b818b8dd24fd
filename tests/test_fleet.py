"""Fleet personalization: the server's arithmetic, a whole round in one process (the device's
side through the same handlers the ClientApp runs), what every device message carries, and
that nothing outside mlpersonalize/fleet imports Flower."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlpersonalize import store
from mlpersonalize.batch import Batch, save_batch
from mlpersonalize.embedding import embed
from mlpersonalize.fleet import device
from mlpersonalize.fleet.aggregate import Contribution, aggregate
from mlpersonalize.heads.cosine import normalize
from mlpersonalize.manifest import BACKBONE_FILE
from mlpersonalize.package import load_package
from mlpersonalize.sample.doodles import make_dataset

GROUPS = (("umbrella", "key"), ("bell", "cup"), ("envelope", "anchor"))


# --- the server's arithmetic (no Flower needed) -------------------------------------------------


def test_rows_of_a_label_taught_on_several_devices_are_averaged_by_their_counts() -> None:
    a = Contribution(("x", "y"), np.array([[1, 0, 0], [0, 1, 0]], np.float32), (3, 1))
    b = Contribution(("x",), np.array([[0, 2, 0]], np.float32), (1,))  # not normalised: it is here
    head = aggregate([a, b])
    expected = normalize(np.array([[3 / 4, 1 / 4, 0]], np.float32))[0]
    assert head.labels == ("x", "y")
    np.testing.assert_allclose(head.rows[0], expected, atol=1e-6)
    np.testing.assert_allclose(head.rows[1], [0, 1, 0], atol=1e-6)  # taught on one device: its row
    assert head.counts == (4, 1) and head.devices == (2, 1)


def test_the_count_weighted_mean_of_imprinted_rows_is_the_fleet_wide_imprint() -> None:
    rng = np.random.default_rng(0)
    emb = [rng.standard_normal((n, 8)).astype(np.float32) for n in (2, 5)]
    rows = [normalize(normalize(e).mean(axis=0, keepdims=True)) for e in emb]
    head = aggregate([Contribution(("z",), r, (len(e),)) for r, e in zip(rows, emb, strict=True)])
    # Mean of normalised rows weighted by counts points where the normalised mean of all
    # examples' unit vectors points when each device's mean has the same length; check the
    # direction is between the two and closer to the device with more examples.
    cos = [float(head.rows[0] @ r[0]) for r in rows]
    assert cos[1] > cos[0] > 0


def test_labels_no_device_taught_this_round_are_the_plain_mean_and_keep_the_previous_order() -> None:
    a = Contribution(("old", "new"), np.array([[1, 0], [0, 1]], np.float32), (0, 2))
    b = Contribution(("old",), np.array([[0, 1]], np.float32), (0,))
    head = aggregate([b, a], order=("old",))
    assert head.labels == ("old", "new")
    np.testing.assert_allclose(head.rows[0], normalize(np.array([[0.5, 0.5]]))[0], atol=1e-6)


def test_contributions_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="one row and one count per label"):
        Contribution(("a", "b"), np.zeros((1, 4), np.float32), (1, 1))
    with pytest.raises(ValueError, match="different widths"):
        aggregate(
            [
                Contribution(("a",), np.ones((1, 4), np.float32), (1,)),
                Contribution(("a",), np.ones((1, 5), np.float32), (1,)),
            ]
        )
    with pytest.raises(ValueError, match="nothing to aggregate"):
        aggregate([])


# --- devices on their own stores ---------------------------------------------------------------


def make_devices(root: Path, groups: tuple[tuple[str, ...], ...] = GROUPS, shots: int = 3) -> list[Any]:
    """One DeviceConfig per group: its own MLPERSONALIZE_HOME and a pending batch of its labels."""
    manifest = load_package(store.bundled_model_path()).manifest
    configs = []
    for i, labels in enumerate(groups):
        pixels, ids = make_dataset(labels, shots, 11, manifest.constraint)
        pending = root / f"device-{i}" / "pending"
        pending.mkdir(parents=True)
        save_batch(pending / "drawings.npz", Batch.from_pixels(pixels, [labels[k] for k in ids], manifest))
        configs.append(device.DeviceConfig(pending=pending, home=root / f"device-{i}" / "home"))
    return configs


def current_labels(config: device.DeviceConfig) -> tuple[str, ...]:
    with device.device_home(config):
        _, _, package = device.working(config)
        return package.manifest.labels


def test_a_device_shares_rows_and_counts_of_its_labels_and_keeps_labels_with_too_few_examples(
    tmp_path: Path,
) -> None:
    (config,) = make_devices(tmp_path, (("umbrella", "key"),))
    manifest = load_package(store.bundled_model_path()).manifest
    pixels, _ = make_dataset(["bell"], 1, 3, manifest.constraint)
    save_batch(config.pending / "one.npz", Batch.from_pixels(pixels, ["bell"], manifest))
    report = device.train(config)
    c = report.contribution
    assert c is not None and report.labels_added == ("umbrella", "key", "bell")
    assert "bell" not in c.labels  # one drawing: its row would be that drawing's embedding
    assert dict(zip(c.labels, c.counts, strict=True))["umbrella"] == 3
    assert set(manifest.labels) <= set(c.labels)  # the original labels are the fleet's common ground
    assert c.rows.shape == (len(c.labels), manifest.embedding_dim)
    assert store.current_path(store.model_home()) is None  # training alone publishes nothing


def in_process_exchange(configs: list[device.DeviceConfig], sent: list[tuple[str, Any]]):
    """The Grid's part, in one process: each node's reply through the ClientApp's handler."""
    from mlpersonalize.fleet import client_app

    def exchange(kind: str, contents: dict[int, Any]) -> dict[int, Any]:
        replies = {}
        for node, content in contents.items():
            reply = client_app.handle(kind, configs[node], content)
            sent.append((kind, reply))
            replies[node] = reply
        return replies

    return exchange


@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two rounds over three devices in one process, with every message a device sent."""
    pytest.importorskip("flwr")
    from mlpersonalize.fleet.server_app import run_rounds

    root = tmp_path_factory.mktemp("fleet")
    configs = make_devices(root)
    sent: list[tuple[str, Any]] = []
    logged: list[dict[str, Any]] = []
    summary = run_rounds(in_process_exchange(configs, sent), [0, 1, 2], 2, 0.02, logged.append)
    return {"configs": configs, "sent": sent, "summary": summary, "logged": logged, "root": root}


def test_every_device_learns_every_label_taught_anywhere(fleet_run: dict[str, Any]) -> None:
    taught = {label for group in GROUPS for label in group}
    for config in fleet_run["configs"]:
        assert taught <= set(current_labels(config))
    rounds = fleet_run["summary"]["rounds"]
    assert [r["result"] for r in rounds] == ["offered", "offered"]
    assert all(len(r["adopted"]) == 3 and not r["kept_own"] for r in rounds)
    assert rounds[0]["taught"] == {label: 3 for label in taught}
    evaluation = rounds[0]["federated_evaluation"]
    assert evaluation["devices"] == 3 and evaluation["candidate"] > evaluation["current"]


def test_a_device_recognises_drawings_of_labels_it_never_saw(fleet_run: dict[str, Any]) -> None:
    from mlpersonalize.api import load_model

    config = fleet_run["configs"][0]
    with device.device_home(config):
        model = load_model(store.current_path(store.model_home()))
    others = [label for group in GROUPS[1:] for label in group]  # taught on the other devices only
    pixels, ids = make_dataset(others, 6, 5011, load_package(store.bundled_model_path()).manifest.constraint)
    predictions = model.predict(pixels, top_k=1, threshold=0.0)
    right = np.mean([p.label == others[k] for p, k in zip(predictions, ids, strict=True)])
    assert right >= 0.75, right


def test_adoption_is_a_version_with_history_and_rollback_steps_back(fleet_run: dict[str, Any]) -> None:
    config = fleet_run["configs"][1]
    with device.device_home(config):
        root = store.model_home()
        assert store.list_versions(root) == ["000001", "000002"]
        manifest = load_package(store.current_path(root)).manifest
        entry = manifest.history[-1]
        assert (
            entry["kind"] == "fleet" and entry["fleet_round"] == 2 and entry["replaced_version"] == "000001"
        )
        assert entry["accuracy"]["known_after"] >= entry["accuracy"]["known_before"] - 0.02
        store.rollback(root)
        assert store.current_version(root) == "000001"
        first = load_package(store.current_path(root)).manifest
        assert first.history[-1]["fleet_round"] == 1 and "umbrella" in first.labels


def test_no_image_pixel_array_or_embedding_leaves_a_device(fleet_run: dict[str, Any]) -> None:
    """Every message a device sent: float32 head rows (one per label named beside them), label
    names, counts, accuracies, a version id. No array of pixels, no file name, and no row that
    is one drawing's embedding."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    sent = fleet_run["sent"]
    assert {kind for kind, _ in sent} == {"train", "evaluate", "query"} and len(sent) == 18
    bundled = load_package(store.bundled_model_path())
    examples = []
    for config in fleet_run["configs"]:
        batch = np.load(config.pending / "drawings.npz", allow_pickle=False)
        pixels = batch["pixels"]
        examples.append(embed(bundled.path / BACKBONE_FILE, pixels, bundled.manifest.constraint))
    unit = normalize(np.concatenate(examples))
    taught = {label for group in GROUPS for label in group}
    allowed_text = set(bundled.manifest.labels) | taught
    for kind, content in sent:
        for name, record in content.items():
            if isinstance(record, ArrayRecord):
                assert list(record.keys()) == ["rows"], (kind, name)
                rows = record["rows"].numpy()
                assert rows.dtype == np.float32 and rows.ndim == 2 and rows.shape[1] == unit.shape[1]
                assert rows.shape[0] == len(content["config"]["labels"])
                # the closest a shared row comes to any single drawing's embedding
                assert float(np.max(normalize(rows) @ unit.T)) < 0.99, kind
            elif isinstance(record, ConfigRecord):
                for key, value in record.items():
                    values = value if isinstance(value, list) else [value]
                    for v in values:
                        assert isinstance(v, (str, int, float, bool)), (kind, key)
                        if isinstance(v, str) and key == "labels":
                            assert v in allowed_text
                        if isinstance(v, str):
                            assert ".npz" not in v and ".png" not in v and "/" not in v, (kind, key, v)
            else:
                assert isinstance(record, MetricRecord), (kind, name, type(record))
                assert all(isinstance(v, (int, float)) for v in record.values())


def test_a_device_whose_guard_refuses_the_head_keeps_its_own_and_says_why(tmp_path: Path) -> None:
    (config,) = make_devices(tmp_path, (("umbrella", "key"),))
    labels = current_labels(config)
    rng = np.random.default_rng(1)
    dim = load_package(store.bundled_model_path()).manifest.embedding_dim
    bad = rng.standard_normal((len(labels), dim)).astype(np.float32)  # rows that know nothing
    result = device.adopt(config, labels, bad)
    assert not result.adopted and result.version is None
    assert "kept this device's own model" in result.reason and "would fall" in result.reason
    with device.device_home(config):
        assert store.current_path(store.model_home()) is None


def test_the_core_and_every_other_command_never_import_flower() -> None:
    code = (
        "import sys, mlpersonalize, mlpersonalize.api, mlpersonalize.cli.app, mlpersonalize.updater;"
        "import mlpersonalize.fleet, mlpersonalize.fleet.device, mlpersonalize.fleet.aggregate;"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'flwr'], 'flwr imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- optional differential privacy on what a device sends ---------------------------------------


def dp_train_reply(monkeypatch: pytest.MonkeyPatch, sent: Contribution, dp: Any) -> Any:
    """The train reply the ClientApp sends for a device whose training produced ``sent``."""
    from mlpersonalize.fleet import client_app, messages

    monkeypatch.setattr(device, "train", lambda config, known: device.TrainReport(sent, "", 3, ()))
    config = device.DeviceConfig(pending=Path("unused"), dp=dp)
    return client_app.handle("train", config, messages.train_request(1, []))


@pytest.fixture
def unit_rows() -> Contribution:
    rng = np.random.default_rng(7)
    rows = normalize(rng.standard_normal((52, 128))).astype(np.float32)
    return Contribution(tuple(f"label-{i}" for i in range(52)), rows, (3,) * 52)


def test_without_dp_a_device_sends_its_rows_exactly(
    monkeypatch: pytest.MonkeyPatch, unit_rows: Contribution
) -> None:
    pytest.importorskip("flwr")
    from mlpersonalize.fleet import messages

    reply = dp_train_reply(monkeypatch, unit_rows, None)
    np.testing.assert_array_equal(reply["arrays"]["rows"].numpy(), unit_rows.rows)
    assert messages.read_dp(reply) is None
    assert not [key for key in reply["config"].keys() if key.startswith("dp-")]


def test_with_dp_every_sent_row_is_clipped_and_noised_and_larger_epsilon_means_less_noise(
    monkeypatch: pytest.MonkeyPatch, unit_rows: Contribution
) -> None:
    pytest.importorskip("flwr")
    from mlpersonalize.fleet import messages
    from mlpersonalize.fleet.privacy import DpConfig

    measured = {}
    for epsilon in (50.0, 100.0):
        dp = DpConfig(epsilon, 1e-5, 1.0)
        reply = dp_train_reply(monkeypatch, unit_rows, dp)
        rows = reply["arrays"]["rows"].numpy()
        assert rows.dtype == np.float32 and rows.shape == unit_rows.rows.shape
        assert reply["config"]["labels"] == list(unit_rows.labels)  # names and counts travel as they were
        noise = rows - unit_rows.rows  # unit rows: a clip at norm 1 leaves them whole
        assert np.all(np.any(noise != 0, axis=1))  # every sent row differs from the un-noised one
        measured[epsilon] = float(noise.std())
        # Flower's LocalDpMod scale: 2·clip·sqrt(2 ln(1.25/δ))/ε, ~6600 coordinates: within 5 %
        expected = 2.0 * np.sqrt(2 * np.log(1.25 / 1e-5)) / epsilon
        assert abs(measured[epsilon] - expected) < 0.05 * expected, (epsilon, measured[epsilon], expected)
        assert messages.read_dp(reply) == pytest.approx(
            {"epsilon": epsilon, "delta": 1e-5, "clip": 1.0, "noise_std": expected}, rel=1e-5
        )
    assert measured[100.0] < measured[50.0]


def test_with_dp_rows_are_clipped_to_the_norm_asked_for(unit_rows: Contribution) -> None:
    pytest.importorskip("flwr")
    from mlpersonalize.fleet.privacy import DpConfig, privatize

    sent = privatize(unit_rows, DpConfig(1e9, 1e-5, 0.25))  # noise ~1e-9: the clip alone shows
    np.testing.assert_allclose(np.linalg.norm(sent.rows, axis=1), 0.25, atol=1e-5)
    np.testing.assert_allclose(normalize(sent.rows), unit_rows.rows, atol=1e-5)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dp-epsilon": 0}, "dp-epsilon must be a positive number"),
        ({"dp-epsilon": 5, "dp-delta": 1.5}, "dp-delta must be within"),
        ({"dp-epsilon": 5, "dp-clip": -1}, "dp-clip must be a positive number"),
        ({"dp-delta": 1e-6}, "need dp-epsilon"),
    ],
)
def test_bad_dp_settings_are_refused(values: dict[str, Any], message: str) -> None:
    from mlpersonalize.errors import UsageError
    from mlpersonalize.fleet.privacy import dp_config

    with pytest.raises(UsageError, match=message):
        dp_config(values)


def test_dp_is_off_unless_the_node_config_asks(tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    from mlpersonalize.fleet.client_app import device_config

    assert device_config({"home": str(tmp_path)}).dp is None
    dp = device_config({"home": str(tmp_path), "dp-epsilon": 20.0}).dp
    assert dp is not None and (dp.epsilon, dp.delta, dp.clip) == (20.0, 1e-5, 1.0)


def test_a_run_with_dp_records_it_in_the_summary_and_in_the_adopted_versions_history(
    tmp_path: Path,
) -> None:
    pytest.importorskip("flwr")
    import dataclasses

    from mlpersonalize.fleet.privacy import DpConfig
    from mlpersonalize.fleet.server_app import run_rounds

    dp = DpConfig(1e4, 1e-5, 1.0)  # noise std ~1e-3: small enough that the head is still adopted
    plain = make_devices(tmp_path, GROUPS[:2])
    configs = [dataclasses.replace(plain[0], dp=dp), plain[1]]  # one device noises, one does not
    sent: list[tuple[str, Any]] = []
    summary = run_rounds(in_process_exchange(configs, sent), [0, 1], 1, 0.02, lambda record: None)
    (record,) = summary["rounds"]
    assert record["dp"] == {"0": pytest.approx(dp.record())}
    assert record["result"] == "offered" and record["adopted"] == ["0", "1"]
    with device.device_home(configs[0]):
        entry = load_package(store.current_path(store.model_home())).manifest.history[-1]
    assert entry["kind"] == "fleet" and entry["dp"] == pytest.approx(dp.record())
    with device.device_home(configs[1]):
        assert "dp" not in load_package(store.current_path(store.model_home())).manifest.history[-1]


def test_adopting_a_head_with_more_labels_on_a_model_personalized_by_update_publishes_a_loadable_version(
    tmp_path: Path,
) -> None:
    """A device that also runs `mlpersonalize update` has a calibrated `unknown` (one threshold per
    label). Adopting a fleet head with a label more must publish a version that loads, with its
    thresholds made for the new head, not the old ones kept (that version failed to load)."""
    from conftest import NEW, write_batch

    import mlpersonalize
    from mlpersonalize.fleet.publish import publish_head
    from mlpersonalize.heads.cosine import head_weight

    bundled = store.bundled_model_path()
    result = mlpersonalize.update(write_batch(tmp_path / "b.npz", bundled, NEW[:2], per_label=4), bundled)
    package = load_package(result.model)
    assert len(package.manifest.unknown["thresholds"]) == len(package.manifest.labels)
    import onnx

    weight = head_weight(onnx.load(str(result.model / "head.onnx")))
    labels = (*package.manifest.labels, "fleet label")
    root = result.model.parent.parent
    with store.ModelLock(root).acquire():
        version = publish_head(
            root, package, labels, np.concatenate([weight, weight[:1]]), package.exemplars(), {}
        )
    adopted = load_package(store.versions_dir(root) / version)
    assert adopted.manifest.labels == labels
    assert len(adopted.manifest.unknown["thresholds"]) == len(labels)
    assert store.current_version(root) == version


def test_a_second_adoption_keeps_each_pending_drawing_once_in_the_memory(tmp_path: Path) -> None:
    """A device's pending drawings are in its memory after the first adoption (float16, as stored)
    and in its pending batch again at the next one (float32, as embedded): the memory the next
    version rehearses must hold each drawing once, not a copy from each side."""
    (config,) = make_devices(tmp_path, (("umbrella", "key"),))
    for _ in range(2):
        contribution = device.train(config).contribution
        assert contribution is not None
        assert device.adopt(config, contribution.labels, contribution.rows).adopted
    with device.device_home(config):
        package = load_package(store.current_path(store.model_home()))
    emb, idx = package.exemplars()
    for label in ("umbrella", "key"):
        rows = emb[idx == package.manifest.labels.index(label)]
        assert len(rows) == 3, (label, len(rows))

"""Publishing to a local folder: immutable versions, current.json last, gate pass/fail/force, rollback, history."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from edge_support import exported

from crux.config import ConfigError, from_mapping
from crux.publish import (
    GateConfig,
    GateRefused,
    PublishError,
    ReleaseError,
    check_monotonic,
    fetch_release,
    gate_check,
    list_models,
    publish,
    read_pointer,
    rollback,
)
from crux.signing import generate_private_key


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {
        "good": exported(root, "classify", seed=0, metrics={"macro_f1": 0.80, "inspection": {"ng_recall": 0.9}}),
        "better": exported(root, "classify", seed=1, metrics={"macro_f1": 0.85, "inspection": {"ng_recall": 0.95}}),
        "worse": exported(root, "classify", seed=2, metrics={"macro_f1": 0.70, "inspection": {"ng_recall": 0.99}}),
    }


@pytest.fixture
def key():  # type: ignore[no-untyped-def]
    return generate_private_key()


def test_gate_rules() -> None:
    cfg = GateConfig(tolerance=0.02)
    assert gate_check({"macro_f1": 0.5}, None, cfg, "classify").passed  # nothing in production yet
    assert gate_check({"macro_f1": 0.79}, {"macro_f1": 0.80}, cfg, "classify", 1).passed  # within tolerance
    refused = gate_check({"macro_f1": 0.77}, {"macro_f1": 0.80}, cfg, "classify", 1)
    assert not refused.passed and "0.7700" in refused.reason and refused.metric == "macro_f1"
    assert gate_check({"map50": 0.4}, {"map50": 0.3}, GateConfig(), "detect", 1).metric == "map50"
    nested = GateConfig(metric="inspection.ng_recall")
    assert gate_check(
        {"inspection": {"ng_recall": 0.9}}, {"inspection": {"ng_recall": 0.8}}, nested, "classify", 1
    ).passed
    assert not gate_check({}, {"macro_f1": 0.8}, cfg, "classify", 1).passed  # candidate without the metric
    lower = GateConfig(metric="loss", higher_is_better=False)
    assert not gate_check({"loss": 0.5}, {"loss": 0.4}, lower, "classify", 1).passed
    with pytest.raises(ConfigError):
        from_mapping(GateConfig, {"tolerance": -1}, "gate")


def test_publish_local_versions_are_immutable_and_monotonic(tmp_path: Path, exports: dict[str, Path], key) -> None:  # type: ignore[no-untyped-def]
    root = str(tmp_path / "remote")
    r1 = publish(root, "line-a", exports["good"], key, GateConfig())
    r2 = publish(root, "line-a", exports["better"], key, GateConfig())
    assert (r1.version, r1.sequence, r2.version, r2.sequence) == (1, 1, 2, 2)
    v1 = tmp_path / "remote" / "line-a" / "000001"
    assert sorted(p.name for p in v1.iterdir()) == ["card.json", "manifest.json", "model.onnx"]
    assert not list((tmp_path / "remote").rglob("*.tmp-*"))  # no temp files left behind
    pointer = read_pointer(f"{root}/line-a", [key.public_key()])
    assert pointer is not None and pointer["version"] == 2 and pointer["action"] == "publish"
    assert pointer["previous_version"] == 1
    manifest = json.loads((tmp_path / "remote" / "line-a" / "000002" / "manifest.json").read_text())
    assert manifest["parent_version"] == 1 and manifest["gate"]["passed"] and manifest["metrics"]["macro_f1"] == 0.85
    # Another line is independent.
    assert publish(root, "line-b", exports["worse"], key, GateConfig()).version == 1
    with pytest.raises(PublishError, match="line"):
        publish(root, "../evil", exports["good"], key, GateConfig())


def test_gate_refuses_then_force_with_reason_is_recorded(tmp_path: Path, exports: dict[str, Path], key) -> None:  # type: ignore[no-untyped-def]
    root = str(tmp_path / "remote")
    publish(root, "line-a", exports["good"], key, GateConfig(tolerance=0.05))
    with pytest.raises(GateRefused) as refused:
        publish(root, "line-a", exports["worse"], key, GateConfig(tolerance=0.05))
    assert not refused.value.result.passed and "REFUSED" in str(refused.value)
    assert read_pointer(f"{root}/line-a", [key.public_key()])["version"] == 1  # type: ignore[index]
    assert not (tmp_path / "remote" / "line-a" / "000002").exists()  # nothing written for a refused candidate
    with pytest.raises(PublishError, match="reason"):
        publish(root, "line-a", exports["worse"], key, GateConfig(tolerance=0.05), force=True)
    forced = publish(
        root, "line-a", exports["worse"], key, GateConfig(tolerance=0.05), force=True, reason="hotfix ticket 42"
    )
    assert forced.forced and forced.version == 2
    history = list_models(root, "line-a", [key.public_key()])
    v2 = next(v for v in history["versions"] if v["version"] == 2)
    assert v2["forced"] and v2["reason"] == "hotfix ticket 42" and not v2["gate"]["passed"] and v2["current"]
    # The gate on another metric (production re-evaluated by the caller) passes the same candidate.
    ok = publish(
        root,
        "line-a",
        exports["worse"],
        key,
        GateConfig(metric="inspection.ng_recall"),
        production_metrics={"inspection": {"ng_recall": 0.5}},
    )
    assert ok.gate.passed and ok.version == 3


def test_rollback_and_history(tmp_path: Path, exports: dict[str, Path], key) -> None:  # type: ignore[no-untyped-def]
    root = str(tmp_path / "remote")
    for name in ("good", "better"):
        publish(root, "line-a", exports[name], key, GateConfig())
    back = rollback(root, "line-a", key, reason="scratches missed")
    assert back["version"] == 1 and back["action"] == "rollback" and back["sequence"] == 3
    assert back["previous_version"] == 2 and back["reason"] == "scratches missed"
    forward = rollback(root, "line-a", key, to_version=2)
    assert forward["version"] == 2 and forward["sequence"] == 4
    with pytest.raises(PublishError, match="already"):
        rollback(root, "line-a", key, to_version=2)
    with pytest.raises(PublishError, match="does not exist"):
        rollback(root, "line-a", key, to_version=9)
    with pytest.raises(PublishError, match="nothing published"):
        rollback(root, "line-z", key)
    history = list_models(root, "line-a", [key.public_key()])
    assert [v["version"] for v in history["versions"]] == [1, 2]
    assert all(v["verified"] for v in history["versions"])
    assert [(e["sequence"], e["action"], e["version"]) for e in history["events"]] == [
        (1, "publish", 1),
        (2, "publish", 2),
        (3, "rollback", 1),
        (4, "rollback", 2),
    ]
    assert history["versions"][1]["metrics"]["macro_f1"] == 0.85 and "train" in history["versions"][1]["lineage"]
    # A new publish after rollbacks continues both counters.
    assert publish(root, "line-a", exports["better"], key, GateConfig()).sequence == 5


def test_monotonicity_rules() -> None:
    running = {"version": 5, "sequence": 7}
    assert check_monotonic({"version": 6, "sequence": 8, "action": "publish"}, running)
    assert not check_monotonic({"version": 5, "sequence": 7, "action": "publish"}, running)  # same release
    assert check_monotonic({"version": 3, "sequence": 8, "action": "rollback"}, running)
    with pytest.raises(ReleaseError, match="not a signed rollback"):
        check_monotonic({"version": 3, "sequence": 8, "action": "publish"}, running)
    with pytest.raises(ReleaseError, match="sequence"):
        check_monotonic({"version": 4, "sequence": 6, "action": "rollback"}, running)  # replayed old record


def test_reader_polling_during_publish_never_sees_a_partial_model(
    tmp_path: Path,
    exports: dict[str, Path],
    key,  # type: ignore[no-untyped-def]
) -> None:
    root = str(tmp_path / "remote")
    publish(root, "line-a", exports["good"], key, GateConfig())
    stop = threading.Event()
    seen: list[int] = []
    errors: list[str] = []

    def reader() -> None:
        installed = None
        n = 0
        while not stop.is_set():
            try:
                release = fetch_release(f"{root}/line-a", tmp_path / f"edge{n % 3}", [key.public_key()], installed=None)
            except ReleaseError as exc:  # any rejection here would mean a half-published release was visible
                errors.append(str(exc))
                continue
            assert release is not None
            files = {p.name for p in release.path.iterdir()}
            if not {"model.onnx", "card.json", "manifest.json"} <= files:
                errors.append(f"incomplete {files}")
            seen.append(release.version)
            installed = release.pointer
            n += 1
        assert installed is not None

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(6):
            publish(root, "line-a", exports["better" if i % 2 else "good"], key, GateConfig(tolerance=1.0))
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert seen and seen == sorted(seen) and seen[-1] >= 1  # readers only ever move forward

"""Publishing to a local folder: immutable versions, current.json last, gate pass/fail/force, rollback, history."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from edge_support import exported

from crux.config import ConfigError, from_mapping
from crux.ship.fetch import fetch_release
from crux.ship.gate import GateConfig, gate_check
from crux.ship.listing import list_models
from crux.ship.publish import GateRefused, publish, rollback
from crux.ship.releases import PublishError, ReleaseError, read_pointer
from crux.ship.signing import generate_private_key
from crux.ship.verify import check_monotonic


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
    first = gate_check({"macro_f1": 0.6}, None, cfg, "classify")  # first model: the floors decide
    assert first.passed and [c.rule for c in first.criteria] == ["min", "vs_production"]
    assert "no model in production" in first.criteria[-1].note
    assert not gate_check({"macro_f1": 0.3}, None, cfg, "classify").passed  # ... and no longer pass by default
    assert gate_check({"macro_f1": 0.79}, {"macro_f1": 0.80}, cfg, "classify", 1).passed  # within tolerance
    refused = gate_check({"macro_f1": 0.77}, {"macro_f1": 0.80}, cfg, "classify", 1)
    assert not refused.passed and "0.7700" in refused.reason and refused.metric == "macro_f1"
    rel = refused.criteria[-1]
    assert (rel.candidate, rel.production, rel.threshold, rel.passed) == (0.77, 0.80, pytest.approx(0.78), False)
    assert gate_check({"map50": 0.4}, {"map50": 0.3}, GateConfig(), "detect", 1).metric == "map50"
    nested = GateConfig(metric="inspection.ng_recall")
    assert gate_check(
        {"macro_f1": 0.9, "inspection": {"ng_recall": 0.9}}, {"inspection": {"ng_recall": 0.8}}, nested, "classify", 1
    ).passed
    assert not gate_check({}, {"macro_f1": 0.8}, cfg, "classify", 1).passed  # candidate without the metric
    lower = GateConfig(metric="loss", higher_is_better=False)
    assert not gate_check({"macro_f1": 0.9, "loss": 0.5}, {"loss": 0.4}, lower, "classify", 1).passed
    with pytest.raises(ConfigError):
        from_mapping(GateConfig, {"tolerance": -1}, "gate")


def test_production_without_the_metric_is_a_failed_criterion_not_a_pass() -> None:
    result = gate_check({"macro_f1": 0.9}, {"accuracy": 0.9}, GateConfig(), "classify", 3)
    assert not result.passed
    rel = result.criteria[-1]
    assert rel.rule == "vs_production" and rel.production is None and not rel.passed
    assert "production v3 has no macro_f1" in rel.note and "--force" in rel.note


def test_limits_merge_kind_defaults_gate_min_and_line_overrides() -> None:
    cfg = from_mapping(
        GateConfig,
        {
            "min": {"classify": {"accuracy": 0.95, "macro_f1": None}, "detect": {"map50": 0.5}},
            "max": {"classify": {"inspection.false_reject_rate": 0.05}},
            "lines": {"tiles": {"min": {"inspection.ng_recall": 0.99}, "max": {"inspection.false_reject_rate": 0.02}}},
        },
        "gate",
    )
    assert sorted(cfg.limits("classify", "steel", ok_line=False)) == [("min", "accuracy", 0.95, "gate.min.classify")]
    assert sorted(cfg.limits("classify", "tiles", ok_line=True)) == [
        ("max", "inspection.false_reject_rate", 0.02, "gate.lines.tiles.max"),
        ("min", "accuracy", 0.95, "gate.min.classify"),
        ("min", "inspection.ng_recall", 0.99, "gate.lines.tiles.min"),
    ]
    assert cfg.limits("detect", None, ok_line=False) == [("min", "map50", 0.5, "gate.min.detect")]
    # Kind defaults alone rule out a blind model.
    assert GateConfig().limits("detect", None, False) == [("min", "map50", 0.25, "kind detect default")]
    assert {k for _, k, _, _ in GateConfig().limits("classify", None, True)} == {
        "macro_f1",
        "inspection.ng_recall",
        "inspection.false_reject_rate",
    }


@pytest.mark.parametrize(
    "gate",
    [
        {"min": {"classfy": {"accuracy": 0.9}}},  # not a kind
        {"min": {"classify": {"accuracy": "high"}}},  # not a number
        {"min": {"classify": {"acc uracy": 0.9}}},  # not a metric key
        {"lines": {"neu-det": {"min": {"map50": 0.5}, "floor": 1}}},  # unknown key
        {"lines": {"neu-det": {"mim": {"map50": 0.5}}}},
        {"metric": "map 50"},
        {"floors": {}},
        {"tolerance": float("nan")},  # made `publish --json` print invalid JSON
        {"tolerance": float("inf")},
    ],
)
def test_gate_config_is_validated(gate: dict) -> None:
    with pytest.raises(ConfigError):
        from_mapping(GateConfig, gate, "gate")


BLIND = {"map50": 0.00001, "map50_95": 0.0}


def test_blind_first_model_is_refused_and_production_untouched(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    blind = exported(tmp_path, "detect", metrics=BLIND, healthy=False)
    root = str(tmp_path / "remote")
    with pytest.raises(GateRefused) as refused:
        publish(root, "line-a", blind, key, GateConfig())
    result = refused.value.result
    assert not result.passed and "map50 0.0000 < floor 0.2500" in result.reason
    floor = next(c for c in result.criteria if c.rule == "min")
    assert (floor.metric, floor.candidate, floor.threshold, floor.passed) == ("map50", 0.00001, 0.25, False)
    assert read_pointer(f"{root}/line-a", [key.public_key()]) is None  # nothing in production
    # Nothing published: only the refusal record the console lists (crux.ship.refusals), which edges never read.
    assert [p.name for p in (tmp_path / "remote" / "line-a").iterdir()] == ["refused"]
    assert "| min (kind detect default) | map50 | 0.0000 | 0.2500 |" in result.markdown()
    # The override still works, and is recorded and signed as such.
    forced = publish(root, "line-a", blind, key, GateConfig(), force=True, reason="demo of a forced release")
    assert forced.forced and forced.version == 1
    v1 = list_models(root, "line-a", [key.public_key()])["versions"][0]
    assert v1["forced"] and not v1["gate"]["passed"] and v1["verified"]
    assert v1["gate"]["criteria"][0]["metric"] == "map50" and v1["gate"]["criteria"][0]["candidate"] == 0.00001


def test_good_first_model_passes_with_every_criterion_recorded(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    good = exported(tmp_path, "classify", metrics={"accuracy": 0.97, "macro_f1": 0.96})
    root = str(tmp_path / "remote")
    result = publish(root, "line-a", good, key, GateConfig(min={"classify": {"accuracy": 0.95}}))
    assert result.gate.passed and result.version == 1 and "first model" in result.gate.reason
    manifest = json.loads((tmp_path / "remote" / "line-a" / "000001" / "manifest.json").read_text())
    recorded = {(c["rule"], c["metric"]): c for c in manifest["gate"]["criteria"]}
    assert set(recorded) == {
        ("min", "accuracy"),
        ("min", "macro_f1"),
        ("min", "inspection.ng_recall"),  # the tiny classifier's card has an OK class
        ("max", "inspection.false_reject_rate"),
        ("vs_production", "macro_f1"),
    }
    assert recorded[("min", "accuracy")] == {
        "rule": "min",
        "metric": "accuracy",
        "candidate": 0.97,
        "threshold": 0.95,
        "production": None,
        "passed": True,
        "source": "gate.min.classify",
        "note": "",
    }
    history = list_models(root, "line-a", [key.public_key()])
    assert len(history["versions"][0]["gate"]["criteria"]) == 5


@pytest.mark.parametrize(
    ("metrics", "failing"),
    [
        ({"macro_f1": 0.45}, ("min", "macro_f1")),
        ({"accuracy": 0.94}, ("min", "accuracy")),
        ({"inspection": {"ng_recall": 0.79}}, ("min", "inspection.ng_recall")),
        ({"inspection": {"false_reject_rate": 0.21}}, ("max", "inspection.false_reject_rate")),
        ({"inspection": {"ng_recall": None}}, ("min", "inspection.ng_recall")),  # missing fails too
    ],
)
def test_each_floor_fails_alone(tmp_path: Path, key, metrics: dict, failing: tuple) -> None:  # type: ignore[no-untyped-def]
    candidate = exported(tmp_path, "classify", metrics=metrics)
    cfg = GateConfig(min={"classify": {"accuracy": 0.95}})
    with pytest.raises(GateRefused) as refused:
        publish(str(tmp_path / "remote"), "line-a", candidate, key, cfg)
    failed = [(c.rule, c.metric) for c in refused.value.result.criteria if not c.passed]
    assert failed == [failing]


def test_line_override_applies_to_its_line_only(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    candidate = exported(tmp_path, "detect", metrics={"map50": 0.55}, healthy=False)
    cfg = from_mapping(
        GateConfig, {"min": {"detect": {"map50": 0.5}}, "lines": {"strict": {"min": {"map50": 0.7}}}}, "g"
    )
    root = str(tmp_path / "remote")
    assert publish(root, "lenient", candidate, key, cfg).version == 1
    with pytest.raises(GateRefused, match=r"floor 0\.7000"):
        publish(root, "strict", candidate, key, cfg)


def test_no_floor_and_no_production_refuses(tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    cfg = GateConfig(min={"detect": {"map50": None}})
    result = gate_check({"map50": 0.9}, None, cfg, "detect")
    assert not result.passed and "gate.min.detect" in result.reason


def test_cycle_flow_ends_not_published_with_the_decision_as_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key
) -> None:  # type: ignore[no-untyped-def]
    import yaml

    import flows.cycle
    import flows.tasks
    from crux.ship.signing import private_key_pem

    exported(tmp_path, "detect", metrics=BLIND, healthy=False, name="models/line-a/export")
    # The cycle refuses a line that cannot train before anything else: line-a is declared and in pipeline.lines.
    project = {"title": "A", "kind": "detect", "classes": {"scratch": "#ff0000", "spot": "#0000ff"}}
    params = {
        "labelstudio": {"projects": {"line-a": project}},
        "pipeline": {"lines": ["line-a"]},
        "gate": {"min": {"detect": {"map50": 0.5}}},
        "edge": {"remote": "remote"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("CRUX_SIGNING_KEY", private_key_pem(key).decode())
    artifacts: list[dict] = []
    monkeypatch.setattr(flows.tasks, "create_markdown_artifact", lambda **kw: artifacts.append(kw))
    steps: list[str] = []
    monkeypatch.setattr(flows.cycle, "snapshot_task", lambda *a: steps.append("snapshot") or {"commit": "abc"})
    monkeypatch.setattr(flows.cycle, "reproduce_task", lambda *a: steps.append("reproduce"))
    monkeypatch.setattr(flows.cycle, "push_task", lambda *a: steps.append("push"))
    monkeypatch.setattr(flows.cycle, "publish_task", flows.tasks.publish_task.fn)

    result = flows.cycle.cycle.fn("line-a", params_path=str(tmp_path / "params.yaml"))
    assert steps == ["snapshot", "reproduce", "push"]
    assert result["published"] is None and not result["gate"]["passed"]
    assert result["gate"]["criteria"][0]["threshold"] == 0.5
    (artifact,) = artifacts
    assert artifact["key"] == "line-a-gate" and "line-a: not published" in artifact["markdown"]
    assert "map50 0.0000 < floor 0.5000" in artifact["markdown"]
    assert [p.name for p in (tmp_path / "remote" / "line-a").iterdir()] == ["refused"]  # the refusal record only


def test_publish_cli_json_lists_every_criterion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key) -> None:  # type: ignore[no-untyped-def]
    import yaml
    from typer.testing import CliRunner

    from crux.cli import app
    from crux.ship.signing import private_key_pem

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"gate": {"min": {"detect": {"map50": 0.5}}}, "edge": {"remote": "remote"}}))
    monkeypatch.setenv("CRUX_SIGNING_KEY", private_key_pem(key).decode())
    blind = exported(tmp_path, "detect", metrics=BLIND, healthy=False)
    good = exported(tmp_path, "detect", seed=1, metrics={"map50": 0.6}, healthy=False)
    runner = CliRunner()
    refused = runner.invoke(app, ["publish", "line-a", str(blind), "--json", "--params", str(params)])
    assert refused.exit_code == 1
    doc = json.loads(refused.stdout.splitlines()[0])
    assert doc["published"] is False and doc["gate"]["criteria"][0]["candidate"] == 0.00001
    ok = runner.invoke(app, ["publish", "line-a", str(good), "--json", "--params", str(params)])
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["published"] and doc["version"] == 1
    assert [(c["rule"], c["metric"], c["passed"]) for c in doc["gate"]["criteria"]] == [
        ("min", "map50", True),
        ("vs_production", "map50", True),
    ]


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
    forward = rollback(root, "line-a", key, to_version=2, reason="fixed")
    assert forward["version"] == 2 and forward["sequence"] == 4
    with pytest.raises(PublishError, match="already"):
        rollback(root, "line-a", key, to_version=2, reason="again")
    with pytest.raises(PublishError, match="does not exist"):
        rollback(root, "line-a", key, to_version=9, reason="x")
    with pytest.raises(PublishError, match="nothing published"):
        rollback(root, "line-z", key, reason="x")
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


def test_publish_cli_refuses_a_model_made_for_another_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key
) -> None:  # type: ignore[no-untyped-def]
    """A detector exported for a detect line, published to a classify line: refused before anything is written."""
    import yaml
    from typer.testing import CliRunner

    from crux.cli import app
    from crux.ship.signing import private_key_pem

    projects = {
        "det": {"title": "d", "kind": "detect", "classes": {"scratch": "#ff0000", "spot": "#00ff00"}},
        "cls": {
            "title": "c",
            "kind": "classify",
            "classes": {"ok": "#00ff00", "scratch": "#ff0000", "spot": "#0000ff"},
            "ok_class": "ok",
        },
        "cls3": {
            "title": "c3",
            "kind": "classify",
            "classes": {"ok": "#00ff00", "scratch": "#ff0000", "spot": "#0000ff"},
            "ok_class": "ok",
        },
    }
    doc = {
        "labelstudio": {"projects": projects},
        "pipeline": {"overrides": {"cls3": {"data": {"channels": 3}}}},
        "edge": {"remote": "remote"},
    }
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("CRUX_SIGNING_KEY", private_key_pem(key).decode())
    detector = exported(tmp_path, "detect")
    classifier = exported(tmp_path, "classify")
    runner = CliRunner()
    wrong = runner.invoke(app, ["publish", "cls", str(detector), "--params", str(params)])
    assert wrong.exit_code == 1 and not (tmp_path / "remote" / "cls").exists()
    assert isinstance(wrong.exception, ConfigError) or "not a model for line 'cls'" in wrong.output
    message = str(wrong.exception) if wrong.exception else wrong.output
    assert "kind 'detect', the line is 'classify'" in message and "classes ['scratch', 'spot']" in message
    gray = runner.invoke(app, ["publish", "cls3", str(classifier), "--params", str(params)])
    assert gray.exit_code == 1 and "1 input channel(s), the line's data has 3" in str(gray.exception or gray.output)
    unknown = runner.invoke(app, ["publish", "nosuch", str(classifier), "--params", str(params)])
    assert unknown.exit_code == 1 and "not declared in labelstudio.projects" in str(unknown.exception or unknown.output)
    ok = runner.invoke(app, ["publish", "cls", str(classifier), "--params", str(params)])
    assert ok.exit_code == 0, ok.output
    ok = runner.invoke(app, ["publish", "det", str(detector), "--params", str(params)])
    assert ok.exit_code == 0, ok.output

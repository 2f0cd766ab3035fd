"""The drift and new-defect alarm end to end: a tiny classifier exported with its validation reference and published;
synthetic frames through the real edge runtime (outbox uploads, heartbeats with score histograms) into a real ingest
service; the monitor's check against the card read from the signed remote. A steady stream raises nothing; a
lighting change and a new defect type raise alarms (station and line), and the shifted frames are queued for
labelling ahead of everything else. The Prefect flow reports the same as its `drift` artifact."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from drift_support import DRIFT_LINE, TEST_MONITOR, Stream, check, streamed

from crux.collect import create_db_engine
from crux.collect.heartbeats import alarms, queued_captures
from crux.collect.records import list_captures
from crux.monitor.watch import markdown_report

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> Stream:
    return streamed(tmp_path_factory.mktemp("drift"), {"cam-steady": None, "cam-lamp": "lighting", "cam-new": "defect"})


def test_a_steady_stream_raises_no_alarm_and_queues_nothing(tmp_path: Path) -> None:
    s = streamed(tmp_path, {"cam-1": None, "cam-2": None})
    checks = check(s)
    assert [(c.scope, c.assessment.status) for c in checks] == [
        ("station cam-1", "ok"), ("station cam-2", "ok"), (f"line {DRIFT_LINE}", "ok"),
    ]  # fmt: skip
    assert all(c.assessment.frames == (400 if c.station is None else 200) for c in checks)
    engine = create_db_engine(s.database_url)
    assert alarms(engine, open_only=False) == [] and queued_captures(engine, DRIFT_LINE) == set()


def test_a_lighting_change_and_a_new_defect_raise_alarms_and_queue_their_frames_first(shifted: Stream) -> None:
    checks = {c.scope: c for c in check(shifted)}
    assert checks["station cam-steady"].assessment.status == "ok"
    for scope in ("station cam-lamp", "station cam-new", f"line {DRIFT_LINE}"):
        c = checks[scope]
        assert c.assessment.alarm and c.raised and c.alarm is not None, (scope, c.assessment.summary())
        assert c.assessment.psi is not None and c.assessment.psi > TEST_MONITOR.psi_alarm
    # The lamp change also moved the NG rate (the model now passes what it rejected on validation).
    assert any("NG rate" in r for r in checks["station cam-lamp"].assessment.reasons)

    engine = create_db_engine(shifted.database_url)
    by_id = {r.id: r for r in list_captures(engine, limit=10_000)}
    queued = queued_captures(engine, DRIFT_LINE)
    assert queued and {by_id[i].station for i in queued} <= {"cam-lamp", "cam-new"}
    for station in ("cam-lamp", "cam-new"):
        assert 0 < len([i for i in queued if by_id[i].station == station]) <= TEST_MONITOR.queue_max
    assert checks[f"line {DRIFT_LINE}"].queued == ()  # explained by the station alarms, which queued their frames
    # Labelling order (crux.collect.labeling, as the collect flow imports): every queued frame before any other.
    from crux.collect.labeling import captures_to_tasks, order_captures
    from crux.config import ProjectSpec

    colours = {"ok": "#00aa00", "scratch": "#aa0000", "spot": "#0000aa"}
    spec = ProjectSpec(title="A", kind="classify", classes=colours, ok_class="ok")
    ordered = order_captures(by_id.values(), spec, queued)
    assert {r.id for r in ordered[: len(queued)]} == queued
    tasks = captures_to_tasks(list(by_id.values()), spec, lambda r: f"/img/{r.id}", queued)
    priorities = [t["data"]["priority"] for t in tasks]
    assert priorities == sorted(priorities) and priorities[0].startswith("-1-")

    # The same shift at the next check: the alarms stay open, nothing is raised or queued twice.
    again = {c.scope: c for c in check(shifted)}
    assert all(not c.raised for c in again.values())
    assert {a.scope for a in alarms(engine)} == {"station cam-lamp", "station cam-new", f"line {DRIFT_LINE}"}
    assert len(queued_captures(engine, DRIFT_LINE)) >= len(queued)
    report = markdown_report(list(again.values()))
    assert "# Drift: 3 alarm(s)" in report and "station cam-steady | v1 | ok" in report


def test_an_old_card_without_a_reference_shows_no_reference_and_never_alarms(tmp_path: Path) -> None:
    s = streamed(tmp_path, {"cam-1": "defect"}, reference=False)
    checks = check(s)
    assert {c.assessment.status for c in checks} == {"no reference"}
    assert alarms(create_db_engine(s.database_url), open_only=False) == []


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def test_the_monitor_flow_reports_the_alarms_as_its_drift_artifact(shifted: Stream, prefect_api: None) -> None:
    from prefect.client.orchestration import get_client

    from flows.monitor import ARTIFACT_KEY, monitor

    params = shifted.tmp / "params.yaml"
    params.write_text(
        json.dumps(
            {
                "ingest": {"database_url": shifted.database_url, "storage_url": str(shifted.tmp / "images")},
                "edge": {"remote": str(shifted.remote), "public_keys": [str(shifted.public_key)]},
                "monitor": {"min_frames": 100, "queue_max": 25},
            }
        )
    )
    result = monitor(str(params), [DRIFT_LINE])
    assert set(result["alarms"]) == {"station cam-lamp", "station cam-new", f"line {DRIFT_LINE}"}

    async def latest() -> Any:
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])), limit=1
            )
            return found[0]

    import asyncio

    artifact = asyncio.run(latest())
    assert "alarm(s)" in artifact.data and "station cam-lamp" in artifact.data

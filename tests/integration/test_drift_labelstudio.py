"""The drift alarm's labelling queue in a real Label Studio: captures uploaded through the ingest API from a steady
station (NG, uncertain: normally first in line) and from a station whose lighting changed (confident OK frames:
normally last); the monitor raises an alarm on the second and queues its frames; `crux collect` then imports the
shifted frames ahead of every other, and their `priority` column sorts them first in the Data Manager."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crux.collect import IngestSettings, add_station, create_app, create_db_engine, migrate
from crux.collect.heartbeats import queue_shifted, raise_alarm
from crux.collect.ingest_server import capture_metadata, make_jpeg
from crux.collect.labeling import collect
from crux.collect.storage import ImageStore
from crux.config import ProjectSpec
from crux.label.projects import sync_project

pytestmark = pytest.mark.integration

SPEC = ProjectSpec(title="Drift queue", kind="classify", classes={"OK": "#3cb44b", "Crack": "#911eb4"}, ok_class="OK")


def test_shifted_frames_are_labelled_first(ls_client: Any, ls_files_root: Path) -> None:
    name = f"drift-{uuid.uuid4().hex[:8]}"
    root = ls_files_root / name
    settings = IngestSettings(database_url=f"sqlite:///{root}/ingest.db", storage_url=str(root / "images"))
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    tokens = {s: add_station(engine, s, name) for s in ("cam-steady", "cam-lamp")}
    project_id = sync_project(ls_client, name, SPEC).project_id
    now = dt.datetime.now(dt.UTC)
    ids: dict[str, list[int]] = {"cam-steady": [], "cam-lamp": []}
    with TestClient(create_app(settings)) as api:
        for i in range(8):
            station = "cam-steady" if i % 2 else "cam-lamp"
            # Steady: NG and uncertain (0.55 / 0.45). Lamp: confident OK (0.97): without the alarm, last in line.
            ng = station == "cam-steady"
            scores = {"Crack": 0.55, "OK": 0.45} if ng else {"Crack": 0.03, "OK": 0.97}
            meta = capture_metadata(
                station, name, captured_at=(now - dt.timedelta(minutes=i)).isoformat(), model_version=f"{name}.v1",
                prediction="Crack" if ng else "OK", verdict="ng" if ng else "ok", scores=scores, boxes=[],
            )  # fmt: skip
            r = api.post(
                "/v1/captures",
                headers={"Authorization": f"Bearer {tokens[station]}"},
                files={"image": (f"f{i}.jpg", make_jpeg(300 + i), "image/jpeg")},
                data={"metadata": json.dumps(meta)},
            )
            assert r.status_code == 201, r.text
            ids[station].append(int(r.json()["id"]))
    alarm = raise_alarm(
        engine, line=name, station="cam-lamp", model_version=1, window_start=now - dt.timedelta(hours=1),
        window_end=now + dt.timedelta(seconds=1), frames=400, psi=3.1, ks_p=1e-30, ng_rate=0.0, ref_ng_rate=0.4,
        reasons=("score histogram shifted (PSI 3.100 ≥ 0.25)",), now=now,
    )  # fmt: skip
    assert sorted(queue_shifted(engine, alarm, limit=10, now=now)) == sorted(ids["cam-lamp"])

    report = collect(engine, ls_client, name, SPEC, ImageStore(settings.storage_url), ls_files_root)
    assert report.created == 8
    tasks = sorted(ls_client.tasks.list(project=project_id, fields="all", page_size=100), key=lambda t: t.id)
    order = [t.data["station"] for t in tasks]
    assert order == ["cam-lamp"] * 4 + ["cam-steady"] * 4, order
    priorities = [t.data["priority"] for t in tasks]
    assert priorities == sorted(priorities) and all(p.startswith("-1-") for p in priorities[:4])
    engine.dispose()

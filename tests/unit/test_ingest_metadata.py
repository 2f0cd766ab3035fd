"""Metadata validation (hypothesis fuzzing), the migrations and the collect-flow library functions."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from crux.collect import (
    CaptureMetadata,
    IngestSettings,
    add_station,
    create_app,
    create_db_engine,
    list_captures,
    list_unsent,
    mark_labeled,
    mark_sent,
    migrate,
)
from crux.collect.db import captures, current_revision, metadata
from crux.collect.ingest_server import capture_metadata, make_jpeg

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["station", "line", "captured_at", "model_version", "prediction", "verdict", "scores", "boxes", "x"]


@st.composite
def mutated_metadata(draw: st.DrawFn) -> dict[str, Any]:
    """Valid metadata with a few fields replaced by arbitrary JSON, or deleted."""
    meta: dict[str, Any] = capture_metadata("cam-1", "line-a")
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            meta.pop(name, None)
        else:
            meta[name] = draw(json_values)
    return meta


@given(mutated_metadata())
@settings(max_examples=300, deadline=None)
def test_fuzzed_metadata_validates_or_fails_cleanly(meta: dict[str, Any]) -> None:
    try:
        parsed = CaptureMetadata.model_validate_json(json.dumps(meta))
    except ValidationError as exc:
        assert exc.errors()
        return
    # Whatever passes is safe to store: names have no path characters, scores are finite in [0, 1].
    for name in (parsed.station, parsed.line):
        assert "/" not in name and "\\" not in name and ".." not in name
    assert all(0.0 <= v <= 1.0 for v in parsed.scores.values())
    assert parsed.captured_at.tzinfo is not None


@given(st.text(max_size=80))
@settings(max_examples=200, deadline=None)
def test_fuzzed_names(name: str) -> None:
    try:
        CaptureMetadata.model_validate(capture_metadata(name, "line-a"))
    except ValidationError:
        return
    assert name.isascii() and name[0].isalnum() and not set(name) & set("/\\ \x00\n") and ".." not in name


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("fuzz")
    s = IngestSettings(database_url=f"sqlite:///{tmp}/ingest.db", storage_url=str(tmp / "images"))
    engine = create_db_engine(s.database_url)
    migrate(engine)
    token = add_station(engine, "cam-1", "line-a")
    with TestClient(create_app(s)) as client:
        yield client, token, engine


@given(mutated_metadata())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzed_metadata_over_http_is_201_or_4xx_never_500(api: Any, meta: dict[str, Any]) -> None:
    client, token, engine = api
    before = len(list_captures(engine, limit=10_000))
    r = client.post(
        "/v1/captures",
        headers={"Authorization": f"Bearer {token}"},
        files={"image": ("c.jpg", make_jpeg(4), "image/jpeg")},
        data={"metadata": json.dumps(meta)},
    )
    after = len(list_captures(engine, limit=10_000))
    assert r.status_code == 201 or 400 <= r.status_code < 500, r.text
    assert after == before + (1 if r.status_code == 201 else 0)


def test_migrations_match_the_table_definitions(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_db_engine(f"sqlite:///{tmp_path}/m.db")
    migrate(engine)
    migrate(engine)  # idempotent on every start
    assert current_revision(engine) == "0004"
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_unsent_mark_sent_and_labeled(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    add_station(engine, "cam-1", "line-a")
    now = dt.datetime(2025, 1, 1)
    with engine.begin() as conn:
        for i, line in enumerate(["line-a", "line-b", "line-a"]):
            conn.execute(
                sa.insert(captures).values(
                    station_id=1,
                    station="cam-1",
                    line=line,
                    captured_at=now,
                    received_at=now,
                    sha256=f"{i:064x}",
                    image_key=f"k{i}",
                    content_type="image/jpeg",
                    size_bytes=1,
                    width=1,
                    height=1,
                    scores={},
                    boxes=[],
                )
            )
    assert [c.id for c in list_unsent(engine)] == [1, 2, 3]
    assert [c.id for c in list_unsent(engine, line="line-a")] == [1, 3]
    assert mark_sent(engine, "line-a", {1: 101, 3: 103}) == 2
    assert mark_sent(engine, "line-a", {1: 999}) == 0  # already sent: not re-pointed
    assert [c.id for c in list_unsent(engine)] == [2]
    sent = {c.id: c for c in list_captures(engine, sent=True)}
    assert (sent[1].ls_task_id, sent[1].ls_project) == (101, "line-a") and sent[1].sent_at is not None
    assert mark_labeled(engine, [1]) == 1
    assert [c.id for c in list_captures(engine, labeled=True)] == [1]
    assert [c.id for c in list_captures(engine, labeled=False)] == [2, 3]


def test_region_masks_travel_with_boxes_and_must_fit_the_image() -> None:
    """A segmenter's region rides on its box as COCO RLE; a mask of another size or with foreign characters is
    refused with the box named."""
    import numpy as np

    from crux.postprocess import rle_encode

    mask = np.zeros((30, 40), bool)
    mask[5:9, 10:20] = True
    good = CaptureMetadata.model_validate(
        capture_metadata(
            "edge-1", "tile", boxes=[{"class": "crack", "box": [10, 5, 20, 9], "score": 0.9, "mask": rle_encode(mask)}]
        )
    )
    good.check_boxes_inside(40, 30)
    with pytest.raises(ValueError, match=r"boxes\[0\].mask: RLE does not describe a 30x41 mask"):
        good.check_boxes_inside(41, 30)
    with pytest.raises(ValidationError, match="mask"):
        CaptureMetadata.model_validate(
            capture_metadata("edge-1", "tile", boxes=[{"class": "crack", "box": [1, 1, 2, 2], "mask": "a b"}])
        )


def test_a_captures_fields_are_declared_once_and_the_table_matches() -> None:
    import dataclasses

    from crux.collect.db import captures
    from crux.collect.records import CAPTURE_FIELDS, CaptureRecord
    from crux.collect.schemas import CaptureOut

    assert tuple(f.name for f in dataclasses.fields(CaptureRecord)) == CAPTURE_FIELDS
    assert tuple(CaptureOut.model_fields) == CAPTURE_FIELDS  # the API schema derives from the record
    # The table holds the record's fields plus the station's id (a foreign key the API does not show).
    assert {c.name for c in captures.columns} == {*CAPTURE_FIELDS, "station_id"}


def test_decode_and_store_are_plain_functions(tmp_path: Path) -> None:
    import io

    import pytest
    from fastapi import HTTPException
    from PIL import Image

    from crux.collect.ingest_app import decode_image
    from crux.collect.ingest_settings import IngestSettings

    settings = IngestSettings(database_url=f"sqlite:///{tmp_path}/db.sqlite", storage_url=str(tmp_path / "store"))
    buf = io.BytesIO()
    Image.new("L", (7, 5)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), "image/png", settings) == (7, 5)
    with pytest.raises(HTTPException) as refused:  # a PNG declared as JPEG: only the declared decoder is tried
        decode_image(buf.getvalue(), "image/jpeg", settings)
    assert refused.value.status_code == 415

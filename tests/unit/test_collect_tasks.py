"""crux.collect.labeling without servers: labeling priority (NG first, most uncertain first) and task building for both
kinds (data keys, pre-annotations in Label Studio percent), and the image-URL check against the files root."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from crux.collect.labeling import (
    CollectError,
    captures_to_tasks,
    image_url_resolver,
    is_ng,
    margin,
    order_captures,
    prediction_for,
    priority_key,
    priority_label,
)
from crux.collect.records import CaptureRecord
from crux.collect.storage import ImageStore
from crux.config import ProjectSpec

DETECT = ProjectSpec(title="det", kind="detect", classes={"scratches": "#911eb4", "crazing": "#e6194b"})
CLASSIFY = ProjectSpec(
    title="cls",
    kind="classify",
    classes={"OK": "#3cb44b", "Crack": "#911eb4", "Break": "#f58231"},
    ok_class="OK",
    aliases={"MT_Crack": "Crack"},
)
T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.UTC)


def rec(capture_id: int, **values: Any) -> CaptureRecord:
    base: dict[str, Any] = {
        "id": capture_id,
        "station": "cam-1",
        "line": "line-a",
        "captured_at": T0 + dt.timedelta(seconds=capture_id),
        "received_at": T0,
        "sha256": f"{capture_id:064x}",
        "image_key": f"00/{capture_id:064x}.jpg",
        "content_type": "image/jpeg",
        "size_bytes": 1000,
        "width": 200,
        "height": 100,
        "original_name": None,
        "model_version": "v3",
        "prediction": None,
        "verdict": None,
        "scores": {},
        "boxes": [],
        "idempotency_key": None,
        "ls_project": None,
        "ls_task_id": None,
        "sent_at": None,
        "labeled_at": None,
    }
    base.update(values)
    return CaptureRecord(**base)


def url(record: CaptureRecord) -> str:
    return f"/img/{record.id}"


def test_margin_prefers_top2_gap_over_score() -> None:
    assert margin(rec(1, scores={"OK": 0.55, "Crack": 0.45})) == pytest.approx(0.10)
    assert margin(rec(2, scores={"Crack": 0.7})) == pytest.approx(0.7)
    assert margin(rec(3, boxes=[{"class": "scratches", "box": [0, 0, 5, 5], "score": 0.9}, {"score": 0.3}])) == 0.3
    assert margin(rec(4)) is None


def test_classify_order_ng_first_then_smallest_margin() -> None:
    records = [
        rec(1, verdict="ok", prediction="OK", scores={"OK": 0.51, "Crack": 0.49}),  # OK, very uncertain
        rec(2, verdict="ng", prediction="Crack", scores={"OK": 0.05, "Crack": 0.95}),  # NG, sure
        rec(3, verdict="ng", prediction="Crack", scores={"OK": 0.40, "Crack": 0.60}),  # NG, uncertain
        rec(4, verdict="ok", prediction="OK", scores={"OK": 0.99, "Crack": 0.01}),  # OK, sure
        rec(5, prediction="Break", scores={"OK": 0.2, "Break": 0.8}),  # no verdict: Break is not OK -> NG
        rec(6, model_version=None),  # nothing known: NG, unknown margin -> last of the NG group
    ]
    assert [r.id for r in order_captures(records, CLASSIFY)] == [3, 5, 2, 6, 1, 4]
    tasks = captures_to_tasks(records, CLASSIFY, url)
    assert [t["data"]["capture_id"] for t in tasks] == [3, 5, 2, 6, 1, 4]
    # The Data Manager column sorts the same way as the import order.
    priorities = [t["data"]["priority"] for t in tasks]
    assert priorities == sorted(priorities)


def test_detect_order_uses_box_scores_and_boxes_for_ng() -> None:
    box = {"class": "scratches", "box": [10.0, 20.0, 60.0, 90.0]}
    records = [
        rec(1, boxes=[]),  # model saw nothing: OK
        rec(2, boxes=[{**box, "score": 0.9}]),
        rec(3, boxes=[{**box, "score": 0.9}, {**box, "score": 0.35}]),
        rec(4, boxes=[], verdict="ng"),  # verdict wins
    ]
    assert not is_ng(records[0], DETECT) and is_ng(records[1], DETECT)
    assert [r.id for r in order_captures(records, DETECT)] == [3, 2, 4, 1]


def test_equal_priority_keeps_arrival_order() -> None:
    records = [rec(i, verdict="ng", scores={"Crack": 0.5}) for i in (7, 3, 5)]
    assert [r.id for r in order_captures(records, CLASSIFY)] == [3, 5, 7]
    assert priority_label(priority_key(records[0], CLASSIFY)) == "0-0.500000-000000000007"


def test_detect_task_data_and_percent_boxes() -> None:
    record = rec(
        9,
        original_name="frame-9.jpg",
        verdict="ng",
        boxes=[
            {"class": "scratches", "box": [20.0, 10.0, 120.0, 60.0], "score": 0.8},
            {"class": "unknown", "box": [0.0, 0.0, 5.0, 5.0], "score": 0.99},  # not a project class: dropped
            {"class": "crazing", "box": [150.0, 50.0, 200.5, 100.5], "score": 0.6},  # 1 px slack: clipped
        ],
    )
    (task,) = captures_to_tasks([record], DETECT, url)
    data = task["data"]
    assert data["image"] == "/img/9" and data["sha256"] == record.sha256 and data["original_name"] == "frame-9.jpg"
    assert (data["width"], data["height"], data["capture_id"], data["station"], data["line"]) == (
        200,
        100,
        9,
        "cam-1",
        "line-a",
    )
    assert dt.datetime.fromisoformat(data["captured_at"]) == record.captured_at
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == "v3" and prediction["score"] == pytest.approx(0.6)
    first, second = prediction["result"]
    assert first["id"] == "p0" and second["id"] == "p1"
    assert first["type"] == "rectanglelabels" and first["value"]["rectanglelabels"] == ["scratches"]
    assert first["value"]["x"] == pytest.approx(10.0) and first["value"]["y"] == pytest.approx(10.0)
    assert first["value"]["width"] == pytest.approx(50.0) and first["value"]["height"] == pytest.approx(50.0)
    assert first["score"] == pytest.approx(0.8) and first["original_width"] == 200
    assert second["value"]["x"] + second["value"]["width"] == pytest.approx(100.0)
    assert second["value"]["y"] + second["value"]["height"] == pytest.approx(100.0)


def test_detect_without_boxes_is_an_empty_prediction_unless_no_model() -> None:
    assert prediction_for(rec(1, boxes=[]), DETECT) == {"model_version": "v3", "result": []}
    assert prediction_for(rec(1, boxes=[], model_version=None), DETECT) is None


def test_classify_prediction_is_the_predicted_class() -> None:
    (task,) = captures_to_tasks([rec(1, prediction="Crack", scores={"OK": 0.3, "Crack": 0.7})], CLASSIFY, url)
    (prediction,) = task["predictions"]
    assert prediction["score"] == pytest.approx(0.7)
    assert prediction["result"] == [
        {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["Crack"]}, "score": 0.7}
    ]
    # Scores only: the arg-max class; an alias maps to its class; an unknown class gives no pre-annotation.
    assert prediction_for(rec(2, scores={"OK": 0.2, "Break": 0.8}), CLASSIFY)["result"][0]["value"] == {
        "choices": ["Break"]
    }
    assert prediction_for(rec(3, prediction="MT_Crack"), CLASSIFY)["result"][0]["value"] == {"choices": ["Crack"]}
    assert prediction_for(rec(4, prediction="Scratch"), CLASSIFY) is None
    assert "predictions" not in captures_to_tasks([rec(4, prediction="Scratch")], CLASSIFY, url)[0]
    assert captures_to_tasks([rec(4)], CLASSIFY, url)[0]["data"]["original_name"] == rec(4).image_key[3:]


def test_reason_is_passed_on_when_the_record_has_it() -> None:
    @dataclasses.dataclass(frozen=True)
    class WithReason(CaptureRecord):
        reason: str | None = None

    record = WithReason(**{**rec(1, model_version=None, boxes=[]).as_dict(), "reason": "sample"})
    (task,) = captures_to_tasks([record], DETECT, url)
    assert task["data"]["reason"] == "sample"


def test_local_store_urls_and_files_root(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path / "served" / "images"))
    resolve = image_url_resolver(store, tmp_path)
    assert resolve(rec(1)) == f"/data/local-files/?d=served/images/00/{1:064x}.jpg"
    with pytest.raises(CollectError, match="outside Label Studio's files root"):
        image_url_resolver(store, tmp_path / "elsewhere")
    with pytest.raises(CollectError, match="Label Studio runs elsewhere"):
        image_url_resolver(store, None)


def test_metadata_accepts_the_edge_reason() -> None:
    from pydantic import ValidationError

    from crux.collect import CaptureMetadata
    from crux.collect.ingest_server import capture_metadata

    assert CaptureMetadata.model_validate(capture_metadata("cam-1", "line-a", reason="uncertain")).reason == "uncertain"
    assert CaptureMetadata.model_validate(capture_metadata("cam-1", "line-a")).reason is None
    with pytest.raises(ValidationError):
        CaptureMetadata.model_validate(capture_metadata("cam-1", "line-a", reason="because"))


SEGMENT = ProjectSpec(
    title="seg",
    kind="segment",
    classes={"OK": "#3cb44b", "Crack": "#911eb4", "Break": "#f58231"},
    ok_class="OK",
)


def test_segment_prediction_pre_segments_the_capture() -> None:
    """The edge's regions (COCO RLE on their boxes) become brush results the project's converter decodes back to
    the same pixels, with the edge's class as the verdict; a region without a usable mask is skipped."""
    import numpy as np

    from crux.kinds import get_kind
    from crux.postprocess import rle_encode

    mask = np.zeros((100, 200), bool)
    mask[10:30, 40:90] = True
    boxes = [
        {"class": "Crack", "box": [40, 10, 90, 30], "score": 0.93, "mask": rle_encode(mask)},
        {"class": "Crack", "box": [1, 1, 5, 5], "score": 0.5},  # no mask
        {"class": "Crack", "box": [1, 1, 5, 5], "mask": rle_encode(np.ones((4, 4), bool))},  # another size
    ]
    prediction = prediction_for(rec(1, boxes=boxes, prediction="Crack", scores={"OK": 0.07, "Crack": 0.93}), SEGMENT)
    assert prediction is not None
    brush = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    verdict = [r for r in prediction["result"] if r["type"] == "choices"]
    assert len(brush) == 1 and brush[0]["score"] == 0.93 and verdict[0]["value"] == {"choices": ["Crack"]}
    (region,) = [lb for lb in get_kind("segment").from_results(prediction["result"], 200, 100) if lb.mask is not None]
    assert region.cls == "Crack" and np.array_equal(region.mask, mask)

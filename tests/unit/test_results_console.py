"""The results drill-down's pure pieces (crux.console.results) and the refusal records beside the releases
(crux.ship.refusals, written by a real refused publish to a local fsspec remote)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from crux.console import results as R


def test_a_refused_publish_is_recorded_with_its_failed_criterion(tmp_path: Path) -> None:
    from edge_support import exported

    from crux.ship.gate import GateConfig, GateLineConfig
    from crux.ship.publish import GateRefused, publish
    from crux.ship.refusals import read_refusals
    from crux.ship.releases import list_versions, remote_fs
    from crux.ship.signing import generate_private_key

    key, remote = generate_private_key(), tmp_path / "remote"
    export = exported(tmp_path, "classify", metrics={"macro_f1": 0.6})
    with pytest.raises(GateRefused):
        publish(str(remote), "l1", export, key, GateConfig(lines={"l1": GateLineConfig(min={"macro_f1": 0.9})}))
    fs, path = remote_fs(str(remote / "l1"), None)
    assert list_versions(fs, path) == [] and not (remote / "l1" / "current.json").exists()  # nothing published
    [record] = read_refusals(str(remote), "l1")
    assert record["metrics"]["macro_f1"] == 0.6 and record["gate"]["passed"] is False
    [failed] = record["failed"]
    assert (failed["metric"], failed["rule"], failed["threshold"], failed["source"]) == (
        "macro_f1", "min", 0.9, "gate.lines.l1.min",
    )  # fmt: skip
    assert R.criterion_text(failed) == "macro_f1 0.600 < min 0.900 (gate.lines.l1.min)"
    assert re.match(r"^\d{8}T\d{6}Z-[0-9a-f]{12}\.json$", record["name"])
    # Foreign files in the folder are not records.
    (remote / "l1" / "refused" / "notes.json").write_text("{}")
    assert len(read_refusals(str(remote), "l1")) == 1
    assert read_refusals(str(remote), "other") == []


def test_candidates_list_refusals_beside_versions_newest_first() -> None:
    versions = [
        {"version": 1, "complete": True, "published_at": "2026-01-01T10:00:00Z", "gate": {"passed": True}},
        {"version": 2, "complete": True, "published_at": "2026-01-03T10:00:00Z", "gate": {"passed": True}},
    ]
    failed = {"metric": "macro_f1", "rule": "min", "threshold": 0.8, "candidate": 0.5, "source": "kind"}
    refusals = [
        {"at": "2026-01-02T10:00:00+00:00", "metrics": {"macro_f1": 0.5}, "failed": [failed],
         "lineage": {"dataset_version": "abc"}}
    ]  # fmt: skip
    rows = R.candidates(versions, refusals)
    assert [(r["status"], r["version"]) for r in rows] == [("published", 2), ("refused", None), ("published", 1)]
    assert rows[1]["failed"][0]["metric"] == "macro_f1" and rows[1]["dataset_version"] == "abc"


def test_results_match_a_version_only_on_its_own_metrics() -> None:
    doc_metrics = {"accuracy": 0.8, "macro_f1": 0.81, "inspection.ng_recall": 0.83, "n_images": 30.0}
    same = {"accuracy": 0.8, "macro_f1": 0.81, "inspection": {"ng_recall": 0.83}, "per_class": {"a": {"f1": 1.0}}}
    assert R.same_evaluation(doc_metrics, same)
    assert not R.same_evaluation(doc_metrics, {**same, "macro_f1": 0.9})
    assert not R.same_evaluation(doc_metrics, {"accuracy": 0.8})  # one shared number proves nothing
    assert not R.same_evaluation(doc_metrics, None)


def test_cell_items_are_exactly_that_cell_misses_first() -> None:
    items = [
        {"index": 0, "actual": "a", "predicted": "b", "score": 0.3, "outcome": "misclassified"},
        {"index": 1, "actual": "a", "predicted": "b", "score": 0.9, "outcome": "misclassified"},
        {"index": 2, "actual": "a", "predicted": "a", "score": 0.9, "outcome": "correct"},
        {"index": 3, "actual": "b", "predicted": "b", "score": 0.9, "outcome": "correct"},
    ]
    doc = {"items": items, "worst_misses": [1, 0]}
    assert [r["index"] for r in R.cell_items(doc, "a", "b")] == [1, 0]
    assert [r["index"] for r in R.cell_items(doc, "a", "a")] == [2]
    assert R.cell_items(doc, "b", "a") == []
    assert [r["index"] for r in R.gallery_items(doc)] == [1, 0]


def test_operating_svg_marks_the_shipped_threshold_on_fixed_axes() -> None:
    curve = [{"threshold": t / 10, "ng_recall": 1 - t / 20, "false_reject_rate": 1 - t / 10} for t in range(11)]
    svg = R.operating_svg({"threshold": 0.5, "ng_recall": 0.75, "false_reject_rate": 0.5, "curve": curve})
    assert 'class="shipped"' in svg and 'data-threshold="0.5"' in svg and "shipped threshold 0.500" in svg
    assert svg.count("<polyline") == 1 and ">0<" in svg and ">1<" in svg  # 0..1 whatever the data
    # The marker sits where (false rejects 0.5, recall 0.75) falls inside the plot area.
    cx, cy = (float(v) for v in re.search(r'cx="([\d.]+)" cy="([\d.]+)"', svg).groups())  # type: ignore[union-attr]
    assert cx == pytest.approx(56 + 0.5 * (520 - 72)) and cy == pytest.approx(16 + 0.25 * (340 - 60))


def test_version_per_class_reads_classify_and_detect_cards() -> None:
    cls = R.version_per_class(
        {"per_class": {"ok": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10}}}, "classify"
    )
    assert cls == [
        {"class": "ok", "precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10, "ap50": None, "ap50_95": None}
    ]
    det = R.version_per_class({"per_class": {"spot": {"ap50": 0.4, "ap50_95": 0.2, "n_boxes": 5}}}, "detect")
    assert det[0]["ap50"] == 0.4 and det[0]["support"] == 5
    assert R.version_per_class({"auroc": 0.9}, "anomaly") == []


def test_load_results_rereads_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "l1" / "predictions.json"
    assert R.load_results(tmp_path, "l1") is None
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": 1, "items": []}))
    assert R.load_results(tmp_path, "l1") == {"format": 1, "items": []}
    path.write_text(json.dumps({"format": 1, "items": [{"index": 0}], "labels": []}))
    assert R.load_results(tmp_path, "l1")["items"] == [{"index": 0}]  # type: ignore[index]
    path.write_text("not json")
    assert R.load_results(tmp_path, "l1") is None

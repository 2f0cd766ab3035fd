"""The demo's last screen: caught / missed / right type per class and false rejects, from edge records."""

from __future__ import annotations

from crux.verdict import edge_verdict, verdict_lines


def test_detection_verdict_counts_caught_missed_types_and_false_rejects() -> None:
    truth = {"a.jpg": ["scratch"], "b.jpg": ["scratch", "spot"], "c.jpg": ["spot"], "d.jpg": [], "e.jpg": []}
    records = [
        {"image": "/f/a.jpg", "verdict": "NG", "boxes": [{"label": "scratch"}]},
        {"image": "/f/b.jpg", "verdict": "NG", "boxes": [{"label": "spot"}]},
        {"image": "/f/c.jpg", "verdict": "OK", "boxes": []},
        {"image": "/f/d.jpg", "verdict": "NG", "boxes": [{"label": "spot"}]},
        {"image": "/f/e.jpg", "verdict": "OK", "boxes": []},
        {"image": "/f/x.jpg", "error": "OSError: unreadable"},
    ]
    v = edge_verdict(records, truth, ["scratch", "spot"], "detect", name_of=lambda r: r["image"].rsplit("/", 1)[1])
    assert (v.rows["scratch"].frames, v.rows["scratch"].caught, v.rows["scratch"].right_type) == (2, 2, 1)
    assert v.rows["scratch"].wrong_as == {"spot": 1}
    assert (v.rows["spot"].frames, v.rows["spot"].caught, v.rows["spot"].missed, v.rows["spot"].right_type) == (
        2,
        1,
        1,
        1,
    )
    assert (v.ok_frames, v.false_rejects, v.false_reject_rate, v.errors) == (2, 1, 0.5, 1)
    text = "\n".join(verdict_lines(v))
    assert "False rejects (OK frames called NG): 1/2 (50.0%)" in text and "could not read: 1" in text


def test_classification_without_ok_class_reports_the_type() -> None:
    truth = {"a.jpg": ["crazing"], "b.jpg": ["crazing"], "c.jpg": ["patches"]}
    records = [
        {"image": "a.jpg", "verdict": "NG", "label": "crazing"},
        {"image": "b.jpg", "verdict": "NG", "label": "patches"},
        {"image": "c.jpg", "verdict": "NG", "label": "patches"},
    ]
    v = edge_verdict(records, truth, ["crazing", "patches"], "classify")
    assert v.recall == 1.0 and v.type_accuracy == 2 / 3 and v.false_reject_rate is None
    assert v.rows["crazing"].wrong_as == {"patches": 1}
    text = "\n".join(verdict_lines(v))
    assert "no OK class" in text and "none measurable" in text


def test_a_frame_rejected_by_the_threshold_with_ok_on_top_says_so() -> None:
    """A classify line with an OK class rejects at 1 - p(OK) >= threshold: the top class may still be OK. The
    verdict names that instead of a bare question mark."""
    from crux.verdict import edge_verdict

    records = [{"image": "a.jpg", "label": "OK", "verdict": "NG"}]
    verdict = edge_verdict(records, {"a.jpg": ["Crack"]}, ["OK", "Crack"], "classify", "OK")
    assert verdict.rows["Crack"].caught == 1
    assert verdict.rows["Crack"].wrong_as == {"OK (over the NG threshold)": 1}

"""Label config generation, project config validation and coordinate conversions."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crux.config import ConfigError, LabelStudioConfig, ProjectSpec, from_mapping
from crux.geometry import PixelBox, ls_percent_to_pixel, pixel_to_ls_percent, pixel_to_yolo, yolo_to_pixel
from crux.kinds import Label, get_kind
from crux.label.projects import classes_in_config

DETECT = {"title": "Steel", "kind": "detect", "classes": {"crazing": "#e6194b", "rolled-in_scale": "#3cb44b"}}
CLASSIFY = {
    "title": "Tiles & <co>",
    "kind": "classify",
    "ok_class": "OK",
    "classes": {"OK": "#3cb44b", "Crack": "#911eb4"},
    "aliases": {"MT_Free": "OK"},
}


def spec(data: dict) -> ProjectSpec:
    return from_mapping(ProjectSpec, data, "project")


def test_detect_label_config_lists_every_class_as_a_rectangle_label() -> None:
    xml = get_kind("detect").label_config(spec(DETECT))
    root = ET.fromstring(xml)
    control = root.find("RectangleLabels")
    assert control is not None and control.attrib["toName"] == "image"
    assert [(n.attrib["value"], n.attrib["background"]) for n in control] == list(DETECT["classes"].items())
    assert root.find("Image").attrib["value"] == "$image"
    assert classes_in_config(xml) == ["crazing", "rolled-in_scale"]


def test_classify_label_config_is_single_choice_and_escapes_the_title() -> None:
    xml = get_kind("classify").label_config(spec(CLASSIFY))
    root = ET.fromstring(xml)  # would raise on unescaped & or <
    assert root.find("Header").attrib["value"] == "Tiles & <co>"
    choices = root.find("Choices")
    assert choices.attrib["choice"] == "single-radio"
    assert [n.attrib["value"] for n in choices] == ["OK", "Crack"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "keypoints"}, "not a task kind"),
        ({"classes": {}}, "at least one class"),
        ({"classes": {"bad/name": "#000000"}}, "classes.bad/name"),
        ({"classes": {"a": "red"}}, "not #RRGGBB"),
        ({"ok_class": "Nope"}, "ok_class"),
        ({"aliases": {"MT_X": "Nope"}}, "aliases.MT_X"),
        ({"colour": "x"}, "unknown key(s) colour"),
    ],
)
def test_bad_project_config_is_rejected_with_the_key(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec({**CLASSIFY, **change})


def test_labelstudio_section_rejects_unknown_keys_and_bad_names() -> None:
    with pytest.raises(ConfigError, match=r"labelstudio: unknown key\(s\) prot"):
        from_mapping(LabelStudioConfig, {"prot": 1}, "labelstudio")
    with pytest.raises(ConfigError, match=r"labelstudio\.projects\.Bad Name"):
        from_mapping(LabelStudioConfig, {"projects": {"Bad Name": DETECT}}, "labelstudio")
    with pytest.raises(ConfigError, match="names use a-z"):  # `$` would let a trailing newline through
        from_mapping(LabelStudioConfig, {"projects": {"neu\n": DETECT}}, "labelstudio")
    with pytest.raises(ConfigError, match="expected an integer"):
        from_mapping(LabelStudioConfig, {"port": "80"}, "labelstudio")


def test_the_shipped_params_declare_neu_and_magnetic_tile() -> None:
    import yaml
    from conftest import REPO

    cfg = from_mapping(LabelStudioConfig, yaml.safe_load((REPO / "params.yaml").read_text())["labelstudio"], "ls")
    assert cfg.host == "127.0.0.1"
    assert cfg.project("neu-det").kind == "detect" and len(cfg.project("neu-det").classes) == 6
    tiles = cfg.project("magnetic-tile")
    assert (
        tiles.kind == "segment"
        and tiles.ok_class == "OK"
        and tiles.aliases["MT_Free"] == "OK"
        and len(tiles.classes) == 6
    )


sizes = st.integers(min_value=1, max_value=8000)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(cx=unit, cy=unit, w=unit, h=unit, width=sizes, height=sizes)
def test_yolo_pixel_round_trip(cx: float, cy: float, w: float, h: float, width: int, height: int) -> None:
    back = pixel_to_yolo(yolo_to_pixel(cx, cy, w, h, width, height), width, height)
    assert back == pytest.approx((cx, cy, w, h), abs=1e-9)


@given(x1=unit, y1=unit, dx=unit, dy=unit, width=sizes, height=sizes)
def test_label_studio_percent_round_trip(x1: float, y1: float, dx: float, dy: float, width: int, height: int) -> None:
    box = PixelBox(x1 * width, y1 * height, (x1 + dx) * width, (y1 + dy) * height)
    back = ls_percent_to_pixel(pixel_to_ls_percent(box, width, height), width, height)
    assert back.as_list() == pytest.approx(box.as_list(), abs=1e-6)


@given(width=sizes, height=sizes, boxes=st.lists(st.tuples(unit, unit, unit, unit), min_size=0, max_size=5))
def test_detect_results_round_trip_through_label_studio_form(width: int, height: int, boxes: list) -> None:
    kind = get_kind("detect")
    labels = [Label("crazing", yolo_to_pixel(cx, cy, w, h, width, height)) for cx, cy, w, h in boxes]
    back = kind.from_results(kind.to_results(labels, width, height), width, height)
    assert [lb.cls for lb in back] == [lb.cls for lb in labels]
    for got, want in zip(back, labels, strict=True):
        assert got.box.as_list() == pytest.approx(want.box.as_list(), abs=1e-6)


def test_rotated_rectangles_are_refused() -> None:
    with pytest.raises(ValueError, match="rotated"):
        ls_percent_to_pixel({"x": 1, "y": 1, "width": 2, "height": 2, "rotation": 30}, 100, 100)


def test_classify_results_round_trip() -> None:
    kind = get_kind("classify")
    results = kind.to_results([Label("Crack")], 10, 10, score=0.4)
    assert results[0]["score"] == 0.4
    assert kind.from_results(results, 10, 10) == [Label("Crack")]


def test_iou_of_pixel_boxes() -> None:
    from crux.geometry import iou

    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # degenerate boxes do not divide by zero

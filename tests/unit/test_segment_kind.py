"""The `segment` kind's label side: SDK brush RLE both ways, polygons, the verdict, the class mask."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crux import masks
from crux.config import ProjectSpec, from_mapping
from crux.kinds import Label, LabelError, get_kind

CLASSES = ("OK", "Crack", "Fray")
SEG = get_kind("segment")


def spec(ok_class: str | None = "OK") -> ProjectSpec:
    data = {"title": "Tiles", "kind": "segment", "classes": {c: "#112233" for c in CLASSES}, "ok_class": ok_class}
    return from_mapping(ProjectSpec, data, "p")


def test_label_config_has_brush_polygon_and_verdict_controls() -> None:
    root = ET.fromstring(SEG.label_config(spec()))
    brush = root.find("BrushLabels")
    polygon = root.find("PolygonLabels")
    verdict = root.find("Choices")
    assert brush is not None and brush.attrib["name"] == "mask" and brush.attrib["toName"] == "image"
    assert polygon is not None and polygon.attrib["name"] == "polygon"
    assert [lb.attrib["value"] for lb in brush] == ["Crack", "Fray"] == [lb.attrib["value"] for lb in polygon]
    assert verdict is not None and verdict.attrib["name"] == "verdict" and verdict.attrib["choice"] == "single-radio"
    assert "required" not in verdict.attrib
    assert [c.attrib["value"] for c in verdict] == list(CLASSES)
    # Without an OK class there is no verdict control: the painted pixels decide.
    assert ET.fromstring(SEG.label_config(spec(None))).find("Choices") is None


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.bool_,
        st.tuples(st.integers(1, 40), st.integers(1, 40)),
        elements=st.booleans(),
    ),
    st.sampled_from(["Crack", "Fray"]),
)
def test_brush_rle_round_trips_through_the_sdk_converter(mask: np.ndarray, cls: str) -> None:
    h, w = mask.shape
    results = SEG.to_results([Label(cls, mask=mask)], w, h)
    assert results[0]["type"] == "brushlabels" and results[0]["value"]["format"] == "rle"
    back = SEG.from_results(results, w, h)
    if not mask.any():
        assert back == []  # an empty region is no region
        return
    (label,) = back
    assert label.cls == cls and label.mask is not None and np.array_equal(label.mask, mask)
    assert label.box is not None and label.box.as_list() == list(masks.bbox(mask))  # type: ignore[arg-type]


def test_results_carry_stable_ids_the_verdict_and_scores() -> None:
    a = np.zeros((6, 8), bool)
    a[1:3, 1:3] = True
    results = SEG.to_results([Label("Crack", mask=a), Label("Fray", mask=~a), Label("Crack")], 8, 6, score=0.7)
    assert [r.get("id") for r in results] == ["r0", "r1", None]
    assert results[2] == {
        "from_name": "verdict",
        "to_name": "image",
        "type": "choices",
        "value": {"choices": ["Crack"]},
        "score": 0.7,
    }
    assert {r["original_width"] for r in results[:2]} == {8}
    with pytest.raises(LabelError, match="is 8x6 px, the image 9x6"):
        SEG.to_results([Label("Crack", mask=a)], 9, 6)


def test_polygons_cover_the_pixel_centres_inside() -> None:
    # Label Studio percent points of a 40 x 20 box from (4, 2) to (12, 10) pixels.
    w, h = 40, 20
    rect = [[10.0, 10.0], [30.0, 10.0], [30.0, 50.0], [10.0, 50.0]]
    result = {
        "id": "p1",
        "type": "polygonlabels",
        "from_name": "polygon",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "value": {"points": rect, "polygonlabels": ["Fray"], "closed": True},
    }
    (label,) = SEG.from_results([result], w, h)
    expected = np.zeros((h, w), bool)
    expected[2:10, 4:12] = True
    assert label.cls == "Fray" and np.array_equal(label.mask, expected)
    # A right triangle: pixel centres on or below the diagonal y = x (within the 10 x 10 square).
    tri = masks.rasterize_polygon([(0, 0), (10, 10), (0, 10)], 12, 12)
    y, x = np.mgrid[0:12, 0:12] + 0.5
    assert np.array_equal(tri, (y >= x) & (x < 10) & (y < 10))


def test_contours_rasterise_back_to_their_regions() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        h, w = rng.integers(8, 50, size=2)
        y, x = np.mgrid[0:h, 0:w]
        cx, cy, rx, ry = rng.integers(0, w), rng.integers(0, h), rng.integers(1, 12), rng.integers(1, 12)
        region = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
        for part in masks.components(region):
            back = np.zeros_like(part)
            for poly in masks.polygons(part):
                back |= masks.rasterize_polygon(poly, int(w), int(h))
            assert (back & part).sum() / (back | part).sum() >= 0.9


def test_verdict_is_the_choice_else_the_largest_class_else_ok() -> None:
    small = np.zeros((10, 10), bool)
    small[0, 0:3] = True
    large = np.zeros((10, 10), bool)
    large[5:9, 5:9] = True
    regions = [Label("Crack", mask=small), Label("Fray", mask=large)]
    kept = SEG.dataset_labels(regions, 10, 10, CLASSES, "OK")
    assert kept.verdict == "Fray" and kept.labels == tuple(regions)
    assert kept.class_mask is not None and kept.class_mask[0, 0] == 2 and kept.class_mask[6, 6] == 3
    assert SEG.dataset_labels([*regions, Label("Crack")], 10, 10, CLASSES, "OK").verdict == "Crack"
    empty = SEG.dataset_labels([], 10, 10, CLASSES, "OK")
    assert empty.verdict == "OK" and empty.class_mask is not None and not empty.class_mask.any()
    assert SEG.dataset_labels([], 10, 10, CLASSES, None).verdict is None
    with pytest.raises(LabelError, match="OK class"):
        SEG.dataset_labels([Label("OK", mask=small)], 10, 10, CLASSES, "OK")
    with pytest.raises(LabelError, match="10x10 px, the image 12x10"):
        SEG.dataset_labels(regions, 12, 10, CLASSES, "OK")


def test_overlaps_paint_in_class_order_whatever_the_result_order() -> None:
    a = np.zeros((4, 4), bool)
    a[0:3, 0:3] = True
    b = np.zeros((4, 4), bool)
    b[1:4, 1:4] = True
    one = SEG.dataset_labels([Label("Fray", mask=b), Label("Crack", mask=a)], 4, 4, CLASSES, "OK").class_mask
    two = SEG.dataset_labels([Label("Crack", mask=a), Label("Fray", mask=b)], 4, 4, CLASSES, "OK").class_mask
    assert one is not None and two is not None
    assert masks.encode_png(one) == masks.encode_png(two)
    assert one[1, 1] == 3  # Fray (later class) over Crack


def test_class_mask_png_is_8_bit_single_channel_and_content_addressed(tmp_path) -> None:
    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 2:5] = 2
    png = masks.encode_png(mask)
    assert np.array_equal(masks.decode_png(png), mask)
    rel = masks.write_mask(tmp_path, png)
    assert rel.startswith("masks/") and rel.endswith(".png") and (tmp_path / rel).read_bytes() == png
    assert masks.write_mask(tmp_path, masks.encode_png(mask.copy())) == rel
    assert masks.mask_iou(mask, mask) == 1.0
    other = mask.copy()
    other[1, 2] = 0
    assert masks.mask_iou(mask, other) == pytest.approx(5 / 6)


def test_source_masks_binarise_edges_and_refuse_what_is_not_a_mask() -> None:
    soft = np.zeros((20, 20), np.uint8)
    soft[2:8, 2:8] = 255
    soft[2, 2:8] = 130  # interpolated edges, as in the public Magnetic Tile masks
    soft[7, 2:8] = 90
    region = masks.binary_source_mask(soft, "L")
    assert region.sum() == 30 and region[2, 3] and not region[7, 3]
    assert masks.binary_source_mask((soft > 0).astype(np.uint8), "L").sum() == 36  # 0/1 masks
    with pytest.raises(masks.MaskError, match="single-channel"):
        masks.binary_source_mask(np.zeros((4, 4, 3), np.uint8), "RGB")
    with pytest.raises(masks.MaskError, match="grey"):
        masks.binary_source_mask(np.full((10, 10), 77, np.uint8), "L")

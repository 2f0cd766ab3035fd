from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from crux.data.formats import FormatError, export_dataset, export_names
from crux.data.manifest import ClassesInfo, ItemLabel, ManifestItem
from crux.data.store import relative_image_path, sha256_hex
from crux.data.synthetic_exports import image_bytes
from crux.geometry import yolo_to_pixel

DETECT = ClassesInfo(kind="detect", classes=("crazing", "patches"))


def dataset(root: Path, kind: str = "detect") -> list[ManifestItem]:
    items = []
    for n, split in enumerate(["train", "train", "val", "test"], 1):
        data = image_bytes(n, 80, 60)
        sha = sha256_hex(data)
        rel = relative_image_path(sha, "jpg")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        if kind == "detect":
            labels = (ItemLabel("crazing", (1.5, 2.25, 30.0, 40.0)), ItemLabel("patches", (40.0, 10.0, 79.0, 59.5)))
        else:
            labels = (ItemLabel("crazing" if n % 2 else "patches"),)
        # two tasks share the original name "same.jpg": file names must not collide
        name = "same.jpg" if n <= 2 else f"img{n}.png"
        items.append(ManifestItem(sha, 100 + n, rel, 80, 60, name, split, labels if n != 4 else ()))
    return items


def test_export_names_are_unique_and_keep_the_store_extension(tmp_path: Path) -> None:
    names = export_names(dataset(tmp_path))
    assert names == {101: "same_t101.jpg", 102: "same_t102.jpg", 103: "img3.jpg", 104: "img4.jpg"}


def test_yolo_export_round_trips_boxes(tmp_path: Path) -> None:
    items = dataset(tmp_path / "src")
    export_dataset(tmp_path / "src", items, DETECT, tmp_path / "out", "yolo")
    out = tmp_path / "out"
    assert (out / "train" / "images" / "same_t101.jpg").read_bytes() == (tmp_path / "src" / items[0].image).read_bytes()
    lines = (out / "train" / "labels" / "same_t101.txt").read_text().splitlines()
    boxes = []
    for line in lines:
        cls, *vals = line.split()
        b = yolo_to_pixel(*map(float, vals), 80, 60)
        boxes.append((DETECT.classes[int(cls)], tuple(round(v, 3) for v in b.as_list())))
    assert boxes == [(lb.cls, lb.box) for lb in items[0].labels]
    assert (out / "test" / "labels" / "img4.txt").read_text() == ""
    assert "names:" in (out / "data.yaml").read_text()
    assert (out / "classes.txt").read_text() == "crazing\npatches\n"


def test_coco_export_loads_in_pycocotools(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    items = dataset(tmp_path / "src")
    summary = export_dataset(tmp_path / "src", items, DETECT, tmp_path / "out", "coco")
    assert summary.per_split == {"train": 2, "val": 1, "test": 1}
    coco = COCO(str(tmp_path / "out" / "train" / "annotations.json"))
    assert sorted(coco.getImgIds()) == [101, 102]
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[101], catIds=coco.getCatIds(catNms=["crazing"])))[0]
    assert ann["bbox"] == [1.5, 2.25, 28.5, 37.75]
    img = coco.loadImgs([101])[0]
    assert (tmp_path / "out" / "train" / img["file_name"]).is_file()


def test_voc_folders_and_ls_json_exports(tmp_path: Path) -> None:
    items = dataset(tmp_path / "src")
    export_dataset(tmp_path / "src", items, DETECT, tmp_path / "voc", "voc")
    root = ET.parse(tmp_path / "voc" / "train" / "Annotations" / "same_t101.xml").getroot()
    objs = [(o.findtext("name"), float(o.find("bndbox").findtext("xmin"))) for o in root.iter("object")]  # type: ignore[union-attr]
    assert objs == [("crazing", 1.5), ("patches", 40.0)]
    assert (tmp_path / "voc" / "val" / "ImageSets" / "Main" / "val.txt").read_text() == "img3\n"

    export_dataset(tmp_path / "src", items, DETECT, tmp_path / "folders", "folders")
    assert (tmp_path / "folders" / "train" / "crazing" / "same_t101.jpg").is_file()
    assert (tmp_path / "folders" / "train" / "patches" / "same_t101.jpg").is_file()
    assert (tmp_path / "folders" / "test" / "_empty" / "img4.jpg").is_file()

    export_dataset(tmp_path / "src", items, DETECT, tmp_path / "ls", "ls-json")
    tasks = json.loads((tmp_path / "ls" / "train" / "tasks.json").read_text())
    value = tasks[0]["annotations"][0]["result"][0]["value"]
    assert value["rectanglelabels"] == ["crazing"] and value["x"] == pytest.approx(1.5 / 80 * 100)
    assert tasks[0]["data"]["image"] == "images/same_t101.jpg" and tasks[0]["data"]["sha256"] == items[0].sha256


def test_classification_exports_and_refusals(tmp_path: Path) -> None:
    info = ClassesInfo(kind="classify", classes=("crazing", "patches"))
    items = dataset(tmp_path / "src", "classify")
    export_dataset(tmp_path / "src", items, info, tmp_path / "yolo", "yolo")
    assert (tmp_path / "yolo" / "train" / "crazing" / "same_t101.jpg").is_file()
    assert (tmp_path / "yolo" / "train" / "patches" / "same_t102.jpg").is_file()
    with pytest.raises(FormatError, match="voc holds boxes"):
        export_dataset(tmp_path / "src", items, info, tmp_path / "voc", "voc")
    with pytest.raises(FormatError, match="not empty"):
        export_dataset(tmp_path / "src", items, info, tmp_path / "yolo", "coco")
    with pytest.raises(FormatError, match="unknown format"):
        export_dataset(tmp_path / "src", items, info, tmp_path / "x", "tfrecord")

"""Segment datasets without a server: snapshot (class masks), health, diff, export formats and their import."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from crux import masks
from crux.config import ProjectSpec, from_mapping
from crux.data.diff import diff_manifests, diff_to_json, diff_to_markdown
from crux.data.formats import export_dataset
from crux.data.health import HealthOptions, check_dataset
from crux.data.manifest import ClassesInfo, read_classes, read_manifest
from crux.data.snapshot import SnapshotError, build_dataset
from crux.data.store import make_fetcher
from crux.data.synthetic_exports import Ann, image_bytes, local_url, ls_task, write_export, write_image
from crux.kinds import Label, get_kind
from crux.label import importer

CLASSES = ("OK", "Crack", "Fray")
RATIOS = (0.5, 0.25, 0.25)
W, H = 48, 40


def spec() -> ProjectSpec:
    data = {
        "title": "Tiles",
        "kind": "segment",
        "classes": {c: "#123456" for c in CLASSES},
        "ok_class": "OK",
        "aliases": {"MT_Free": "OK", "MT_Crack": "Crack", "MT_Fray": "Fray"},
    }
    return from_mapping(ProjectSpec, data, "p")


def blob(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    region = np.zeros((H, W), bool)
    region[y1:y2, x1:x2] = True
    return region


# task id → labels; 1-4 have regions, 5 and 6 are OK, 7 has a verdict that differs from its largest region
TRUTH: dict[int, list[Label]] = {
    1: [Label("Crack", mask=blob(2, 3, 10, 30))],
    2: [Label("Fray", mask=blob(20, 5, 40, 15)), Label("Crack", mask=blob(1, 1, 4, 4))],
    3: [Label("Crack", mask=blob(5, 5, 15, 15)), Label("Fray", mask=blob(10, 10, 20, 20))],  # overlap
    4: [Label("Fray", mask=blob(0, 0, W, 8))],
    5: [],
    6: [Label("OK")],
    7: [Label("Fray", mask=blob(0, 0, 30, 30)), Label("Crack", mask=blob(35, 35, 40, 40)), Label("Crack")],
}


class World:
    def __init__(self, tmp: Path) -> None:
        self.files = tmp / "files"
        self.data = tmp / "repo" / "data"
        self.export = tmp / "export.json"
        self.tasks: dict[int, dict[str, Any]] = {}
        for task_id, labels in TRUTH.items():
            self.put(task_id, labels)

    def put(self, task_id: int, labels: list[Label], seed: int | None = None) -> None:
        rel = f"imgs/{task_id}.jpg"
        sha = write_image(self.files, rel, image_bytes(seed or task_id, W, H))
        task = ls_task(task_id, local_url(rel), sha256=sha, original_name=f"{task_id}.jpg", width=W, height=H,
                       annotations=[Ann(labels)], kind="segment")  # fmt: skip
        self.tasks[task_id] = task

    def build(self, out: Path | None = None) -> Path:
        write_export(self.export, self.tasks.values())
        out = out or self.data
        fetch = make_fetcher(files_root=self.files)
        build_dataset(self.export, out, "segment", CLASSES, "OK", fetch, RATIOS, previous_dir=out, project="tiles")
        return out


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def expected_mask(labels: list[Label]) -> np.ndarray:
    out = np.zeros((H, W), np.uint8)
    for label in sorted((lb for lb in labels if lb.mask is not None), key=lambda lb: CLASSES.index(lb.cls)):
        out[label.mask] = CLASSES.index(label.cls) + 1
    return out


def load(root: Path, rel: str) -> np.ndarray:
    with Image.open(root / rel) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_snapshot_writes_one_content_addressed_class_mask_per_item(world: World) -> None:
    root = world.build()
    items = {i.task_id: i for i in read_manifest(root / "manifest.jsonl")}
    assert sorted(items) == sorted(TRUTH)
    for task_id, labels in TRUTH.items():
        item = items[task_id]
        assert item.mask is not None and item.mask.startswith("masks/")
        data = (root / item.mask).read_bytes()
        assert item.mask == masks.mask_relpath(hashlib.sha256(data).hexdigest())
        assert np.array_equal(load(root, item.mask), expected_mask(labels)), task_id
        regions = [lb for lb in labels if lb.mask is not None]
        assert sorted((lb.cls, lb.box) for lb in item.labels) == sorted(
            (lb.cls, masks.bbox(lb.mask))
            for lb in regions  # type: ignore[arg-type]
        )
    assert [items[t].verdict for t in sorted(items)] == ["Crack", "Fray", "Fray", "Fray", "OK", "OK", "Crack"]
    assert items[5].mask == items[6].mask  # the all-background mask of this size, stored once
    assert read_classes(root / "classes.json") == ClassesInfo("segment", CLASSES, "OK")
    line = (root / "manifest.jsonl").read_text().splitlines()[0]
    assert '"mask": "masks/' in line and '"verdict": ' in line
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    world.build()
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert before == after  # byte-identical for an unchanged project


def test_polygon_results_are_rasterised_into_the_mask(world: World) -> None:
    polygon = {
        "id": "poly1",
        "type": "polygonlabels",
        "from_name": "polygon",
        "to_name": "image",
        "original_width": W,
        "original_height": H,
        "value": {"points": [[25.0, 25.0], [75.0, 25.0], [75.0, 75.0], [25.0, 75.0]], "polygonlabels": ["Crack"]},
    }
    world.tasks[5]["annotations"][0]["result"] = [polygon]
    items = {i.task_id: i for i in read_manifest(world.build() / "manifest.jsonl")}
    expected = np.zeros((H, W), np.uint8)
    expected[10:30, 12:36] = 2
    assert np.array_equal(load(world.data, items[5].mask), expected)  # type: ignore[arg-type]
    assert items[5].verdict == "Crack" and [(lb.cls, lb.box) for lb in items[5].labels] == [
        ("Crack", (12.0, 10.0, 36.0, 30.0))
    ]


def test_a_region_of_another_size_fails_naming_the_task(world: World) -> None:
    result = world.tasks[1]["annotations"][0]["result"][0]
    result["original_width"] = W + 1  # the RLE no longer fits either: a malformed result
    with pytest.raises(SnapshotError, match="task 1"):
        world.build()


def test_health_flags_contradictions_specks_and_broken_masks(world: World) -> None:
    speck = blob(0, 0, 30, 30)
    speck[38, 45] = True  # one stray pixel
    world.put(8, [Label("Crack")])  # NG verdict, nothing painted
    world.put(9, [Label("OK"), Label("Fray", mask=blob(3, 3, 9, 9))])  # OK verdict over a painted defect
    world.put(10, [Label("Fray", mask=speck)])
    root = world.build()
    items = read_manifest(root / "manifest.jsonl")
    info = read_classes(root / "classes.json")
    broken = next(i for i in items if i.task_id == 1)
    items = [i for i in items if i.task_id != 1]
    items.append(dataclasses.replace(broken, mask="masks/00/missing.png"))
    findings = {f.code: f for f in check_dataset(root, items, info, HealthOptions(min_class_count=1, speck_px=4))}
    assert findings["ng_empty_mask"].task_ids == (8,) and findings["ng_empty_mask"].severity == "warning"
    assert findings["ok_with_mask"].task_ids == (9,)
    assert findings["speck"].task_ids == (10,)
    assert findings["missing_mask"].task_ids == (1,) and findings["missing_mask"].severity == "error"
    assert "empty_labels" not in findings and "tiny_box" not in findings
    clean = [i for i in read_manifest(root / "manifest.jsonl") if i.task_id in TRUTH]
    assert not any(f.severity == "error" for f in check_dataset(root, clean, info, HealthOptions(min_class_count=1)))


def test_diff_reports_masks_relabelled_below_the_iou_threshold(world: World, tmp_path: Path) -> None:
    old_root = world.build(tmp_path / "old")
    world.put(1, [Label("Crack", mask=blob(2, 3, 10, 31))])  # one row more: a touch-up (IoU 0.97)
    world.put(2, [Label("Fray", mask=blob(20, 5, 25, 15)), Label("Crack", mask=blob(1, 1, 4, 4))])  # IoU ~ 0.3
    world.put(6, [Label("Crack")])  # verdict OK → Crack, mask unchanged
    new_root = world.build(tmp_path / "new")
    old, new = read_manifest(old_root / "manifest.jsonl"), read_manifest(new_root / "manifest.jsonl")
    d = diff_manifests(
        old,
        new,
        CLASSES,
        read_old_mask=lambda rel: (old_root / rel).read_bytes(),
        read_new_mask=lambda rel: (new_root / rel).read_bytes(),
        mask_relabel_iou=0.9,
    )
    assert [c.task_id for c in d.relabelled] == [2, 6]
    by_id = {c.task_id: c for c in d.relabelled}
    assert by_id[2].mask_iou == pytest.approx(59 / 209) and by_id[6].mask_iou == 1.0
    assert diff_to_json(d)["relabelled"][0]["mask_iou"] == pytest.approx(0.2823, abs=1e-4)
    text = diff_to_markdown(d)
    assert "task 2 `2.jpg`: Crack, Fray (regions: 1 added, 1 removed) (mask IoU 0.28)" in text
    assert "task 6 `6.jpg`: OK → Crack" in text
    # Without mask readers any changed mask counts.
    assert [c.task_id for c in diff_manifests(old, new, CLASSES).relabelled] == [1, 2, 6]


@pytest.mark.parametrize("fmt", ["coco", "masks", "yolo"])
def test_exports_import_back_with_the_same_pixels(world: World, tmp_path: Path, fmt: str) -> None:
    root = world.build()
    items = read_manifest(root / "manifest.jsonl")
    dest = tmp_path / "export"
    export_dataset(root, items, read_classes(root / "classes.json"), dest, fmt)
    label_format = {"coco": "coco", "masks": "masks", "yolo": "yolo"}[fmt]
    scan = importer.scan_source(str(dest), spec(), label_format)
    assert len(scan.items) == len(items)
    by_sha = {item.sha256: item for item in scan.items}
    kind = get_kind("segment")
    for item in items:
        labels = list(by_sha[item.sha256].labels or ())
        kept = kind.dataset_labels(labels, W, H, CLASSES, "OK")
        original = load(root, item.mask)  # type: ignore[arg-type]
        assert kept.verdict == item.verdict, (fmt, item.task_id)
        if fmt == "yolo":
            # Polygons: each region within the rasterisation error of its contour.
            for value in np.unique(original[original > 0]):
                a, b = original == value, kept.class_mask == value
                assert (a & b).sum() / (a | b).sum() >= 0.9
        else:
            assert np.array_equal(kept.class_mask, original), (fmt, item.task_id)
    if fmt == "coco":
        from pycocotools.coco import COCO

        coco = COCO(str(next(dest.glob("*/annotations.json"))))
        assert all("counts" in a["segmentation"] for a in coco.dataset["annotations"])


def write_mt(root: Path, folder: str, name: str, mask: np.ndarray, image_size: tuple[int, int] = (W, H)) -> None:
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / f"{name}.jpg").write_bytes(image_bytes(hash(name) % 1000, *image_size))
    Image.fromarray(mask).save(root / folder / f"{name}.png")


def test_magnetic_tile_layout_imports_regions_and_the_folder_verdict(tmp_path: Path) -> None:
    mask = np.zeros((H, W), np.uint8)
    mask[5:10, 5:10] = 255
    mask[20:25, 30:40] = 255
    write_mt(tmp_path, "MT_Crack", "a", mask)
    write_mt(tmp_path, "MT_Free", "b", np.zeros((H, W), np.uint8))
    scan = importer.scan_source(str(tmp_path), spec(), "masks")
    labels = {item.rel: item.labels for item in scan.items}
    crack = labels["MT_Crack/a.jpg"]
    assert [(lb.cls, lb.box.as_list() if lb.box else None) for lb in crack] == [  # type: ignore[union-attr]
        ("Crack", [5.0, 5.0, 10.0, 10.0]),
        ("Crack", [30.0, 20.0, 40.0, 25.0]),
        ("Crack", None),  # the verdict
    ]
    assert [lb.cls for lb in labels["MT_Free/b.jpg"]] == ["OK"]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: write_mt(r, "MT_Crack", "big", np.zeros((H + 1, W), np.uint8)), r"MT_Crack/big.png: mask is 48x41"),
        (
            lambda r: write_mt(r, "MT_Crack", "rgb", np.zeros((H, W, 3), np.uint8)),
            r"MT_Crack/rgb.png: not a single-channel mask \(mode RGB\)",
        ),
        (
            lambda r: write_mt(r, "MT_Crack", "grey", np.full((H, W), 100, np.uint8)),
            r"MT_Crack/grey.png: not a 0/255 mask",
        ),
        (
            lambda r: Image.fromarray(np.zeros((H, W), np.uint8)).save(r / "MT_Crack" / "lonely.png"),
            r"MT_Crack/lonely.png: a mask without its image",
        ),
        (
            lambda r: write_mt(r, "MT_Rust", "x", np.zeros((H, W), np.uint8)),
            r"MT_Rust/x.jpg: folder 'MT_Rust' is not a class",
        ),
        (
            lambda r: (r / "MT_Crack" / "nomask.jpg").write_bytes(image_bytes(5, W, H)),
            r"MT_Crack/nomask.jpg: no mask nomask.png",
        ),
        (
            lambda r: write_mt(r, "MT_Free", "dirty", np.full((H, W), 255, np.uint8)),
            r"MT_Free/dirty.png: marks defect pixels, but its folder is the OK class",
        ),
    ],
    ids=["size", "rgb", "grey", "no-image", "unknown-class", "no-mask", "ok-with-defect"],
)
def test_bad_mask_sources_name_the_file(tmp_path: Path, breakage: Any, message: str) -> None:
    good = np.zeros((H, W), np.uint8)
    good[1:5, 1:5] = 255
    write_mt(tmp_path, "MT_Crack", "good", good)
    breakage(tmp_path)
    with pytest.raises(importer.ImportValidationError, match=message):
        importer.scan_source(str(tmp_path), spec(), "masks")


def test_mask_predictions_become_regions_and_a_verdict(tmp_path: Path) -> None:
    mask = np.zeros((H, W), np.uint8)
    mask[2:6, 2:9] = 3  # Fray by class index
    Image.fromarray(mask).save(tmp_path / "pred.png")
    binary = np.where(mask > 0, 255, 0).astype(np.uint8)
    Image.fromarray(binary).save(tmp_path / "bin.png")
    lines = [
        {"image": "MT_Fray/a.jpg", "model_version": "v1", "score": 0.8, "mask": "pred.png", "label": "Fray"},
        {"image": "MT_Fray/b.jpg", "model_version": "v1", "score": 0.7, "mask": "bin.png", "label": "Crack"},
        {"image": "MT_Free/c.jpg", "model_version": "v1", "score": 0.9, "label": "OK"},
    ]
    path = tmp_path / "preds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    preds = importer.read_predictions(path, spec())
    a, b, c = preds["MT_Fray/a.jpg"], preds["MT_Fray/b.jpg"], preds["MT_Free/c.jpg"]
    assert [lb.cls for lb in a.labels] == ["Fray", "Fray"] and a.labels[0].mask.sum() == 28  # type: ignore[union-attr]
    assert [lb.cls for lb in b.labels] == ["Crack", "Crack"] and [lb.cls for lb in c.labels] == ["OK"]
    payload = importer._prediction_payload("segment", a, W, H)
    assert [r["type"] for r in payload["result"]] == ["brushlabels", "choices"]
    assert payload["result"][0]["id"] == "p0" and payload["result"][0]["score"] == 0.8
    # A mask of the wrong size is named when matched to its image.
    wider = importer.SourceItem("x", "MT_Fray/a.jpg", "s", W + 2, H, None)
    scan = importer.ScanResult(root=str(tmp_path), items=[wider])
    with pytest.raises(importer.ImportValidationError, match=r"preds.jsonl:1: mask is 48x40 px, the image"):
        importer.match_predictions(scan, {"MT_Fray/a.jpg": a})
    path.write_text(json.dumps({**lines[0], "mask": "bin.png", "label": None}) + "\n")
    with pytest.raises(importer.ImportValidationError, match=r"a 0/255 mask needs a defect class"):
        importer.read_predictions(path, spec())


def test_folders_go_by_verdict_ls_json_keeps_pixels_and_box_formats_refuse(world: World, tmp_path: Path) -> None:
    root = world.build()
    items = read_manifest(root / "manifest.jsonl")
    info = read_classes(root / "classes.json")
    export_dataset(root, items, info, tmp_path / "folders", "folders")
    placed = {p.stem: p.parent.name for p in (tmp_path / "folders").glob("*/*/*.jpg")}
    assert placed == {str(i.task_id): i.verdict for i in items}
    export_dataset(root, items, info, tmp_path / "ls", "ls-json")
    tasks = [t for s in ("train", "val", "test") for t in json.loads((tmp_path / "ls" / s / "tasks.json").read_text())]
    kind = get_kind("segment")
    for task in tasks:
        item = next(i for i in items if i.task_id == task["meta"]["crux_task_id"])
        labels = kind.from_results(task["annotations"][0]["result"], W, H)
        kept = kind.dataset_labels(labels, W, H, CLASSES, "OK")
        assert np.array_equal(kept.class_mask, load(root, item.mask)) and kept.verdict == item.verdict  # type: ignore[arg-type]
    with pytest.raises(Exception, match="voc holds boxes"):
        export_dataset(root, items, info, tmp_path / "voc", "voc")
    with pytest.raises(Exception, match="only a segment dataset"):
        export_dataset(root, items, ClassesInfo("detect", CLASSES), tmp_path / "m", "masks")


def test_class_mask_folder_import_refuses_values_without_a_class(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("OK\nCrack\n")
    (tmp_path / "images" / "a.jpg").write_bytes(image_bytes(1, W, H))
    mask = np.zeros((H, W), np.uint8)
    mask[3:6, 3:6] = 2
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    (item,) = importer.scan_source(str(tmp_path), spec(), "masks").items
    assert [lb.cls for lb in item.labels or ()] == ["Crack"]
    mask[0, 0] = 3
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    with pytest.raises(importer.ImportValidationError, match=r"masks/a.png: pixel value\(s\) \[3\] name no class"):
        importer.scan_source(str(tmp_path), spec(), "masks")
    mask[0, 0] = 1
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    with pytest.raises(importer.ImportValidationError, match=r"masks/a.png: pixels of the OK class"):
        importer.scan_source(str(tmp_path), spec(), "masks")

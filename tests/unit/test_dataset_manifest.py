from __future__ import annotations

import json
from pathlib import Path

import pytest

from crux.data.manifest import (
    ClassesInfo,
    DatasetInfo,
    ExcludedItem,
    ItemLabel,
    ManifestError,
    ManifestItem,
    count_items,
    read_classes,
    read_dataset_info,
    read_manifest,
    round_box,
    write_classes,
    write_dataset_info,
    write_manifest,
)


def item(sha: str, task_id: int, split: str = "train", labels: tuple[ItemLabel, ...] = ()) -> ManifestItem:
    return ManifestItem(
        sha256=sha * 64 if len(sha) == 1 else sha,
        task_id=task_id,
        image=f"images/{sha[:2] * (2 // len(sha[:2]))}/{sha}.jpg",
        width=200,
        height=100,
        original_name=f"{task_id}.jpg",
        split=split,
        labels=labels,
        annotators=("a@x",),
        annotation_ids=(task_id * 10,),
    )


def test_manifest_lines_are_sorted_keys_sorted_and_end_with_newline(tmp_path: Path) -> None:
    items = [
        item("b", 2, labels=(ItemLabel("z", (1, 2, 3, 4)), ItemLabel("a", (5.00049, 6, 7, 8)))),
        item("a", 1),
    ]
    path = tmp_path / "manifest.jsonl"
    write_manifest(path, items)
    text = path.read_text()
    assert text.endswith("}\n")
    lines = text.splitlines()
    assert [json.loads(line)["task_id"] for line in lines] == [1, 2]
    first = json.loads(lines[1])
    assert list(first) == sorted(first)
    # labels canonical: sorted by class, boxes rounded to 3 decimals
    assert first["labels"] == [{"box": [5.0, 6.0, 7.0, 8.0], "class": "a"}, {"box": [1.0, 2.0, 3.0, 4.0], "class": "z"}]
    assert set(first) == {
        "annotation_ids", "annotators", "conflicted", "height", "image", "labels",
        "original_name", "sha256", "split", "task_id", "width",
    }  # fmt: skip


def test_manifest_round_trip_and_byte_identical_rewrite(tmp_path: Path) -> None:
    items = [item("c", 3, "test", (ItemLabel("x", round_box([0.1234, -0.0001, 10, 20])),)), item("a", 1, "val")]
    write_manifest(tmp_path / "m1.jsonl", items)
    back = read_manifest(tmp_path / "m1.jsonl")
    write_manifest(tmp_path / "m2.jsonl", reversed(back))
    assert (tmp_path / "m1.jsonl").read_bytes() == (tmp_path / "m2.jsonl").read_bytes()
    assert sorted(back, key=lambda i: i.task_id)[1].labels[0].box == (0.123, 0.0, 10.0, 20.0)
    assert "-0.0" not in (tmp_path / "m1.jsonl").read_text()


def test_same_image_under_two_tasks_is_two_lines_but_a_repeated_task_is_an_error(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.jsonl", [item("a", 2), item("a", 1)])
    assert [i.task_id for i in read_manifest(tmp_path / "m.jsonl")] == [1, 2]
    with pytest.raises(ManifestError, match="duplicate"):
        write_manifest(tmp_path / "m.jsonl", [item("a", 1), item("a", 1)])


def test_malformed_manifest_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"sha256": "x"}\n')
    with pytest.raises(ManifestError, match=":1:"):
        read_manifest(path)
    path.write_text("not json\n")
    with pytest.raises(ManifestError, match="not JSON"):
        read_manifest(path)


def test_classes_and_dataset_json_round_trip(tmp_path: Path) -> None:
    info = ClassesInfo(kind="classify", classes=("ok", "crack"), ok_class="ok")
    write_classes(tmp_path / "classes.json", info)
    assert read_classes(tmp_path / "classes.json") == info
    data = DatasetInfo(project="p", counts={"images": 2}, excluded=(ExcludedItem(9, "x"), ExcludedItem(3, "y")))
    write_dataset_info(tmp_path / "dataset.json", data)
    raw = json.loads((tmp_path / "dataset.json").read_text())
    assert [e["task_id"] for e in raw["excluded"]] == [3, 9]
    assert read_dataset_info(tmp_path / "dataset.json").project == "p"


def test_counts_include_every_class_and_split() -> None:
    items = [item("a", 1, "train", (ItemLabel("x", (0, 0, 1, 1)), ItemLabel("x", (1, 1, 2, 2)))), item("b", 2, "test")]
    counts = count_items(items, ["x", "y"])
    assert counts["images_per_class"] == {"x": 1, "y": 0}
    assert counts["boxes_per_class"] == {"x": 2, "y": 0}
    assert counts["images_per_split"] == {"train": 1, "val": 0, "test": 1}
    assert counts["empty"] == 1

from __future__ import annotations

from crux.data.diff import box_changes, commit_message, diff_manifests, diff_to_json, diff_to_markdown
from crux.data.manifest import ItemLabel, ManifestItem


def item(
    task_id: int, labels: list[tuple[str, tuple[float, float, float, float] | None]], who: str = "a@x"
) -> ManifestItem:
    return ManifestItem(
        sha256=f"{task_id:064x}",
        task_id=task_id,
        image=f"images/00/{task_id:064x}.jpg",
        width=100,
        height=100,
        original_name=f"img{task_id}.jpg",
        split="train" if task_id % 2 else "test",
        labels=tuple(ItemLabel(c, b) for c, b in labels),
        annotators=(who,),
    )


def test_box_changes_match_moves_additions_removals_and_class_changes() -> None:
    old = [ItemLabel("a", (0, 0, 10, 10)), ItemLabel("a", (50, 50, 60, 60)), ItemLabel("b", (80, 80, 90, 90))]
    new = [ItemLabel("a", (1, 0, 11, 10)), ItemLabel("c", (80, 80, 90, 90)), ItemLabel("a", (20, 20, 30, 30))]
    changes = box_changes(old, new)
    assert (changes.moved, changes.added, changes.removed, changes.reclassed) == (1, 1, 1, (("b", "c"),))


def test_diff_names_added_removed_and_relabelled_items() -> None:
    old = [item(1, [("a", (0, 0, 10, 10))]), item(2, [("b", (0, 0, 5, 5))]), item(3, [("a", (0, 0, 5, 5))])]
    new = [
        item(1, [("a", (0, 0, 10, 10))]),
        item(2, [("a", (0, 0, 5, 5))], who="b@x"),
        item(4, [("b", (1, 1, 5, 5))], who="c@x"),
    ]
    d = diff_manifests(old, new, ["a", "b"])
    assert [c.task_id for c in d.added] == [4]
    assert [c.task_id for c in d.removed] == [3]
    assert [(c.task_id, c.old_classes, c.new_classes) for c in d.relabelled] == [(2, ("b",), ("a",))]
    assert d.annotators == ("b@x", "c@x")
    assert d.per_class() == {"a": (0, 1, 1), "b": (1, 0, 1)}
    md = diff_to_markdown(d, "v1", "v2")
    assert "task 2 `img2.jpg`: b → a (boxes: b→a)" in md
    assert "task 4 `img4.jpg`: b — c@x" in md
    assert "task 3 `img3.jpg`: a" in md
    assert "| a | 1 | 0 → 1 (+1) | 0 | 0 | 2 | 1 → 2 (+1) |" not in md  # split columns are train, val, test
    assert "| a | 2 → 1 (-1) | 0 | 0 → 1 (+1) | 2 | +0 −1 ~1 |" in md
    js = diff_to_json(d)
    assert js["changed"] and js["relabelled"][0]["boxes"]["reclassed"] == [["b", "a"]]
    assert js["counts"]["after"]["b"]["total"] == 1
    msg = commit_message(d, "neu", len(new))
    assert msg.splitlines()[0] == "data(neu): 3 items, +1 −1 ~1"
    assert "a: +0 −1 ~1" in msg and "b: +1 −0 ~1" in msg


def test_no_change_is_not_changed() -> None:
    items = [item(1, [("a", None)])]
    d = diff_manifests(items, list(items))
    assert not d.changed
    assert "No labeled item changed." in diff_to_markdown(d)


def test_an_image_under_a_new_task_id_is_the_same_item() -> None:
    """A restored project gives every image a new task id: the diff compares the labels, not removed + added."""
    import dataclasses

    old = [item(1, [("a", (0, 0, 10, 10))]), item(2, [("b", None)]), item(3, [("a", None)])]
    new = [
        dataclasses.replace(old[0], task_id=11),
        dataclasses.replace(old[1], task_id=12, labels=(ItemLabel("a"),)),
        dataclasses.replace(old[2], task_id=13),
        dataclasses.replace(old[2], task_id=14),  # two new tasks of one image: not told apart
    ]
    d = diff_manifests(old, new, ["a", "b"])
    assert d.retasked == ((1, 11, old[0].sha256), (2, 12, old[1].sha256))
    assert [(c.task_id, c.old_classes, c.new_classes) for c in d.relabelled] == [(12, ("b",), ("a",))]
    assert [c.task_id for c in d.added] == [13, 14] and [c.task_id for c in d.removed] == [3]
    assert "2 image(s) moved to new task ids" in diff_to_markdown(d)
    assert diff_to_json(d)["retasked"][0] == {"new_task_id": 11, "old_task_id": 1, "sha256": old[0].sha256}
    unchanged = diff_manifests(old[:1], new[:1])
    assert not unchanged.changed and unchanged.retasked

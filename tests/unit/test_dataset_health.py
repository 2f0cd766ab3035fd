from __future__ import annotations

from pathlib import Path

from crux.data.health import HealthOptions, check_dataset, dhash, findings_to_text, has_errors, near_duplicate_pairs
from crux.data.manifest import ClassesInfo, ItemLabel, ManifestItem
from crux.data.store import relative_image_path, sha256_hex
from crux.data.synthetic_exports import image_bytes

DETECT = ClassesInfo(kind="detect", classes=("a", "b", "rare"))


def put(root: Path, data: bytes, task_id: int, labels: tuple[ItemLabel, ...], conflicted: bool = False) -> ManifestItem:
    sha = sha256_hex(data)
    rel = relative_image_path(sha, "jpg")
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
    return ManifestItem(sha, task_id, rel, 64, 48, f"{task_id}.jpg", "train", labels, conflicted=conflicted)


def test_health_reports_each_problem_with_task_ids(tmp_path: Path) -> None:
    ok = (ItemLabel("a", (1, 1, 20, 20)),)
    items = [put(tmp_path, image_bytes(n), n, ok) for n in range(1, 12)]
    items.append(put(tmp_path, image_bytes(1), 21, ok))  # exact duplicate of task 1
    # near duplicate of task 2: same picture, re-encoded
    items.append(put(tmp_path, image_bytes(2)[:-2] + image_bytes(2)[-2:] + b"\x00", 22, ok))
    items.append(put(tmp_path, image_bytes(30), 30, ()))  # empty
    items.append(put(tmp_path, image_bytes(31), 31, (ItemLabel("a", (10, 10, 10, 20)),)))  # degenerate
    items.append(put(tmp_path, image_bytes(32), 32, (ItemLabel("b", (50, 10, 70, 20)),)))  # out of bounds (w=64)
    items.append(put(tmp_path, image_bytes(33), 33, (ItemLabel("b", (5, 5, 7, 30)),)))  # tiny
    items.append(put(tmp_path, image_bytes(34), 34, (ItemLabel("zzz", (5, 5, 30, 30)),)))  # unknown class
    items.append(put(tmp_path, image_bytes(35), 35, ok, conflicted=True))
    missing = put(tmp_path, image_bytes(36), 36, ok)
    (tmp_path / missing.image).unlink()
    items.append(missing)

    findings = check_dataset(tmp_path, items, DETECT, HealthOptions(min_class_count=5))
    by_code = {f.code: f for f in findings}
    assert by_code["missing_image"].task_ids == (36,) and by_code["missing_image"].severity == "error"
    assert by_code["exact_duplicate"].task_ids == (1, 21)
    assert by_code["near_duplicate"].task_ids == (2, 22)
    assert by_code["empty_labels"].task_ids == (30,) and by_code["empty_labels"].severity == "warning"
    assert by_code["degenerate_box"].task_ids == (31,)
    assert by_code["box_out_of_bounds"].task_ids == (32,)
    assert by_code["tiny_box"].task_ids == (33,)
    assert by_code["unknown_class"].task_ids == (34,)
    assert by_code["conflicted"].task_ids == (35,)
    assert {f.message for f in findings if f.code == "rare_class"} == {
        "class 'b' has 2 image(s), fewer than 5",
        "class 'rare' has 0 image(s), fewer than 5",
    }
    assert has_errors(findings)
    assert findings[0].severity == "error"
    assert "ERROR   missing_image" in findings_to_text(findings)


def test_clean_classification_dataset_has_no_errors(tmp_path: Path) -> None:
    info = ClassesInfo(kind="classify", classes=("ok", "ng"), ok_class="ok")
    items = [put(tmp_path, image_bytes(n, 32, 32), n, (ItemLabel("ok" if n % 2 else "ng"),)) for n in range(40, 50)]
    findings = check_dataset(tmp_path, items, info, HealthOptions(min_class_count=2))
    assert not has_errors(findings), findings_to_text(findings)


def test_dhash_and_pairs(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(image_bytes(5))
    h = dhash(tmp_path / "a.jpg")
    assert 0 <= h < 2**64
    pairs = near_duplicate_pairs({"x": 0b1111, "y": 0b0111, "z": 2**63}, max_bits=1)
    assert pairs == [("x", "y", 1)]


def test_health_finds_what_prepare_refuses_and_never_leaves_the_dataset(tmp_path: Path) -> None:
    """Issue #23: sha256 mismatches, unknown splits, NaN boxes and repeated task ids are errors; a manifest path that
    leaves the dataset folder is an error and the file behind it is never opened."""
    import dataclasses

    root = tmp_path / "data"
    ok = (ItemLabel("a", (1, 1, 20, 20)),)
    items = [put(root, image_bytes(n), n, ok) for n in range(1, 4)]
    (root / items[0].image).write_bytes(image_bytes(99))  # edited after the snapshot
    items[1] = dataclasses.replace(items[1], split="holdout")
    items.append(put(root, image_bytes(4), 4, (ItemLabel("a", (float("nan"), 1, 20, 20)),)))
    items.append(dataclasses.replace(items[2], labels=()))  # task 3 twice
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(image_bytes(5))
    (root / "images" / "link.jpg").symlink_to(secret)
    outside = [
        dataclasses.replace(items[2], task_id=7, image="../secret.jpg"),
        dataclasses.replace(items[2], task_id=8, image=str(secret)),
        dataclasses.replace(items[2], task_id=9, image="images/link.jpg"),
        dataclasses.replace(items[2], task_id=10, mask="../../etc/passwd"),
    ]
    before = secret.stat().st_atime_ns
    findings = check_dataset(root, items + outside, DETECT, HealthOptions(min_class_count=0))
    by_code = {f.code: f for f in findings if f.severity == "error"}
    assert by_code["sha256_mismatch"].task_ids == (1,)
    assert by_code["unknown_split"].task_ids == (2,)
    assert by_code["non_finite_box"].task_ids == (4,)
    assert by_code["duplicate_item"].task_ids == (3,)
    assert by_code["path_outside_dataset"].task_ids == (7, 8, 9, 10)
    assert secret.stat().st_atime_ns == before  # not read (hash, decode) through any of the four

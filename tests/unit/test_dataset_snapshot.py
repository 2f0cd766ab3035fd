from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from crux.data.manifest import read_manifest
from crux.data.snapshot import SnapshotError, build_dataset, export_snapshot_to_file
from crux.data.store import make_fetcher
from crux.data.synthetic_exports import Ann, box, image_bytes, local_url, ls_task, write_export, write_image
from crux.kinds import Label

CLASSES = ("crazing", "patches", "scratches")
RATIOS = (0.6, 0.2, 0.2)


class World:
    """A files root with images, an export and a dataset folder."""

    def __init__(self, tmp: Path) -> None:
        self.files = tmp / "files"
        self.data = tmp / "repo" / "data"
        self.export = tmp / "export.json"
        self.tasks: list[dict[str, Any]] = []
        self.fetched: list[str] = []
        fetch = make_fetcher(files_root=self.files)

        def counting(url: str) -> bytes:
            self.fetched.append(url)
            return fetch(url)

        self.fetch = counting

    def add(
        self, task_id: int, anns: list[Ann], *, seed: int | None = None, w: int = 64, h: int = 48, kind: str = "detect"
    ) -> str:
        rel = f"imgs/{task_id}.jpg"
        sha = write_image(self.files, rel, image_bytes(task_id if seed is None else seed, w, h))
        self.tasks.append(
            ls_task(
                task_id,
                local_url(rel),
                sha256=sha,
                original_name=f"{task_id}.jpg",
                width=w,
                height=h,
                annotations=anns,
                kind=kind,
            )
        )
        return sha

    def build(self, kind: str = "detect", **kwargs: Any) -> Any:
        write_export(self.export, self.tasks)
        self.fetched.clear()
        return build_dataset(
            self.export,
            self.data,
            kind,
            CLASSES,
            None,
            self.fetch,
            RATIOS,
            previous_dir=self.data,
            project="p",
            **kwargs,
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_snapshot_writes_pixel_boxes_counts_and_excluded(world: World) -> None:
    world.add(1, [Ann([box("crazing", 1.5, 2.25, 30, 40), box("patches", 10, 10, 20, 20)])])
    world.add(2, [Ann([], cancelled=True)])  # skipped
    world.tasks.append(ls_task(3, local_url("imgs/none.jpg"), sha256=None, original_name="n.jpg", width=1, height=1))
    world.tasks.append(
        ls_task(
            4,
            local_url("imgs/missing.jpg"),
            sha256=None,
            original_name="m.jpg",
            width=9,
            height=9,
            annotations=[Ann([box("crazing", 1, 1, 2, 2)])],
        )
    )
    (world.files / "imgs" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    world.tasks.append(
        ls_task(
            5,
            local_url("imgs/corrupt.jpg"),
            sha256=None,
            original_name="c.jpg",
            width=9,
            height=9,
            annotations=[Ann([box("crazing", 1, 1, 2, 2)])],
        )
    )
    summary = world.build()
    assert (summary.items, summary.skipped, summary.unlabeled) == (1, 1, 1)
    assert {e.task_id: e.reason.split(":")[0] for e in summary.excluded} == {4: "not found", 5: "image does not decode"}
    items = read_manifest(world.data / "manifest.jsonl")
    assert [(lb.cls, lb.box) for lb in items[0].labels] == [
        ("crazing", (1.5, 2.25, 30.0, 40.0)),
        ("patches", (10.0, 10.0, 20.0, 20.0)),
    ]
    assert (items[0].width, items[0].height, items[0].annotators) == (64, 48, ("admin@crux.local",))
    assert (world.data / items[0].image).is_file()
    info = json.loads((world.data / "dataset.json").read_text())
    assert info["counts"]["skipped"] == 1 and info["counts"]["excluded"] == 2
    assert [e["task_id"] for e in info["excluded"]] == [4, 5]
    assert json.loads((world.data / "classes.json").read_text()) == {
        "classes": list(CLASSES),
        "kind": "detect",
        "ok_class": None,
    }
    # nothing but the kept image in the store, and no temp folders left
    assert len(list((world.data / "images").rglob("*.*"))) == 1
    assert sorted(p.name for p in world.data.parent.iterdir()) == ["data"]


def test_latest_annotation_wins_and_disagreeing_annotators_mark_conflicted(world: World) -> None:
    world.add(
        1,
        [
            Ann([box("crazing", 0, 0, 10, 10)], updated_at="2026-01-01T00:00:00Z", annotation_id=11),
            Ann([box("patches", 0, 0, 10, 10)], updated_at="2026-01-02T00:00:00Z", annotation_id=12),
            Ann([], cancelled=True, updated_at="2026-01-03T00:00:00Z", annotation_id=13),
        ],
    )
    world.add(
        2,
        [
            Ann([box("crazing", 0, 0, 10, 10)], annotation_id=21),
            Ann(
                [box("scratches", 0, 0, 10, 10)],
                annotator="b@x",
                user_id=2,
                annotation_id=22,
                updated_at="2026-12-01T00:00:00Z",
            ),
        ],
    )
    world.add(
        3,
        [
            Ann([box("crazing", 0, 0, 10, 10)], annotation_id=31),
            Ann([box("crazing", 0.5, 0, 10.5, 10)], annotator="b@x", user_id=2, annotation_id=32),
        ],
    )
    world.build()
    items = {i.task_id: i for i in read_manifest(world.data / "manifest.jsonl")}
    assert items[1].labels[0].cls == "patches" and items[1].annotation_ids == (12,) and not items[1].conflicted
    assert items[2].labels[0].cls == "scratches" and items[2].conflicted
    assert items[2].annotators == ("a@x", "admin@crux.local")[::-1][::-1] or items[2].annotators == (
        "admin@crux.local",
        "b@x",
    )
    assert items[2].annotation_ids == (21, 22)
    assert not items[3].conflicted  # same class, boxes overlap: agreement


def test_classification_labels_have_no_box(world: World) -> None:
    world.add(1, [Ann([Label("patches")])], kind="classify")
    world.build(kind="classify")
    (item,) = read_manifest(world.data / "manifest.jsonl")
    assert [(lb.cls, lb.box) for lb in item.labels] == [("patches", None)]


def test_unchanged_project_gives_byte_identical_files_and_fetches_nothing(world: World) -> None:
    for n in range(1, 8):
        world.add(n, [Ann([box(CLASSES[n % 3], n, n, n + 10, n + 12)])])
    first = world.build()
    assert first.fetched == 7
    snapshot = {p.relative_to(world.data): p.read_bytes() for p in world.data.rglob("*") if p.is_file()}
    second = world.build()
    assert (second.fetched, second.reused) == (0, 7) and world.fetched == []
    assert {p.relative_to(world.data): p.read_bytes() for p in world.data.rglob("*") if p.is_file()} == snapshot


def test_incremental_snapshot_fetches_only_new_images_and_keeps_splits(world: World) -> None:
    for n in range(1, 21):
        world.add(n, [Ann([box("crazing", 1, 1, 5, 5)])])
    world.build()
    before = {i.sha256: i.split for i in read_manifest(world.data / "manifest.jsonl")}
    for n in range(21, 24):
        world.add(n, [Ann([box("patches", 1, 1, 5, 5)])])
    summary = world.build()
    assert (summary.fetched, summary.reused) == (3, 20) and len(world.fetched) == 3
    after = {i.sha256: i.split for i in read_manifest(world.data / "manifest.jsonl")}
    assert all(after[sha] == split for sha, split in before.items())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda t: t["annotations"][0]["result"][0]["value"].update(rectanglelabels=["rust"]),
            "task 1: unknown class 'rust'",
        ),
        (lambda t: t["annotations"][0]["result"][0]["value"].pop("x"), "task 1: malformed rectanglelabels"),
        (lambda t: t["annotations"][0].update(result="oops"), "task 1: annotation result is not a list"),
        (lambda t: t.update(data="x"), "export item #0 is not a Label Studio task"),
    ],
)
def test_bad_results_fail_naming_the_task_and_leave_data_untouched(world: World, mutate: Any, message: str) -> None:
    world.add(1, [Ann([box("crazing", 1, 1, 5, 5)])])
    world.build()
    before = (world.data / "manifest.jsonl").read_bytes()
    mutate(world.tasks[0])
    with pytest.raises(SnapshotError, match=message):
        world.build()
    assert (world.data / "manifest.jsonl").read_bytes() == before
    assert sorted(p.name for p in world.data.parent.iterdir()) == ["data"]


def test_malformed_json_and_non_array_exports_are_clear_errors(world: World, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1, "data": {}}, {"id": 2, ')
    with pytest.raises(SnapshotError, match="malformed JSON after 1 tasks"):
        build_dataset(bad, world.data, "detect", CLASSES, None, world.fetch, RATIOS)
    bad.write_text('{"detail": "Authentication credentials were not provided."}')
    with pytest.raises(SnapshotError, match="expected a JSON array"):
        build_dataset(bad, world.data, "detect", CLASSES, None, world.fetch, RATIOS)
    assert not world.data.exists()


def test_a_changed_image_is_excluded_with_its_task_id(world: World) -> None:
    world.add(1, [Ann([box("crazing", 1, 1, 5, 5)])])
    (world.files / "imgs" / "1.jpg").write_bytes(image_bytes(99))
    summary = world.build()
    assert summary.items == 0 and summary.excluded[0].task_id == 1
    assert "changed since import" in summary.excluded[0].reason


# --------------------------------------------------------------------------------------------------
# export_snapshot_to_file against a fake SDK client


class FakeExports:
    def __init__(self, plan: list[str], body: bytes = b"[]") -> None:
        self.plan = plan  # per call: "ok", "connect" (ConnectError), "die" (dies mid-download), "failed"
        self.body = body
        self.deleted: list[int] = []
        self.calls: list[str] = []

    def _step(self, what: str) -> str:
        self.calls.append(what)
        step = self.plan.pop(0) if self.plan else "ok"
        if step == "connect":
            raise httpx.ConnectError("connection refused")
        return step

    def create(self, id: int, **kwargs: Any) -> Any:
        step = self._step("create")
        assert kwargs["serialization_options"]["annotations__completed_by"] == {"only_id": False}
        return SimpleNamespace(id=7, status="failed" if step == "failed" else "created")

    def get(self, id: int, export_pk: int) -> Any:
        self._step("get")
        return SimpleNamespace(id=export_pk, status="completed")

    def download(self, id: int, export_pk: int, **kwargs: Any) -> Iterator[bytes]:
        step = self._step("download")
        yield self.body[:3]
        if step == "die":
            raise httpx.RemoteProtocolError("peer closed connection")
        yield self.body[3:]

    def delete(self, id: int, export_pk: int) -> None:
        self.deleted.append(export_pk)


def client(exports: FakeExports) -> Any:
    return SimpleNamespace(projects=SimpleNamespace(exports=exports))


def test_export_streams_to_disk_with_retries(tmp_path: Path) -> None:
    body = json.dumps([{"id": 1, "data": {}}]).encode()
    exports = FakeExports(["connect", "ok", "ok", "die", "ok"], body)
    dest = export_snapshot_to_file(client(exports), 1, tmp_path / "e.json", sleep=lambda s: None)
    assert dest.read_bytes() == body
    assert exports.calls == ["create", "create", "get", "download", "download"]
    assert exports.deleted == [7]
    assert not (tmp_path / "e.json.part").exists()


def test_export_gives_up_after_bounded_retries_with_a_clear_error(tmp_path: Path) -> None:
    exports = FakeExports(["connect"] * 10)
    with pytest.raises(SnapshotError, match="after 3 attempts: ConnectError"):
        export_snapshot_to_file(client(exports), 1, tmp_path / "e.json", retries=2, sleep=lambda s: None)
    assert exports.calls == ["create"] * 3
    exports = FakeExports(["ok", "ok", "die", "die", "die"])
    with pytest.raises(SnapshotError, match="downloading export 7"):
        export_snapshot_to_file(client(exports), 1, tmp_path / "e.json", retries=2, sleep=lambda s: None)
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "e.json.part").exists()


def test_export_reports_a_failed_server_side_export(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="failed on the server"):
        export_snapshot_to_file(client(FakeExports(["failed"])), 1, tmp_path / "e.json", sleep=lambda s: None)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no such process any more (pids are not reused this fast)


def test_work_folders_of_a_killed_snapshot_are_removed_by_the_next(world: World) -> None:
    import os

    from crux.data.snapshot import clean_stale

    world.add(1, [Ann([box("scratches", 1, 1, 10, 10)])])
    world.build()
    parent = world.data.parent
    dead = _dead_pid()
    stale = [parent / f".data.building-{dead}-abc", parent / ".data.building-k2j3h4", parent / f".data.old-{dead}"]
    for d in stale:
        (d / "images").mkdir(parents=True)
    live = parent / f".data.building-{os.getpid()}-live"  # another snapshot still at work: left alone
    live.mkdir()
    world.build()
    assert [d for d in stale if d.exists()] == [] and live.is_dir()
    assert (world.data / "dataset.json").is_file()
    # Killed between the two renames: data/ was moved aside and the new one never arrived. It is put back.
    os.replace(world.data, parent / f".data.old-{dead}")
    assert clean_stale(world.data) == []
    assert (world.data / "dataset.json").is_file() and not (parent / f".data.old-{dead}").exists()


def test_dvcignore_lists_the_work_folders(tmp_path: Path) -> None:
    from crux.data.versioning import ensure_dvcignore

    repo_root = Path(__file__).resolve().parents[2]
    assert {".*.building-*", ".*.old-*"} <= set((repo_root / ".dvcignore").read_text().splitlines())
    (tmp_path / ".dvcignore").write_text("# mine\nfoo")
    ensure_dvcignore(tmp_path)
    ensure_dvcignore(tmp_path)  # idempotent
    assert (tmp_path / ".dvcignore").read_text().splitlines()[0:2] == ["# mine", "foo"]
    assert (tmp_path / ".dvcignore").read_text().count(".*.old-*") == 1


def test_the_prediction_a_label_was_made_from_is_kept(world: World) -> None:
    """accepted / edited items keep their parent pre-annotation (for `crux project restore`); others keep none."""
    from crux.kinds import get_kind

    kind = get_kind("detect")
    for task_id, drawn in ((1, box("crazing", 1, 1, 20, 20)), (2, box("patches", 5, 5, 30, 30)), (3, None)):
        world.add(task_id, [Ann([drawn or box("scratches", 2, 2, 9, 9)])])
        if drawn is None:
            continue  # drawn from scratch: no prediction
        predicted = kind.to_results([box("crazing", 1, 1, 20, 20)], 64, 48)
        world.tasks[-1]["predictions"] = [
            {"id": 70 + task_id, "model_version": "v7", "score": 0.8, "result": predicted}
        ]
        world.tasks[-1]["annotations"][0]["parent_prediction"] = 70 + task_id
    world.build()
    items = {i.task_id: i for i in read_manifest(world.data / "manifest.jsonl")}
    assert [items[n].provenance for n in (1, 2, 3)] == ["accepted", "edited", "human"]
    assert items[1].prediction is not None and items[2].prediction is not None and items[3].prediction is None
    assert items[2].prediction.model_version == "v7" and items[2].prediction.score == 0.8
    assert [(lb.cls, lb.box) for lb in items[2].prediction.labels] == [("crazing", (1.0, 1.0, 20.0, 20.0))]

"""Snapshots of a real Label Studio project (fixtures `ls_client`, `ls_files_root` from tests/conftest.py)."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from crux.data import versioning as V
from crux.data.manifest import read_manifest
from crux.data.snapshot import SnapshotError, build_dataset, export_snapshot_to_file
from crux.data.store import make_fetcher
from crux.geometry import yolo_to_pixel
from crux.kinds import Label, get_kind

pytestmark = pytest.mark.integration

NEU = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "neu-det"
RATIOS = (0.6, 0.2, 0.2)


def _label_config(classes: list[str]) -> str:
    labels = "".join(f'<Label value="{c}"/>' for c in classes)
    image = '<Image name="image" value="$image"/>'
    return f'<View>{image}<RectangleLabels name="label" toName="image">{labels}</RectangleLabels></View>'


def _neu_tasks(files_root: Path, per_class: int) -> tuple[list[str], list[dict[str, Any]], dict[str, list[Label]]]:
    classes = [c.strip() for c in (NEU / "classes.txt").read_text().splitlines() if c.strip()]
    kind = get_kind("detect")
    tasks, truth = [], {}
    for cls in classes:
        for path in sorted((NEU / "images").glob(f"{cls}_*.jpg"))[:per_class]:
            rel = f"neu-snap/{path.name}"
            (files_root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, files_root / rel)
            data = path.read_bytes()
            labels = []
            for line in (NEU / "labels" / f"{path.stem}.txt").read_text().splitlines():
                c, *vals = line.split()
                labels.append(Label(classes[int(c)], yolo_to_pixel(*map(float, vals), 200, 200)))
            sha = hashlib.sha256(data).hexdigest()
            truth[sha] = labels
            data_ = {"image": f"/data/local-files/?d={rel}", "sha256": sha, "original_name": path.name,
                     "width": 200, "height": 200}  # fmt: skip
            tasks.append({"data": data_, "annotations": [{"result": kind.to_results(labels, 200, 200)}]})
    return classes, tasks, truth


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_snapshot_relabel_and_version_cycle(
    ls_client: Any, ls_files_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not NEU.exists():
        pytest.skip("NEU dataset not present")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "site-cache"))
    classes, tasks, truth = _neu_tasks(ls_files_root, per_class=3)
    project = ls_client.projects.create(title="crux dataset snapshot test", label_config=_label_config(classes))
    ls_client.projects.import_tasks(id=project.id, request=tasks, return_task_ids=True)

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@crux.local")
    _git(repo, "config", "user.name", "t")
    V.init_repo(repo)
    V.set_remote(repo, str(tmp_path / "remote"))
    fetch = make_fetcher(files_root=ls_files_root)

    def snapshot() -> Any:
        export = export_snapshot_to_file(ls_client, project.id, tmp_path / "export.json")
        build_dataset(export, repo / "data", "detect", classes, None, fetch, RATIOS, repo / "data", project="neu")
        return V.commit_version(repo, project="neu")

    first = snapshot()
    assert first is not None and first.message.startswith(f"data(neu): {len(tasks)} items, +{len(tasks)}")
    items = read_manifest(repo / "data" / "manifest.jsonl")
    assert len(items) == len(tasks)
    for item in items:
        expected = sorted((lb.cls, lb.box.as_list()) for lb in truth[item.sha256])  # type: ignore[union-attr]
        got = sorted((lb.cls, list(lb.box)) for lb in item.labels)  # type: ignore[arg-type]
        assert [c for c, _ in got] == [c for c, _ in expected]
        for (_, a), (_, b) in zip(got, expected, strict=True):
            assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 0.5

    # Relabel two tasks through the SDK: the next version names exactly those.
    changed = sorted(items, key=lambda i: i.task_id)[:2]
    kind = get_kind("detect")
    for item in changed:
        new_cls = next(c for c in classes if c != item.labels[0].cls)
        labels = [Label(new_cls, lb.box and _box(lb.box)) for lb in item.labels]
        ls_client.annotations.update(id=item.annotation_ids[-1], result=kind.to_results(labels, 200, 200))
    second = snapshot()
    assert second is not None
    assert [c.task_id for c in second.diff.relabelled] == [i.task_id for i in changed]
    assert not second.diff.added and not second.diff.removed

    # Nothing changed in Label Studio: no new version.
    assert snapshot() is None


def _box(b: tuple[float, float, float, float]) -> Any:
    from crux.geometry import PixelBox

    return PixelBox(*b)


def test_unreachable_label_studio_fails_clearly_and_leaves_data_untouched(tmp_path: Path) -> None:
    from label_studio_sdk import LabelStudio

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.jsonl").write_text("previous\n")
    client = LabelStudio(base_url=f"http://127.0.0.1:{port}", api_key="x" * 40, timeout=2)
    with pytest.raises(SnapshotError, match="after 3 attempts"):
        export_snapshot_to_file(client, 1, tmp_path / "export.json", retries=2, backoff_s=0.01)
    assert (data / "manifest.jsonl").read_text() == "previous\n"
    assert not (tmp_path / "export.json").exists()

"""Real git and real DVC in a temporary repository, with a local-folder DVC remote."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from crux.data import versioning as V
from crux.data.manifest import read_manifest
from crux.data.snapshot import build_dataset
from crux.data.store import make_fetcher
from crux.data.synthetic_exports import Ann, box, image_bytes, local_url, ls_task, write_export, write_image

CLASSES = ("crazing", "patches")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # DVC's site cache would otherwise land in the shared system temp folder.
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "site-cache"))
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "test@crux.local")
    git(repo, "config", "user.name", "test")
    V.init_repo(repo)
    V.set_remote(repo, str(tmp_path / "remote"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    return repo


def snapshot(repo: Path, tasks: list[dict[str, Any]], files: Path) -> None:
    export = write_export(repo.parent / "export.json", tasks)
    build_dataset(
        export, repo / "data", "detect", CLASSES, None, make_fetcher(files_root=files), (0.8, 0.1, 0.1),
        previous_dir=repo / "data", project="p",
    )  # fmt: skip


def test_versions_commit_only_changes_and_read_back_through_dvc_api(repo: Path, tmp_path: Path) -> None:
    files = tmp_path / "files"
    tasks = []
    for n in range(1, 6):
        sha = write_image(files, f"{n}.jpg", image_bytes(n))
        tasks.append(
            ls_task(n, local_url(f"{n}.jpg"), sha256=sha, original_name=f"{n}.jpg", width=64, height=48,
                    annotations=[Ann([box("crazing", 1, 1, 20, 20)])])
        )  # fmt: skip
    snapshot(repo, tasks, files)
    first = V.commit_version(repo, project="p")
    assert first is not None and first.message.startswith("data(p): 5 items, +5 −0 ~0")
    assert (tmp_path / "remote").is_dir()

    snapshot(repo, tasks, files)
    assert V.commit_version(repo, project="p") is None  # unchanged project: no version

    tasks[1]["annotations"][0]["result"][0]["value"]["rectanglelabels"] = ["patches"]
    snapshot(repo, tasks, files)
    second = V.commit_version(repo, project="p")
    assert second is not None
    assert second.message == "data(p): 5 items, +0 −0 ~1\n\ncrazing: +0 −0 ~1\npatches: +0 −0 ~1\n"
    assert [c.task_id for c in second.diff.relabelled] == [2]
    assert git(repo, "log", "--format=%s").splitlines() == [
        "data(p): 5 items, +0 −0 ~1",
        "data(p): 5 items, +5 −0 ~0",
        "init",
    ]
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == ["data.dvc"]

    old = V.read_manifest_at(repo, "HEAD~1")
    new = V.read_manifest_at(repo, "HEAD")
    assert {i.task_id: i.labels[0].cls for i in old}[2] == "crazing"
    assert {i.task_id: i.labels[0].cls for i in new}[2] == "patches"
    assert V.read_manifest_at(repo, "HEAD~2") == []
    assert V.read_classes_at(repo, "HEAD").classes == CLASSES  # type: ignore[union-attr]

    # Another clone gets the data from the remote.
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data")
    V.pull(repo)
    assert read_manifest(repo / "data" / "manifest.jsonl") == new
    dest = V.materialize(repo, "HEAD~1", tmp_path / "v1")
    assert read_manifest(dest / "manifest.jsonl") == old
    assert all((dest / i.image).is_file() for i in old)


def test_one_dataset_per_project_under_data(repo: Path, tmp_path: Path) -> None:
    files = tmp_path / "files"
    sha = write_image(files, "1.jpg", image_bytes(1))
    task = ls_task(1, local_url("1.jpg"), sha256=sha, original_name="1.jpg", width=64, height=48,
                   annotations=[Ann([box("crazing", 1, 1, 20, 20)])])  # fmt: skip
    export = write_export(tmp_path / "export.json", [task])
    out = repo / "data" / "neu"
    build_dataset(export, out, "detect", CLASSES, None, make_fetcher(files_root=files), (0.8, 0.1, 0.1))
    result = V.commit_version(repo, project="neu", data_rel="data/neu")
    assert result is not None
    # Each line has its own data/LINE.dvc (init_repo's .gitignore rules, committed with the repo, keep the data out).
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == ["data/neu.dvc"]
    assert not (repo / "data" / ".gitignore").exists()  # DVC wrote no shared data/.gitignore
    assert [i.task_id for i in V.read_manifest_at(repo, "HEAD", "data/neu")] == [1]
    assert V.read_manifest_at(repo, "HEAD", "data/tiles") == []  # a project without a dataset yet


def one_task_dataset(repo: Path, tmp_path: Path, line: str, n: int) -> None:
    files = tmp_path / "files"
    tasks = []
    for k in range(1, n + 1):
        sha = write_image(files, f"{line}{k}.jpg", image_bytes(k + len(line)))
        tasks.append(ls_task(k, local_url(f"{line}{k}.jpg"), sha256=sha, original_name=f"{line}{k}.jpg", width=64,
                             height=48, annotations=[Ann([box("crazing", 1, 1, 20, 20)])]))  # fmt: skip
    export = write_export(tmp_path / f"{line}.json", tasks)
    build_dataset(export, repo / "data" / line, "detect", CLASSES, None, make_fetcher(files_root=files),
                  (0.8, 0.1, 0.1), previous_dir=repo / "data" / line)  # fmt: skip


def test_each_version_commit_touches_only_its_lines_file(repo: Path, tmp_path: Path) -> None:
    one_task_dataset(repo, tmp_path, "a", 1)
    one_task_dataset(repo, tmp_path, "b", 1)
    assert V.commit_version(repo, project="a", data_rel="data/a") is not None
    assert V.commit_version(repo, project="b", data_rel="data/b") is not None
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == ["data/b.dvc"]
    one_task_dataset(repo, tmp_path, "a", 2)  # a's second version
    assert V.commit_version(repo, project="a", data_rel="data/a") is not None
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == ["data/a.dvc"]
    assert git(repo, "status", "--porcelain").strip() == ""  # nothing of the data shows up in git
    assert [len(V.read_manifest_at(repo, rev, "data/a")) for rev in ("HEAD", "HEAD~1", "HEAD~2")] == [2, 1, 1]


def test_a_whole_folder_data_dvc_is_migrated_once_and_old_revisions_stay_readable(repo: Path, tmp_path: Path) -> None:
    # The layout before per-line tracking: one data.dvc for data/ holding two lines.
    one_task_dataset(repo, tmp_path, "a", 1)
    one_task_dataset(repo, tmp_path, "b", 2)
    with V._dvc_repo(repo) as r:
        r.add(str(repo / "data"))
        r.push(targets=[str(repo / "data")])
    git(repo, "add", "data.dvc", ".gitignore")
    git(repo, "commit", "-qm", "old layout")
    old = git(repo, "rev-parse", "HEAD").strip()

    one_task_dataset(repo, tmp_path, "a", 3)
    result = V.commit_version(repo, project="a", data_rel="data/a")
    assert result is not None and result.message.startswith("data(a): 3 items, +2 −0 ~0")  # diffed against data.dvc
    migration = git(repo, "log", "-1", "--format=%B", "HEAD~1")
    assert migration.startswith(V.MIGRATION_SUBJECT) and "Lines: a, b." in migration
    assert sorted(git(repo, "show", "--name-only", "--format=", "HEAD~1").split()) == [
        ".gitignore", "data.dvc", "data/a.dvc", "data/b.dvc"
    ]  # fmt: skip
    assert not (repo / "data.dvc").exists()
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == ["data/a.dvc"]
    assert V.version_file_at(repo, old, "data/b") == "data.dvc"
    assert V.version_file_at(repo, "HEAD", "data/b") == "data/b.dvc"
    assert len(V.read_manifest_at(repo, old, "data/b")) == 2
    assert len(V.read_manifest_at(repo, "HEAD", "data/b")) == 2
    assert V.migrate_to_per_line(repo) is None  # once


def test_ensure_line_data_pulls_only_that_line(repo: Path, tmp_path: Path) -> None:
    one_task_dataset(repo, tmp_path, "a", 1)
    one_task_dataset(repo, tmp_path, "b", 1)
    V.commit_version(repo, project="a", data_rel="data/a")
    V.commit_version(repo, project="b", data_rel="data/b")
    assert V.ensure_line_data(repo, "data/a") is False  # already there
    shutil.rmtree(repo / ".dvc" / "cache")  # a worker with an empty cache and no data
    shutil.rmtree(repo / "data" / "a")
    shutil.rmtree(repo / "data" / "b")
    assert V.ensure_line_data(repo, "data/a") is True
    assert (repo / "data" / "a" / "manifest.jsonl").is_file()
    assert not (repo / "data" / "b").exists()
    cached = {p.name for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file()}
    assert V.ensure_line_data(repo, "data/b") is True  # b's objects were not in the cache before
    assert {p.name for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file()} > cached
    assert V.ensure_line_data(repo, "data/none") is False  # no version yet


def test_gitignore_rules_replace_a_whole_folder_rule(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text(".venv/\n/data/\n*.pt\n")
    assert V.ensure_gitignore(tmp_path) is True
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert "/data/" not in lines and lines[:2] == [".venv/", "*.pt"]
    assert lines[-2:] == ["/data/*", "!/data/*.dvc"]
    assert V.ensure_gitignore(tmp_path) is False


def test_a_version_is_committed_where_git_has_no_identity(repo: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.gitconfig
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "none"))
    git(repo, "config", "--unset", "user.email")
    git(repo, "config", "--unset", "user.name")
    files = tmp_path / "files"
    sha = write_image(files, "1.jpg", image_bytes(1))
    task = ls_task(1, local_url("1.jpg"), sha256=sha, original_name="1.jpg", width=64, height=48,
                   annotations=[Ann([box("crazing", 1, 1, 20, 20)])])  # fmt: skip
    build_dataset(write_export(tmp_path / "e.json", [task]), repo / "data", "detect", CLASSES, None,
                  make_fetcher(files_root=files), (0.8, 0.1, 0.1))  # fmt: skip
    assert V.commit_version(repo, project="neu") is not None
    assert git(repo, "log", "-1", "--format=%ae").strip() == "crux@localhost"


def test_identity_env_only_where_git_has_none(repo: Path, tmp_path: Path, monkeypatch) -> None:
    assert V.identity_env(repo) == {}  # the fixture repo has an identity: it always wins
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "none"))
    git(repo, "config", "--unset", "user.email")
    assert V.identity_env(repo)["GIT_COMMITTER_EMAIL"] == "crux@localhost"

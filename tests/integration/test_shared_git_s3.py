"""Issue 24: two clones of one bare Git remote sharing a DVC remote on S3 (moto_server on loopback). Each version
touches only its line's data/LINE.dvc; a clone with an empty cache pulls only the line it works on; pushes that lose
a race rebase and retry, never force; every commit in the remote names data that is on S3."""

from __future__ import annotations

import hashlib
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import new_bucket
from typer.testing import CliRunner

from crux.data import gitsync as G
from crux.data import versioning as V
from crux.data.manifest import read_manifest
from crux.data.snapshot import build_dataset
from crux.data.store import make_fetcher
from crux.data.synthetic_exports import Ann, box, image_bytes, local_url, ls_task, write_export, write_image

pytestmark = pytest.mark.integration

CLASSES = ("crazing", "patches")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def shared(moto_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, str]:
    """A bare git remote whose first commit configures an S3 DVC remote (through `crux data remote`)."""
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "site-cache"))
    bucket = new_bucket("crux-dvc")
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "main")
    (seed / "params.yaml").write_text("labelstudio: {projects: {}}\n")
    from crux.cli import app

    result = CliRunner().invoke(
        app, ["data", "remote", f"s3://{bucket}/dvc", "--endpoint-url", moto_s3, "--params", str(seed / "params.yaml")]
    )
    assert result.exit_code == 0, result.output
    config = (seed / ".dvc" / "config").read_text()
    assert f"s3://{bucket}/dvc" in config and "endpointurl" in config
    assert "testing" not in config  # credentials come from the environment, never from a file in git
    git(seed, "add", ".")
    git(seed, "-c", "user.email=s@crux.local", "-c", "user.name=seed", "commit", "-qm", "init")
    git(seed, "push", "-q", str(bare), "main")
    return bare, bucket, moto_s3


def clone(bare: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(bare), str(dest)], check=True, capture_output=True)
    git(dest, "config", "user.email", f"{dest.name}@crux.local")
    git(dest, "config", "user.name", dest.name)
    return dest


def snapshot(repo: Path, line: str, first: int, last: int, files: Path) -> None:
    tasks = []
    for n in range(first, last + 1):
        name = f"{line}-{n}.jpg"
        sha = write_image(files, name, image_bytes(n + 1000 * ord(line[0])))
        tasks.append(ls_task(n, local_url(name), sha256=sha, original_name=name, width=64, height=48,
                             annotations=[Ann([box("crazing", 1, 1, 20, 20)])]))  # fmt: skip
    export = write_export(repo.parent / f"{repo.name}-{line}.json", tasks)
    out = repo / "data" / line
    build_dataset(export, out, "detect", CLASSES, None, make_fetcher(files_root=files), (0.8, 0.1, 0.1),
                  previous_dir=out, project=line)  # fmt: skip


def cache_objects(repo: Path) -> set[str]:
    cache = repo / ".dvc" / "cache"
    return {p.parent.name + p.name for p in cache.rglob("*") if p.is_file()} if cache.is_dir() else set()


def test_two_clones_version_lines_through_the_git_remote_and_s3(shared: tuple[Path, str, str], tmp_path: Path) -> None:
    bare, _, _ = shared
    cfg = G.GitConfig(remote=str(bare), branch="main")
    files = tmp_path / "files"

    a = clone(bare, tmp_path / "a")
    G.sync(a, cfg)
    snapshot(a, "x", 1, 3, files)
    snapshot(a, "y", 1, 4, files)
    assert V.commit_version(a, project="x", data_rel="data/x") is not None
    assert V.commit_version(a, project="y", data_rel="data/y") is not None
    a_objects = cache_objects(a)
    assert G.push(a, cfg).attempts == 1

    # B: a fresh clone, empty DVC cache. It pulls only line x, the one it trains.
    b = clone(bare, tmp_path / "b")
    G.sync(b, cfg)
    assert cache_objects(b) == set()
    assert V.ensure_line_data(b, "data/x") is True
    assert len(read_manifest(b / "data" / "x" / "manifest.jsonl")) == 3
    assert not (b / "data" / "y").exists()
    x_only = cache_objects(b)
    y_files = {hashlib.md5(p.read_bytes()).hexdigest() for p in (a / "data" / "y").rglob("*") if p.is_file()}
    x_files = {hashlib.md5(p.read_bytes()).hexdigest() for p in (b / "data" / "x").rglob("*") if p.is_file()}
    assert x_files <= x_only and not (y_files - x_files) & x_only  # no object of line y was fetched
    assert x_only < a_objects  # a part of what A holds: x's

    snapshot(b, "x", 1, 5, files)  # two new tasks
    result = V.commit_version(b, project="x", data_rel="data/x")
    assert result is not None and result.message.startswith("data(x): 5 items, +2 −0 ~0")
    assert git(b, "show", "--name-only", "--format=", "HEAD").split() == ["data/x.dvc"]
    assert G.push(b, cfg).attempts == 1

    commits = git(bare, "rev-list", "main").split()
    assert git(bare, "rev-list", "--min-parents=2", "main") == ""  # linear
    assert git(bare, "log", "--format=%s", "main").splitlines() == [
        "data(x): 5 items, +2 −0 ~0", "data(y): 4 items, +4 −0 ~0", "data(x): 3 items, +3 −0 ~0", "init"
    ]  # fmt: skip
    # Every commit's data is on S3: a third clone with an empty cache reads each version from the remote alone.
    c = clone(bare, tmp_path / "c")
    for commit in commits:
        for line in ("x", "y"):
            if V.version_file_at(c, commit, f"data/{line}") is None:
                continue
            dest = V.materialize(c, commit, tmp_path / "check" / commit / line, f"data/{line}")
            items = read_manifest(dest / "manifest.jsonl")
            assert items and all((dest / i.image).is_file() for i in items)


def test_two_clones_pushing_at_once_one_retries_after_a_rebase(shared: tuple[Path, str, str], tmp_path: Path) -> None:
    bare, _, _ = shared
    cfg = G.GitConfig(remote=str(bare), branch="main")
    files = tmp_path / "files"
    a, b = clone(bare, tmp_path / "a"), clone(bare, tmp_path / "b")
    for repo, line in ((a, "x"), (b, "y")):
        G.sync(repo, cfg)
        snapshot(repo, line, 1, 2, files)
        assert V.commit_version(repo, project=line, data_rel=f"data/{line}") is not None

    barrier = threading.Barrier(2)
    results: dict[str, G.PushResult | BaseException] = {}

    def push(name: str, repo: Path) -> None:
        barrier.wait()
        try:
            results[name] = G.push(repo, cfg)
        except BaseException as exc:  # reported by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=push, args=(n, r)) for n, r in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    attempts = sorted(r.attempts for r in results.values() if isinstance(r, G.PushResult))
    assert attempts == [1, 2], results  # one won; the other rebased onto it and pushed again
    subjects = git(bare, "log", "--format=%s", "main").splitlines()
    assert sorted(subjects[:2]) == ["data(x): 2 items, +2 −0 ~0", "data(y): 2 items, +2 −0 ~0"]
    assert git(bare, "rev-list", "--min-parents=2", "main") == ""
    # No force: the winner's commit is still an ancestor of the branch.
    winner = next(n for n, r in results.items() if isinstance(r, G.PushResult) and r.attempts == 1)
    won = git({"a": a, "b": b}[winner], "rev-parse", "HEAD").strip()
    assert subprocess.run(["git", "merge-base", "--is-ancestor", won, "main"], cwd=bare).returncode == 0

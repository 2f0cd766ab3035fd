"""Issue 24, shared Git: dvc.lock merged stage by stage (pure), and real git clones of a bare remote racing to push
(rebase, retry, never force)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from crux.data import gitsync as G
from crux.data.versioning import VersioningError


def lock(**stages: str) -> str:
    """A dvc.lock whose stage `name` has md5 `value` in its output."""
    entries = {n.replace("__", "@"): {"cmd": "x", "outs": [{"md5": v}]} for n, v in stages.items()}
    return str(yaml.safe_dump({"schema": "2.0", "stages": entries}, sort_keys=False))


def stages(text: str) -> dict[str, str]:
    return {n: v["outs"][0]["md5"] for n, v in yaml.safe_load(text)["stages"].items()}


def test_merge_takes_the_remote_file_and_puts_this_lines_stages_in() -> None:
    remote = lock(prepare__a="a1", train__a="a1", prepare__b="b1")
    ours = lock(prepare__a="a0", train__a="a0", prepare__b="b2", train__b="b2", prepare__c="stale")
    merged = G.merge_dvc_lock(remote, ours, ["b"])
    # a: the remote's (another worker trained it); b: ours, replaced in place and the new stage appended; c: ours is
    # stale local state of a line this commit did not train, so it stays out.
    assert stages(merged) == {"prepare@a": "a1", "train@a": "a1", "prepare@b": "b2", "train@b": "b2"}
    assert list(stages(merged)) == ["prepare@a", "train@a", "prepare@b", "train@b"]
    assert yaml.safe_load(merged)["schema"] == "2.0"


def test_merge_with_no_remote_lock_and_removed_stages() -> None:
    assert stages(G.merge_dvc_lock(None, lock(train__a="1", train__b="2"), ["a"])) == {"train@a": "1"}
    assert stages(G.merge_dvc_lock(lock(train__a="1", export__a="1"), lock(train__a="2"), ["a"])) == {"train@a": "2"}
    with pytest.raises(VersioningError, match=r"not a dvc\.lock"):
        G.merge_dvc_lock("stages: [1, 2]", lock(), ["a"])


def test_changed_lines_and_stage_names() -> None:
    assert G.stage_line("train@neu-cls") == "neu-cls" and G.stage_line("train") is None
    assert G.stage_line("export@magnetic-tile-cls") == "magnetic-tile-cls"
    before, after = lock(train__a="1", train__b="1"), lock(train__a="1", train__b="2", train__c="3")
    assert G.changed_lines(before, after) == {"b", "c"}
    assert G.changed_lines(None, lock(train__a="1")) == {"a"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = clone(bare, tmp_path / "seed")
    (seed / "params.yaml").write_text("x: 1\n")
    (seed / "dvc.lock").write_text(lock(prepare__a="a0", prepare__b="b0"))
    git(seed, "add", ".")
    git(seed, "commit", "-qm", "init")
    git(seed, "push", "-q", "origin", "main")
    return bare


def clone(bare: Path, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(bare), str(dest)], check=True, capture_output=True)
    git(dest, "config", "user.email", "w@crux.local")
    git(dest, "config", "user.name", dest.name)
    git(dest, "checkout", "-q", "-B", "main")
    return dest


def version_and_train(repo: Path, line: str, n: int) -> None:
    """What a cycle commits: data/LINE.dvc, then the line's dvc.lock entries (the rest of dvc.lock as it was)."""
    (repo / "data").mkdir(exist_ok=True)
    (repo / "data" / f"{line}.dvc").write_text(f"outs:\n- md5: {line}{n}.dir\n  path: {line}\n")
    git(repo, "add", f"data/{line}.dvc")
    git(repo, "commit", "-qm", f"data({line}): v{n}")
    doc = yaml.safe_load((repo / "dvc.lock").read_text())
    doc["stages"][f"prepare@{line}"] = {"cmd": "x", "outs": [{"md5": f"{line}{n}"}]}
    doc["stages"][f"train@{line}"] = {"cmd": "x", "outs": [{"md5": f"{line}{n}"}]}
    (repo / "dvc.lock").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert G.commit_lock(repo, line) is not None


def test_two_workers_race_one_rebases_and_both_versions_land_without_force(
    remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = G.GitConfig(remote=str(remote), branch="main")
    a, b = clone(remote, tmp_path / "a"), clone(remote, tmp_path / "b")
    assert G.sync(a, cfg).replayed == 0 and G.sync(b, cfg).replayed == 0
    version_and_train(a, "a", 1)
    version_and_train(b, "b", 1)  # both edited dvc.lock next to each other: a textual conflict
    assert G.push(a, cfg).attempts == 1
    merges: list[object] = []
    real_merge = G.merge_dvc_lock
    monkeypatch.setattr(G, "merge_dvc_lock", lambda r, o, lines: merges.append(lines) or real_merge(r, o, lines))
    pushed = G.push(b, cfg)
    # git stopped on dvc.lock during the rebase: resolved by stage, b's entries from the replayed commit.
    assert merges == [{"b"}]
    assert pushed.attempts == 2  # lost the race, rebased (dvc.lock merged by stage), pushed again
    log = git(remote, "log", "--format=%s", "main").splitlines()
    assert log == [
        "train(b): dvc.lock of prepare@b, train@b",
        "data(b): v1",
        "train(a): dvc.lock of prepare@a, train@a",
        "data(a): v1",
        "init",
    ]
    assert git(remote, "rev-list", "--min-parents=2", "main") == ""  # linear: no merge commits
    final = stages(git(remote, "show", "main:dvc.lock"))
    assert final == {"prepare@a": "a1", "prepare@b": "b1", "train@a": "a1", "train@b": "b1"}
    # The version commits touched only their own line's file.
    assert git(remote, "show", "--name-only", "--format=", "main~1").split() == ["data/b.dvc"]
    # A's next sync fast-forwards onto B's work.
    assert G.sync(a, cfg).head == pushed.head


def test_a_stale_unpushed_version_of_a_line_is_dropped_for_the_remotes_newer_one(remote: Path, tmp_path: Path) -> None:
    cfg = G.GitConfig(remote=str(remote), branch="main")
    a, b = clone(remote, tmp_path / "a"), clone(remote, tmp_path / "b")
    (a / "data").mkdir()
    (a / "data" / "x.dvc").write_text("outs:\n- md5: old.dir\n")
    git(a, "add", "data/x.dvc")
    git(a, "commit", "-qm", "data(x): died before its push")
    assert G.pending_version(a, cfg, "data/x") is not None  # the cycle would train it
    version_and_train(b, "x", 2)
    G.push(b, cfg)
    result = G.sync(a, cfg)
    assert result.head == git(remote, "rev-parse", "main").strip()
    assert G.pending_version(a, cfg, "data/x") is None


def test_other_conflicts_abort_the_rebase_and_leave_the_checkout_as_it_was(remote: Path, tmp_path: Path) -> None:
    cfg = G.GitConfig(remote=str(remote), branch="main")
    a, b = clone(remote, tmp_path / "a"), clone(remote, tmp_path / "b")
    for repo, value in ((a, "2"), (b, "3")):
        (repo / "params.yaml").write_text(f"x: {value}\n")
        git(repo, "commit", "-qam", f"x={value}")
    G.push(b, cfg)
    head = git(a, "rev-parse", "HEAD")
    with pytest.raises(VersioningError, match=r"conflicts in params\.yaml"):
        G.sync(a, cfg)
    assert git(a, "rev-parse", "HEAD") == head and git(a, "status", "--porcelain") == ""


def test_push_is_bounded_and_refuses_the_wrong_branch(remote: Path, tmp_path: Path) -> None:
    a = clone(remote, tmp_path / "a")
    git(a, "checkout", "-q", "-b", "feature")
    with pytest.raises(VersioningError, match="git checkout main"):
        G.sync(a, G.GitConfig(remote=str(remote), branch="main"))
    git(a, "checkout", "-q", "main")
    # A hook on the remote that always refuses: a lost race every time, so the bounded retry gives up.
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'rejected: busy' >&2\nexit 1\n")
    hook.chmod(0o755)
    (a / "f").write_text("1")
    git(a, "add", "f")
    git(a, "commit", "-qm", "f")
    with pytest.raises(VersioningError, match="lost the race 2 times"):
        G.push(a, G.GitConfig(remote=str(remote), branch="main", push_attempts=2))


def test_an_empty_remote_is_created_by_the_first_push(tmp_path: Path) -> None:
    bare = tmp_path / "empty.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    repo = tmp_path / "w"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "w@crux.local")
    git(repo, "config", "user.name", "w")
    (repo / "f").write_text("1")
    git(repo, "add", "f")
    git(repo, "commit", "-qm", "first")
    cfg = G.GitConfig(remote=str(bare), branch="main")
    assert G.sync(repo, cfg).upstream is None
    assert G.push(repo, cfg).attempts == 1
    assert git(bare, "log", "--format=%s", "main").strip() == "first"

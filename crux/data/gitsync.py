"""A worker's checkout in step with the project's shared Git remote (params.yaml `git:`).

Before a snapshot the cycle rebases its checkout onto the remote branch (`sync`); after training it commits the
line's `dvc.lock` entries (`commit_lock`) and pushes (`push`): on a push lost to another worker's push in between it
fetches, rebases and pushes again, a bounded number of times, and never forces. DVC pushes the data before any of
these commits leaves the machine, so no commit in the remote names data that is not on the DVC remote.

Lines never conflict: each dataset version touches only `data/LINE.dvc`. The one shared file is `dvc.lock`, which
holds every line's stages (`prepare@LINE`, `train@LINE`, …): a rebase conflict there is resolved stage by stage
(`merge_dvc_lock`: the remote's file, with the replayed commit's own stages put in), never by failing.

Real git (the `git` command); the merge of two `dvc.lock` texts is a pure function.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crux.config import ConfigError
from crux.data.versioning import VersioningError, _identity, dvc_file, git

LOCK = "dvc.lock"
# Where the remote branch is fetched to: a ref of our own, so a user's `origin/…` refs are left alone.
TRACKING_PREFIX = "refs/remotes/crux-shared/"
_BRANCH = re.compile(r"^[A-Za-z0-9._/-]+\Z")
# What git says when a push lost the race (the remote moved since our fetch, or another push held its ref lock).
_LOST_RACE = ("rejected", "fetch first", "non-fast-forward", "failed to update ref", "cannot lock ref", "stale info")


@dataclass(frozen=True)
class GitConfig:
    """params.yaml `git:` — the shared repository every worker pulls from and pushes to."""

    # A URL, a path, or the name of a remote of the worker's checkout; None = no shared remote (one machine).
    remote: str | None = None
    branch: str = "main"
    # Pushes lost to another worker (fetch, rebase, push again) before the cycle gives up.
    push_attempts: int = 5

    def __post_init__(self) -> None:
        if self.remote is not None and (not self.remote.strip() or self.remote.startswith("-")):
            raise ConfigError(f"git.remote: {self.remote!r} is not a git remote (a URL, a path or a remote name)")
        if not _BRANCH.match(self.branch) or self.branch.startswith(("-", "/")) or ".." in self.branch:
            raise ConfigError(f"git.branch: {self.branch!r} is not a branch name")
        if not 1 <= self.push_attempts <= 100:
            raise ConfigError(f"git.push_attempts: {self.push_attempts} must be in 1..100")

    @property
    def shared(self) -> bool:
        return self.remote is not None

    @property
    def tracking_ref(self) -> str:
        return TRACKING_PREFIX + self.branch


# ------------------------------------------------------------------------------------------------------------------
# dvc.lock, stage by stage (pure)


def stage_line(stage: str) -> str | None:
    """The line of a foreach stage (`train@neu-cls` → `neu-cls`); None for a stage of no line."""
    name, at, item = stage.rpartition("@")
    return item if at and name else None


def _stages(text: str | None, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    import yaml

    try:
        doc = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as exc:
        raise VersioningError(f"{where}: not a dvc.lock ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("stages", {}), dict):
        raise VersioningError(f"{where}: not a dvc.lock (no `stages` mapping)")
    return doc, dict(doc.get("stages") or {})


def changed_lines(base_text: str | None, new_text: str | None) -> set[str]:
    """The lines whose stage entries differ between two dvc.lock texts (what a commit trained)."""
    _, base = _stages(base_text, "base dvc.lock")
    _, new = _stages(new_text, "new dvc.lock")
    names = set(base) | set(new)
    return {line for n in names if base.get(n) != new.get(n) and (line := stage_line(n)) is not None}


def merge_dvc_lock(remote_text: str | None, ours_text: str | None, lines: Iterable[str]) -> str:
    """`dvc.lock` = the remote's, with `lines`' stage entries taken from ours (replaced where the remote has them,
    appended where not, dropped where ours no longer has them). Other lines' entries are the remote's, whatever
    ours says: this checkout did not train them."""
    import yaml

    take = set(lines)
    doc, remote = _stages(remote_text, "remote dvc.lock")
    ours_doc, ours = _stages(ours_text, "our dvc.lock")
    mine = {n: v for n, v in ours.items() if stage_line(n) in take}
    merged = {n: mine.get(n, v) for n, v in remote.items() if stage_line(n) not in take or n in mine}
    merged.update({n: v for n, v in mine.items() if n not in merged})
    out = {**doc, "schema": doc.get("schema", ours_doc.get("schema", "2.0")), "stages": merged}
    return str(yaml.safe_dump(out, sort_keys=False, allow_unicode=True))


# ------------------------------------------------------------------------------------------------------------------
# Git


@dataclass(frozen=True)
class SyncResult:
    head: str
    # The remote branch's commit we rebased onto; None when the remote branch does not exist yet.
    upstream: str | None
    # Our commits that the remote did not have, replayed on top (leftovers of an unpushed cycle).
    replayed: int


@dataclass(frozen=True)
class PushResult:
    head: str
    # 1 when the first push went through; more when a lost race made us rebase and push again.
    attempts: int


def _check_branch(repo: Path, cfg: GitConfig) -> None:
    current = git(repo, "symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.strip()
    if current != cfg.branch:
        raise VersioningError(
            f"{repo} is on {current or 'a detached HEAD'!r}, but git.branch is {cfg.branch!r}: "
            f"`git checkout {cfg.branch}` in the worker's checkout (cycles commit and push only that branch)"
        )


def fetch(repo: Path, cfg: GitConfig) -> str | None:
    """The remote branch into `cfg.tracking_ref`; its commit, or None when the remote has no such branch yet."""
    assert cfg.remote is not None
    probe = git(repo, "ls-remote", "--heads", "--", cfg.remote, f"refs/heads/{cfg.branch}", check=False)
    if probe.returncode != 0:
        raise VersioningError(f"git.remote {cfg.remote!r} cannot be read: {probe.stderr.strip()}")
    if not probe.stdout.strip():
        return None
    git(repo, "fetch", "-q", "--", cfg.remote, f"+refs/heads/{cfg.branch}:{cfg.tracking_ref}")
    return git(repo, "rev-parse", cfg.tracking_ref).stdout.strip()


def _rebase_env() -> dict[str, str]:
    # `rebase --continue` must not open an editor on a worker with no terminal.
    return {**os.environ, "GIT_EDITOR": "true"}


def _in_rebase(repo: Path) -> bool:
    gitdir = Path(git(repo, "rev-parse", "--absolute-git-dir").stdout.strip())
    return (gitdir / "rebase-merge").exists() or (gitdir / "rebase-apply").exists()


def _run_git(repo: Path, *args: str) -> Any:
    import subprocess

    return subprocess.run(
        ["git", *_identity(repo), *args], cwd=repo, capture_output=True, text=True, env=_rebase_env(), check=False
    )


def _stage_text(repo: Path, stage: int, path: str) -> str | None:
    proc = git(repo, "show", f":{stage}:{path}", check=False)
    return proc.stdout if proc.returncode == 0 else None


def rebase(repo: Path, upstream: str) -> int:
    """Rebase the current branch onto `upstream`; returns how many of our commits were replayed.

    Conflicts in `dvc.lock` are merged by stage (the replayed commit's lines over upstream's file); a conflict in a
    dataset's `.dvc` file means the remote has a newer version of that line than a local commit that was never
    pushed (a cycle that died): that stale commit is skipped. Any other conflict aborts the rebase (the checkout is
    left as it was) with a VersioningError naming the files."""
    ahead = int(git(repo, "rev-list", "--count", f"{upstream}..HEAD").stdout.strip() or 0)
    proc = _run_git(repo, "rebase", "--autostash", upstream)
    for _ in range(ahead + 1):
        if proc.returncode == 0 and not _in_rebase(repo):
            return ahead
        conflicted = git(repo, "diff", "--name-only", "--diff-filter=U").stdout.split()
        if not conflicted:
            _run_git(repo, "rebase", "--abort")
            raise VersioningError(f"git rebase onto {upstream[:10]} failed: {(proc.stderr or proc.stdout).strip()}")
        if all(p.endswith(".dvc") for p in conflicted):
            proc = _run_git(repo, "rebase", "--skip")
            continue
        if conflicted != [LOCK]:
            _run_git(repo, "rebase", "--abort")
            raise VersioningError(
                f"git rebase onto {upstream[:10]} conflicts in {', '.join(conflicted)}: only dvc.lock and data/*.dvc "
                "are resolved automatically; resolve by hand in the worker's checkout"
            )
        base, theirs_upstream, replayed = (_stage_text(repo, n, LOCK) for n in (1, 2, 3))
        merged = merge_dvc_lock(theirs_upstream, replayed, changed_lines(base, replayed))
        (Path(repo) / LOCK).write_text(merged, encoding="utf-8")
        git(repo, "add", "--", LOCK)
        proc = _run_git(repo, "rebase", "--continue")
    if _in_rebase(repo):
        _run_git(repo, "rebase", "--abort")
        raise VersioningError(f"git rebase onto {upstream[:10]} did not finish")
    return ahead


def sync(repo: Path, cfg: GitConfig) -> SyncResult:
    """Before a snapshot: fetch the remote branch and rebase this checkout onto it (`git pull --rebase`), so the new
    version is made on top of every other worker's. The remote branch not existing yet is fine (the first push
    creates it)."""
    repo = Path(repo)
    _check_branch(repo, cfg)
    upstream = fetch(repo, cfg)
    replayed = 0 if upstream is None else rebase(repo, upstream)
    return SyncResult(head=git(repo, "rev-parse", "HEAD").stdout.strip(), upstream=upstream, replayed=replayed)


def pending_version(repo: Path, cfg: GitConfig, data_rel: str) -> str | None:
    """A version of this line committed here but not in the remote (a cycle that died before its push): the newest
    such commit, so the cycle trains it rather than calling the line unchanged. None without a shared remote."""
    if not cfg.shared:
        return None
    has_upstream = git(repo, "rev-parse", "--verify", "-q", cfg.tracking_ref, check=False).returncode == 0
    span = f"{cfg.tracking_ref}..HEAD" if has_upstream else "HEAD"
    out = git(repo, "log", "-1", "--format=%H", span, "--", dvc_file(data_rel), check=False).stdout.strip()
    return out or None


def commit_lock(repo: Path, line: str) -> str | None:
    """After `dvc repro` of `line`: commit its `dvc.lock` entries (only them: other lines' entries stay HEAD's), and
    only `dvc.lock`. Returns the commit, or None when the line's entries did not change."""
    repo = Path(repo)
    path = repo / LOCK
    if not path.is_file():
        return None
    head = git(repo, "show", f"HEAD:{LOCK}", check=False)
    head_text = head.stdout if head.returncode == 0 else None
    work_text = path.read_text(encoding="utf-8")
    if head_text is not None and line not in changed_lines(head_text, work_text):
        return None
    path.write_text(merge_dvc_lock(head_text, work_text, [line]), encoding="utf-8")
    stages = sorted(n for n in _stages(work_text, LOCK)[1] if stage_line(n) == line)
    git(repo, "add", "--", LOCK)
    message = f"train({line}): dvc.lock of {', '.join(stages) or 'its stages'}\n"
    git(repo, *_identity(repo), "commit", "-q", "-m", message, "--", LOCK)
    return git(repo, "rev-parse", "HEAD").stdout.strip()


def push(repo: Path, cfg: GitConfig) -> PushResult:
    """`git push` of this branch to the shared remote; on a lost race fetch, rebase (dvc.lock merged by stage) and
    push again, up to `cfg.push_attempts` times. Never `--force`: a push that cannot fast-forward is never forced."""
    assert cfg.remote is not None
    repo = Path(repo)
    _check_branch(repo, cfg)
    last = ""
    for attempt in range(1, cfg.push_attempts + 1):
        proc = git(repo, "push", "-q", "--", cfg.remote, f"HEAD:refs/heads/{cfg.branch}", check=False)
        if proc.returncode == 0:
            git(repo, "update-ref", cfg.tracking_ref, "HEAD")
            return PushResult(head=git(repo, "rev-parse", "HEAD").stdout.strip(), attempts=attempt)
        last = (proc.stderr or proc.stdout).strip()
        if not any(sign in last for sign in _LOST_RACE):
            raise VersioningError(f"git push to {cfg.remote} ({cfg.branch}) failed: {last}")
        upstream = fetch(repo, cfg)
        if upstream is not None:
            rebase(repo, upstream)
    raise VersioningError(
        f"git push to {cfg.remote} ({cfg.branch}) lost the race {cfg.push_attempts} times (git.push_attempts); "
        f"the commits stay in this checkout and go with the next cycle's push. Last answer: {last}"
    )


def lock_entries(text: str | None, line: str) -> Mapping[str, Any]:
    """One line's stage entries of a dvc.lock text (for tests and reports)."""
    return {n: v for n, v in _stages(text, LOCK)[1].items() if stage_line(n) == line}

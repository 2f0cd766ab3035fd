"""Dataset versions as `data.dvc` in git: `dvc add`, `dvc push`, a commit whose message says what changed.

Real git (the `git` command) and DVC's Python API. The push happens before the commit, so no commit
ever names data that is not on the remote; an unchanged `data/` makes no push and no commit.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from crux.data.diff import MASK_RELABEL_IOU, DatasetDiff, commit_message, diff_manifests
from crux.data.manifest import (
    CLASSES,
    MANIFEST,
    ClassesInfo,
    ManifestError,
    ManifestItem,
    parse_manifest,
    read_manifest,
)
from crux.errors import CruxError
from crux.masks import MASKS


class VersioningError(CruxError, RuntimeError):
    pass


@dataclass(frozen=True)
class VersionResult:
    commit: str
    message: str
    diff: DatasetDiff


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise VersioningError(f"git {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def init_repo(repo: Path) -> None:
    """A git repository with DVC initialised (both steps skipped when already done)."""
    from dvc.repo import Repo

    repo = Path(repo)
    if git(repo, "rev-parse", "--show-toplevel", check=False).returncode != 0:
        git(repo, "init", "-q")
    if not (repo / ".dvc").is_dir():
        Repo.init(str(repo))
    ensure_dvcignore(repo)


def ensure_dvcignore(repo: Path) -> None:
    """DVC must not see a snapshot's work folders (data/.LINE.building-*, data/.LINE.old-*)."""
    from crux.data.snapshot import STALE_PATTERNS

    path = Path(repo) / ".dvcignore"
    text = path.read_text() if path.is_file() else ""
    missing = [p for p in STALE_PATTERNS if p not in text.splitlines()]
    if missing:
        sep = "" if not text or text.endswith("\n") else "\n"
        header = "# Work folders of an interrupted `crux snapshot` (removed by the next one)\n"
        path.write_text(text + sep + header + "\n".join(missing) + "\n")


def set_remote(
    repo: Path,
    url: str,
    *,
    name: str = "storage",
    default: bool = True,
    options: Mapping[str, str] | None = None,
) -> None:
    """Add or replace a DVC remote: a folder path (the default kind) or s3://bucket/prefix.

    `options` are `dvc remote modify` settings, e.g. {"endpointurl": "http://127.0.0.1:9000"} for a moto or
    MinIO S3. Credentials are never written here: DVC reads them from the environment.
    """
    with _dvc_repo(repo) as r, r.config.edit() as conf:
        conf["remote"][name] = {"url": url, **dict(options or {})}
        if default:
            conf["core"]["remote"] = name


def _dvc_repo(repo: Path) -> Any:
    from dvc.repo import Repo

    r = Repo(str(repo))
    # We stage and commit ourselves; DVC's "To track the changes with git, run: ..." hint would mislead.
    r.scm_context.quiet = True
    return r


DVC_FILES = (".dvc/config", ".dvc/.gitignore", ".dvcignore")


def _tracked_at_head(repo: Path, rel: str) -> bool:
    return git(repo, "cat-file", "-e", f"HEAD:{rel}", check=False).returncode == 0


def _head_file(repo: Path, rel: str) -> str | None:
    proc = git(repo, "show", f"HEAD:{rel}", check=False)
    return proc.stdout if proc.returncode == 0 else None


def _dvc_md5(dvc_file_text: str | None) -> str | None:
    if dvc_file_text is None:
        return None
    import yaml

    outs = (yaml.safe_load(dvc_file_text) or {}).get("outs") or [{}]
    md5 = outs[0].get("md5")
    return None if md5 is None else str(md5)


def tracked_root(data_rel: str) -> str:
    """The DVC-tracked folder holding a dataset: `data` (tracked by data.dvc) for `data/neu-det`."""
    return Path(data_rel).parts[0]


def check_revision(repo: Path, rev: str) -> None:
    """A revision the user named must exist: a typo would otherwise read as "no dataset at that revision". One that
    starts with '-' would be an option to git, not a revision."""
    if rev.startswith("-") or not rev.strip():
        raise VersioningError(f"{rev!r} is not a git revision of {repo}")
    if git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False).returncode != 0:
        raise VersioningError(f"{rev!r} is not a git revision of {repo}")


def _has_version(repo: Path, rev: str, data_rel: str) -> bool:
    return git(repo, "cat-file", "-e", f"{rev}:{tracked_root(data_rel)}.dvc", check=False).returncode == 0


def read_manifest_at(repo: Path, rev: str | None, data_rel: str = "data") -> list[ManifestItem]:
    """The manifest of revision `rev` (None: the workspace) through dvc.api; [] where the revision has no data."""
    import dvc.api

    if rev is None:
        path = Path(repo) / data_rel / MANIFEST
        return read_manifest(path) if path.is_file() else []
    if not _has_version(repo, rev, data_rel):
        return []
    if not dvc.api.DVCFileSystem(str(repo), rev=rev).exists(f"/{data_rel}/{MANIFEST}"):
        return []  # the version predates this project's dataset
    try:
        text = dvc.api.read(f"{data_rel}/{MANIFEST}", repo=str(repo), rev=rev, mode="r", encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{rev}:{data_rel}/{MANIFEST}: not UTF-8 text (a binary file?)") from exc
    return parse_manifest(text, where=f"{rev}:{data_rel}/{MANIFEST}")


def read_classes_at(repo: Path, rev: str | None, data_rel: str = "data") -> ClassesInfo | None:
    import json

    import dvc.api

    if rev is None:
        path = Path(repo) / data_rel / CLASSES
        return ClassesInfo.from_json(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None
    if not _has_version(repo, rev, data_rel):
        return None
    if not dvc.api.DVCFileSystem(str(repo), rev=rev).exists(f"/{data_rel}/{CLASSES}"):
        return None
    text = dvc.api.read(f"{data_rel}/{CLASSES}", repo=str(repo), rev=rev, mode="r", encoding="utf-8")
    return ClassesInfo.from_json(json.loads(text))


def mask_reader(repo: Path, rev: str | None, data_rel: str = "data") -> Callable[[str], bytes]:
    """Reads the mask files of revision `rev` (None: the workspace) by their manifest path (`masks/ab/….png`),
    fetching only the masks asked for (a diff reads just the ones that changed)."""
    from dvc.api import DVCFileSystem

    base = Path(repo) / data_rel
    fs: list[Any] = []

    def read(rel: str) -> bytes:
        parts = PurePosixPath(rel).parts
        if not parts or parts[0] != MASKS or ".." in parts:
            raise OSError(f"{rel}: not a mask path of a dataset version")
        if rev is None:
            return (base / rel).read_bytes()
        if not fs:
            fs.append(DVCFileSystem(str(repo), rev=rev))
        return bytes(fs[0].cat_file(f"/{data_rel}/{rel}"))

    return read


def materialize(repo: Path, rev: str | None, dest: Path, data_rel: str = "data") -> Path:
    """A complete copy of the dataset folder of revision `rev` in `dest` (images from cache or remote)."""
    from dvc.api import DVCFileSystem

    if rev is None:
        return Path(repo) / data_rel
    # Checked here, before DVC: DVC's revision lookup raises its own errors (a traceback for '[/x]'), and a revision
    # from before the data was versioned has nothing to copy.
    check_revision(repo, rev)
    if not _has_version(repo, rev, data_rel):
        raise VersioningError(f"{rev!r} has no dataset version ({tracked_root(data_rel)}.dvc is not in that commit)")
    fs = DVCFileSystem(str(repo), rev=rev)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if not fs.exists(f"/{data_rel}"):
            raise VersioningError(f"{rev!r} has no {data_rel} (the dataset of that line came later)")
        fs.get(f"/{data_rel}/", str(dest), recursive=True)
    except VersioningError:
        raise
    except Exception as exc:  # DVC raises many types for a missing cache/remote object; name the revision
        raise VersioningError(f"{data_rel} at {rev!r} cannot be read ({type(exc).__name__}: {exc})") from exc
    return dest


def commit_version(
    repo: Path,
    *,
    project: str,
    data_rel: str = "data",
    remote: str | None = None,
    push: bool = True,
    mask_relabel_iou: float = MASK_RELABEL_IOU,
) -> VersionResult | None:
    """`dvc add` the tracked folder; when it changed, `dvc push` and commit `data.dvc` (+ .gitignore).

    `data_rel` is the project's dataset (`data/neu-det`); the folder DVC tracks is its first component
    (`data`, so one `data.dvc` versions every line's dataset). Returns None when nothing changed. The
    message lists per class +added −removed ~relabelled items, from a diff of HEAD's manifest (read
    through dvc.api) against the workspace's.
    """
    repo = Path(repo)
    tracked = tracked_root(data_rel)
    dvc_file = f"{tracked}.dvc"
    before_text = _head_file(repo, dvc_file)
    with _dvc_repo(repo) as r:
        r.add(str(repo / tracked))
        after_text = (repo / dvc_file).read_text(encoding="utf-8")
        if before_text is not None and _dvc_md5(before_text) == _dvc_md5(after_text):
            return None
        old = read_manifest_at(repo, "HEAD", data_rel) if before_text is not None else []
        new = read_manifest_at(repo, None, data_rel)
        classes = read_classes_at(repo, None, data_rel)
        d = diff_manifests(
            old,
            new,
            classes.classes if classes else (),
            read_old_mask=mask_reader(repo, "HEAD", data_rel) if before_text is not None else None,
            read_new_mask=mask_reader(repo, None, data_rel),
            mask_relabel_iou=mask_relabel_iou,
        )
        message = commit_message(d, project, len(new))
        if push:
            r.push(targets=[str(repo / tracked)], remote=remote)
    # `dvc add data` writes data.dvc and lists /data in .gitignore.
    gitignore = ".gitignore"
    paths = [dvc_file] + [p for p in (gitignore,) if (repo / p).exists()]
    # dvc.api can only read a revision whose tree holds DVC's own files: the first version commits them
    # if nobody has yet (later changes to .dvc/config stay the user's to commit).
    paths += [p for p in DVC_FILES if (repo / p).exists() and not _tracked_at_head(repo, p)]
    git(repo, "add", "--", *paths)
    git(repo, *_identity(repo), "commit", "-q", "-m", message, "--", *paths)
    sha = git(repo, "rev-parse", "HEAD").stdout.strip()
    return VersionResult(commit=sha, message=message, diff=d)


# The committer on machines where git has none configured (a fresh CI box, a demo), so that a dataset version
# or an experiment is never lost to "Please tell me who you are"; a configured identity always wins.
FALLBACK_IDENTITY = ("CRUX", "crux@localhost")


def has_git_identity(repo: Path) -> bool:
    return bool(git(repo, "config", "user.email", check=False).stdout.strip())


def _identity(repo: Path) -> list[str]:
    name, email = FALLBACK_IDENTITY
    return [] if has_git_identity(repo) else ["-c", f"user.name={name}", "-c", f"user.email={email}"]


def identity_env(repo: Path) -> dict[str, str]:
    """The same fallback for tools that commit on their own (`dvc exp run`), as git's environment variables."""
    if has_git_identity(repo):
        return {}
    name, email = FALLBACK_IDENTITY
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def pull(repo: Path, *, data_rel: str = "data", remote: str | None = None) -> None:
    with _dvc_repo(repo) as r:
        r.pull(targets=[str(Path(repo) / tracked_root(data_rel))], remote=remote)

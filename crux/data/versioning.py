"""Dataset versions in git, one `.dvc` file per line: `dvc add data/LINE`, `dvc push`, a commit of `data/LINE.dvc`
whose message says what changed.

Real git (the `git` command) and DVC's Python API. The push happens before the commit, so no commit
ever names data that is not on the remote; an unchanged `data/LINE` makes no push and no commit.

Per line, not one `data.dvc` for all of `data/`: with one hash for every line, two lines versioned on two workers
are two edits of the same line of the same file and can never be merged; with `data/LINE.dvc` each version commit
touches only its own line's file, so a rebase onto another line's version is always clean. The top-level
.gitignore ignores `/data/*` but not `data/*.dvc`, so DVC writes no shared `data/.gitignore` either. A checkout whose
history has the old `data.dvc` is migrated once (`migrate_to_per_line`); old revisions stay readable.
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


def init_repo(repo: Path, data_root: str = "data") -> None:
    """A git repository with DVC initialised (both steps skipped when already done), whose .gitignore keeps the
    datasets below `data_root` out of git but their per-line `.dvc` files in."""
    from dvc.repo import Repo

    repo = Path(repo)
    if git(repo, "rev-parse", "--show-toplevel", check=False).returncode != 0:
        git(repo, "init", "-q")
    if not (repo / ".dvc").is_dir():
        Repo.init(str(repo))
    ensure_dvcignore(repo)
    ensure_gitignore(repo, data_root)


def gitignore_rules(data_root: str) -> tuple[str, ...]:
    """The top-level .gitignore rules of per-line tracking: every dataset folder ignored, its `.dvc` file not. Because
    `data/LINE` is already ignored, `dvc add data/LINE` writes no `data/.gitignore` (scmrepo skips ignored paths), so
    two lines' versions share no file."""
    return (f"/{data_root}/*", f"!/{data_root}/*.dvc")


def ensure_gitignore(repo: Path, data_root: str = "data") -> bool:
    """Put `gitignore_rules` in the top-level .gitignore, dropping a whole-folder rule (`/data/`, which git would not
    let `!/data/*.dvc` re-include); True when the file changed."""
    path = Path(repo) / ".gitignore"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = text.splitlines()
    whole = {f"/{data_root}/", f"/{data_root}", f"{data_root}/"}
    kept = [line for line in lines if line.strip() not in whole]
    missing = [rule for rule in gitignore_rules(data_root) if rule not in (line.strip() for line in kept)]
    if not missing and kept == lines:
        return False
    header = ["# datasets live in DVC, one data/LINE.dvc per line in git (crux.data.versioning)"] if missing else []
    path.write_text("\n".join(kept + header + missing) + "\n", encoding="utf-8")
    return True


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


def dvc_file(data_rel: str) -> str:
    """The `.dvc` file that versions a line's dataset: `data/neu-det.dvc` for `data/neu-det`."""
    return f"{PurePosixPath(Path(data_rel).as_posix())}.dvc"


def version_file_at(repo: Path, rev: str, data_rel: str) -> str | None:
    """The `.dvc` file of revision `rev` that holds `data_rel`: its own per-line file, else the whole-folder
    `data.dvc` of a revision from before the per-line migration; None when the revision has no version of it."""
    parts = PurePosixPath(Path(data_rel).as_posix()).parts
    candidates = [dvc_file("/".join(parts[:n])) for n in range(len(parts), 0, -1)]
    for candidate in candidates:
        if git(repo, "cat-file", "-e", f"{rev}:{candidate}", check=False).returncode == 0:
            return candidate
    return None


def check_revision(repo: Path, rev: str) -> None:
    """A revision the user named must exist: a typo would otherwise read as "no dataset at that revision". One that
    starts with '-' would be an option to git, not a revision."""
    if rev.startswith("-") or not rev.strip():
        raise VersioningError(f"{rev!r} is not a git revision of {repo}")
    if git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False).returncode != 0:
        raise VersioningError(f"{rev!r} is not a git revision of {repo}")


def _has_version(repo: Path, rev: str, data_rel: str) -> bool:
    return version_file_at(repo, rev, data_rel) is not None


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
        raise VersioningError(f"{rev!r} has no dataset version ({dvc_file(data_rel)} is not in that commit)")
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
    """`dvc add` the project's dataset folder; when it changed, `dvc push` it and commit its `.dvc` file only.

    `data_rel` is the project's dataset (`data/neu-det`, versioned by `data/neu-det.dvc`). A checkout still on the
    whole-folder `data.dvc` is migrated first (`migrate_to_per_line`, a commit of its own). Returns None when
    nothing changed. The message lists per class +added −removed ~relabelled items, from a diff of HEAD's manifest
    (read through dvc.api) against the workspace's.
    """
    repo = Path(repo)
    data_rel = PurePosixPath(Path(data_rel).as_posix()).as_posix()
    parts = PurePosixPath(data_rel).parts
    if len(parts) > 1:
        ensure_gitignore(repo, parts[0])
        migrate_to_per_line(repo, parts[0], remote=remote, push=push, keep="/".join(parts[1:]))
    tracked = dvc_file(data_rel)
    had_version = version_file_at(repo, "HEAD", data_rel) is not None if _has_head(repo) else False
    before_text = _head_file(repo, tracked)
    with _dvc_repo(repo) as r:
        r.add(str(repo / data_rel))
        after_text = (repo / tracked).read_text(encoding="utf-8")
        if before_text is not None and _dvc_md5(before_text) == _dvc_md5(after_text):
            return None
        old = read_manifest_at(repo, "HEAD", data_rel) if had_version else []
        new = read_manifest_at(repo, None, data_rel)
        classes = read_classes_at(repo, None, data_rel)
        d = diff_manifests(
            old,
            new,
            classes.classes if classes else (),
            read_old_mask=mask_reader(repo, "HEAD", data_rel) if had_version else None,
            read_new_mask=mask_reader(repo, None, data_rel),
            mask_relabel_iou=mask_relabel_iou,
        )
        message = commit_message(d, project, len(new))
        if push:
            # The .dvc file as the target: DVC does not resolve a git-ignored output folder (`data/LINE`) as one.
            r.push(targets=[str(repo / tracked)], remote=remote)
    # Only this line's file (plus DVC's own gitignore entry where no top-level rule covers the folder): a version
    # of another line, made on another worker, never touches the same file.
    paths = [tracked] + [p for p in _gitignores_to_commit(repo, data_rel)]
    # dvc.api can only read a revision whose tree holds DVC's own files: the first version commits them
    # if nobody has yet (later changes to .dvc/config stay the user's to commit).
    paths += [p for p in DVC_FILES if (repo / p).exists() and not _tracked_at_head(repo, p)]
    git(repo, "add", "--", *paths)
    git(repo, *_identity(repo), "commit", "-q", "-m", message, "--", *paths)
    sha = git(repo, "rev-parse", "HEAD").stdout.strip()
    return VersionResult(commit=sha, message=message, diff=d)


def _has_head(repo: Path) -> bool:
    return git(repo, "rev-parse", "--verify", "-q", "HEAD", check=False).returncode == 0


def _gitignores_to_commit(repo: Path, data_rel: str) -> list[str]:
    """The .gitignore files the version depends on that HEAD does not have as they are: the top-level one when
    `ensure_gitignore` added the per-line rules, and the `.gitignore` beside the folder if DVC wrote one."""
    parent = PurePosixPath(data_rel).parent
    candidates = [".gitignore"] + ([f"{parent}/.gitignore"] if str(parent) != "." else [])
    out = []
    for rel in candidates:
        path = Path(repo) / rel
        if not path.is_file() or git(repo, "check-ignore", "-q", "--", rel, check=False).returncode == 0:
            continue
        if _head_file(repo, rel) != path.read_text(encoding="utf-8"):
            out.append(rel)
    return out


# The subject of the one-time migration commit (also how a reader of the history recognises it).
MIGRATION_SUBJECT = "data: version each line in its own data/LINE.dvc (replaces data.dvc)"


def migrate_to_per_line(
    repo: Path, data_root: str = "data", *, remote: str | None = None, push: bool = True, keep: str | None = None
) -> str | None:
    """Once per checkout: untrack the whole-folder `data_root.dvc` and track each line's folder on its own
    (`data_root/LINE.dvc`), pushed to the DVC remote before one commit that says so. Returns that commit, or None
    when there is no `data_root.dvc` (already migrated, or never versioned). The per-line files name exactly the
    committed data (the same files, which the cache already holds); other lines' uncommitted workspace changes are
    reverted (a snapshot rebuilds them), line `keep`'s (the snapshot about to be versioned) are kept."""
    repo = Path(repo)
    old = f"{data_root}.dvc"
    if not (repo / old).is_file():
        return None
    import shutil

    aside = repo / data_root / f".{keep}.old-migration" if keep else None
    with _dvc_repo(repo) as r:
        if not (repo / data_root).is_dir() or r.status(targets=[str(repo / old)]):
            # The per-line files must name the committed data, not a snapshot not yet versioned: set `keep`'s
            # fresh folder aside (a name .dvcignore hides), restore the committed state of every line (a clone
            # whose workspace lacks the data pulls it), and put the fresh folder back after the migration.
            if aside is not None and (repo / data_root / str(keep)).is_dir():
                shutil.rmtree(aside, ignore_errors=True)
                (repo / data_root / str(keep)).rename(aside)
            r.pull(targets=[str(repo / old)], remote=remote, force=True)
        r.remove(str(repo / old))  # the .dvc file and DVC's gitignore entry; the folder stays
        ensure_gitignore(repo, data_root)
        lines = sorted(p.name for p in (repo / data_root).iterdir() if p.is_dir() and not p.name.startswith("."))
        targets = [str(repo / data_root / line) for line in lines]
        if targets:
            r.add(targets)
            if push:
                r.push(targets=[str(repo / dvc_file(f"{data_root}/{line}")) for line in lines], remote=remote)
    if aside is not None and aside.is_dir():
        shutil.rmtree(repo / data_root / str(keep), ignore_errors=True)
        aside.rename(repo / data_root / str(keep))
    new_files = [dvc_file(f"{data_root}/{line}") for line in lines]
    paths = [*new_files, *([".gitignore"] if (repo / ".gitignore").is_file() else [])]
    git(repo, "add", "--", *paths)
    if _tracked_at_head(repo, old):
        git(repo, "rm", "-q", "--cached", "--ignore-unmatch", "--", old)
        paths.append(old)
    message = (
        f"{MIGRATION_SUBJECT}\n\nOne hash for every line made two lines versioned on two workers unmergeable; now "
        f"each version commit touches only its line's file. Lines: {', '.join(lines) or 'none yet'}.\n"
    )
    git(repo, *_identity(repo), "commit", "-q", "-m", message, "--", *paths)
    return git(repo, "rev-parse", "HEAD").stdout.strip()


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
    """`dvc pull` of one line's dataset only (`data/LINE.dvc`): a worker fetches just the line it trains."""
    with _dvc_repo(repo) as r:
        r.pull(targets=[str(Path(repo) / dvc_file(data_rel))], remote=remote)


def ensure_line_data(repo: Path, data_rel: str, *, remote: str | None = None) -> bool:
    """Make the workspace hold the committed version of one line's dataset, pulling only that line from the DVC
    remote when the cache or the workspace lacks it (a worker with an empty cache). True when it pulled; False when
    the workspace already matched or the line has no version yet."""
    repo = Path(repo)
    target = repo / dvc_file(data_rel)
    if not target.is_file():
        return False
    with _dvc_repo(repo) as r:
        if not r.status(targets=[str(target)]):
            return False
        # force: a workspace left by an interrupted snapshot is rebuilt by the next one anyway.
        r.pull(targets=[str(target)], remote=remote, force=True)
    return True

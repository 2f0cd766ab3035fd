"""What the console reads, one reader per store, each behind a short timeout.

- `IngestReader`: the ingest database (captures, stations, heartbeats) and its image store.
- `ModelReader`: the model remote (fsspec folder or S3) through `crux.ship.listing.list_models`.
- `DatasetReader`: dataset versions, i.e. the git history of `data/LINE.dvc` (`data.dvc` before per-line
  versioning) and `crux data diff`.
- `LabelStudioReader`: each line's project progress through the SDK.

`fetch` runs a read in a worker thread and gives up after its timeout: a store that is down or hangs becomes an
`Unavailable` value that the page shows, and the rest of the page renders. Slow, rarely changing reads (the
remote, git, Label Studio) are cached for a few seconds; the database is read live.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import re
import subprocess
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Reads run here so that a hung store costs a thread, not the page. Bounded: a store that hangs on every request
# cannot pile up threads without limit (further reads of it queue and time out).
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="crux-console-read")


@dataclass(frozen=True)
class Unavailable:
    """A source that did not answer in time or failed; `reason` is shown on the page."""

    source: str
    reason: str

    def __bool__(self) -> bool:  # `if value:` treats an unavailable source as nothing to show
        return False


def fetch(source: str, read: Callable[[], T], timeout_s: float) -> T | Unavailable:
    """`read()` within `timeout_s` seconds, else Unavailable (the read may finish later in the background)."""
    future = _POOL.submit(read)
    try:
        return future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        return Unavailable(source, f"no answer within {timeout_s:g} s")
    except Exception as exc:
        return Unavailable(source, f"{type(exc).__name__}: {str(exc)[:200]}")


class TTLCache(Generic[T]):
    """A small time-bounded memo per key that serves a stale value while one background read refreshes it, so a
    page never waits for a refresh once a value exists (the first read of a key waits; its errors propagate)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._items: dict[Hashable, tuple[float, T]] = {}
        self._refreshing: set[Hashable] = set()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        now = self.clock()
        with self._lock:
            hit = self._items.get(key)
            stale = hit is not None and now - hit[0] >= self.ttl_s
            refresh = stale and key not in self._refreshing
            if refresh:
                self._refreshing.add(key)
        if hit is None:
            return self._store(key, compute())
        if refresh:
            _POOL.submit(self._refresh, key, compute)
        return hit[1]

    def _store(self, key: Hashable, value: T) -> T:
        with self._lock:
            if len(self._items) > 1024:
                self._items.clear()
            self._items[key] = (self.clock(), value)
        return value

    def _refresh(self, key: Hashable, compute: Callable[[], T]) -> None:
        try:
            self._store(key, compute())
        except Exception:
            with self._lock:  # a failed refresh drops the value: the next page reads afresh and shows the error
                self._items.pop(key, None)
        finally:
            with self._lock:
                self._refreshing.discard(key)


# ----------------------------------------------------------------------------------------------------------------
# Ingest database


@dataclass(frozen=True)
class LineCounts:
    captures_24h: int
    ng_24h: int
    waiting: int


@dataclass(frozen=True)
class StationRow:
    """A registered station and its latest heartbeat (None: never seen)."""

    name: str
    line: str
    revoked: bool
    heartbeat: Any | None  # crux.collect.heartbeats.Heartbeat


class IngestReader:
    def __init__(self, engine: Any, storage_url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        from crux.collect.storage import ImageStore

        self.engine = engine
        self.store = ImageStore(storage_url, storage_options)

    def line_counts(self, lines: Sequence[str], since: dt.datetime) -> dict[str, LineCounts]:
        """Captures and NG captures since `since`, and captures not labeled yet, per line (index-only reads)."""
        import sqlalchemy as sa

        from crux.collect.db import captures, to_naive_utc

        c = captures.c
        recent = sa.select(sa.func.count(), sa.func.count().filter(c.verdict == "ng")).where(
            c.line == sa.bindparam("line"), c.captured_at >= to_naive_utc(since)
        )
        waiting = sa.select(sa.func.count()).where(c.line == sa.bindparam("line"), c.labeled_at.is_(None))
        out = {}
        with self.engine.connect() as conn:
            for line in lines:
                total, ng = conn.execute(recent, {"line": line}).one()
                out[line] = LineCounts(int(total), int(ng or 0), int(conn.execute(waiting, {"line": line}).scalar()))
        return out

    def recent_captures(
        self, *, line: str | None = None, station: str | None = None, ng: bool | None = None, limit: int = 24
    ) -> list[Any]:
        """The newest captures (by id, an index scan) of a line or a station; ng=True only NG, False only not NG."""
        import sqlalchemy as sa

        from crux.collect.db import captures
        from crux.collect.records import _record

        query = sa.select(captures).order_by(captures.c.id.desc()).limit(limit)
        if line is not None:
            query = query.where(captures.c.line == line)
        if station is not None:
            query = query.where(captures.c.station == station)
        if ng is True:
            query = query.where(captures.c.verdict == "ng")
        elif ng is False:
            query = query.where(sa.or_(captures.c.verdict != "ng", captures.c.verdict.is_(None)))
        with self.engine.connect() as conn:
            return [_record(r) for r in conn.execute(query)]

    def capture(self, capture_id: int) -> Any | None:
        from crux.collect.records import get_capture

        return get_capture(self.engine, capture_id)

    def image(self, key: str) -> bytes:
        # Keys come from the database row (written by the ingest service as <sha256>.<ext>), never from a request.
        return self.store.get(key)

    def stations(self) -> list[StationRow]:
        import sqlalchemy as sa

        from crux.collect.db import stations
        from crux.collect.heartbeats import latest_heartbeats

        beats = {b.station: b for b in latest_heartbeats(self.engine)}
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(stations.c.name, stations.c.line, stations.c.revoked_at).order_by(stations.c.name)
            ).all()
        return [StationRow(r.name, r.line, r.revoked_at is not None, beats.get(r.name)) for r in rows]


# ----------------------------------------------------------------------------------------------------------------
# Model remote


class ModelReader:
    def __init__(
        self,
        remote_url: str,
        public_keys: Sequence[Any] = (),
        storage_options: Mapping[str, Any] | None = None,
        ttl_s: float = 5.0,
    ) -> None:
        self.remote_url = remote_url
        self.public_keys = list(public_keys)
        self.storage_options = dict(storage_options or {})
        self._cache: TTLCache[dict[str, Any]] = TTLCache(ttl_s)

    def history(self, line: str) -> dict[str, Any]:
        """`crux models list LINE --json`: every version with metrics, gate, lineage, verified, signer."""
        from crux.ship.listing import list_models

        return self._cache.get(
            line, lambda: list_models(self.remote_url, line, self.public_keys, storage_options=self.storage_options)
        )


def production(history: Mapping[str, Any]) -> dict[str, Any] | None:
    """The version `current.json` points at, from a history; None when nothing is published."""
    current = history.get("current")
    if not current:
        return None
    for version in history.get("versions", []):
        if version.get("version") == int(current["version"]):
            return {**version, "action": current.get("action")}
    return None


# ----------------------------------------------------------------------------------------------------------------
# Dataset versions (git + DVC)


@dataclass(frozen=True)
class DatasetVersion:
    commit: str
    date: dt.datetime
    author: str
    items: int
    added: int
    removed: int
    relabelled: int
    per_class: tuple[str, ...] = field(default=())
    # The dataset folder's DVC md5 this commit recorded (`data/LINE.dvc` outs md5): what a model's lineage names.
    md5: str | None = None

    @property
    def short(self) -> str:
        return self.commit[:10]


# The first line of a dataset commit (crux.data.diff.commit_message).
_SUBJECT = re.compile(r"^data\((?P<line>[^)]+)\): (?P<items>\d+) items, \+(?P<a>\d+) −(?P<r>\d+) ~(?P<m>\d+)$")
COMMIT = re.compile(r"^[0-9a-f]{7,40}\Z")


_MD5 = re.compile(r"^\+-?\s*md5:\s*(\S+)\s*$", re.MULTILINE)


def parse_dataset_log(text: str, line: str) -> list[DatasetVersion]:
    """Records of `git log --format=%H%x1f%cI%x1f%an%x1f%B%x1e` → the dataset versions of `line`, newest first.
    Records of `git log -p --format=%x1e%H%x1f%cI%x1f%an%x1f%B%x1f` carry the patch of `data/LINE.dvc` after a fifth
    separator: the md5 it adds is the version's dataset hash."""
    out = []
    for record in text.split("\x1e"):
        parts = record.strip("\n").split("\x1f")
        if len(parts) not in (4, 5):
            continue
        commit, date, author, body = parts[:4]
        found = _MD5.search(parts[4]) if len(parts) == 5 else None
        lines = body.strip().splitlines()
        match = _SUBJECT.match(lines[0].strip()) if lines else None
        if match is None or match["line"] != line:
            continue
        out.append(
            DatasetVersion(
                commit=commit.strip(),
                date=dt.datetime.fromisoformat(date),
                author=author,
                items=int(match["items"]),
                added=int(match["a"]),
                removed=int(match["r"]),
                relabelled=int(match["m"]),
                per_class=tuple(x.strip() for x in lines[1:] if x.strip()),
                md5=found.group(1) if found else None,
            )
        )
    return out


class DatasetReader:
    def __init__(self, repo: Path, data_root: str = "data", ttl_s: float = 10.0, git_timeout_s: float = 5.0) -> None:
        self.repo = Path(repo)
        self.data_root = data_root
        self.git_timeout_s = git_timeout_s
        self._log: TTLCache[str] = TTLCache(ttl_s)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Sent to the console's diff worker process: the settings, not the cache (its lock does not pickle).
        return (DatasetReader, (self.repo, self.data_root, self._log.ttl_s, self.git_timeout_s))

    def _git_log(self) -> str:
        proc = subprocess.run(
            # Per-line data/LINE.dvc files (and the one data.dvc of a history from before per-line versioning); -p:
            # the md5 each commit wrote there, so a model's lineage hash finds its dataset version.
            ["git", "log", "-n", "500", "-p", "--format=%x1e%H%x1f%cI%x1f%an%x1f%B%x1f", "--", *self._version_files()],
            cwd=self.repo,
            capture_output=True,
            text=True,
            timeout=self.git_timeout_s,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"git log in {self.repo}: {proc.stderr.strip()[:200]}")
        return proc.stdout

    def _version_files(self) -> list[str]:
        return [f"{self.data_root}.dvc", f"{self.data_root}/*.dvc"]

    def versions(self, line: str) -> list[DatasetVersion]:
        return parse_dataset_log(self._log.get("log", self._git_log), line)

    def diff(self, line: str, commit: str, mask_relabel_iou: float = 0.9) -> tuple[Any, dict[str, str]]:
        """`crux data diff COMMIT~1 COMMIT -p LINE` as a `DatasetDiff`, with each changed image's path in its
        version's dataset folder by sha256 (the new version's, the old one's for removed items)."""
        from crux.data import versioning
        from crux.data.diff import diff_manifests

        data_rel = f"{self.data_root}/{line}"
        parent = f"{commit}~1"
        old = versioning.read_manifest_at(self.repo, parent, data_rel) if _has_parent(self.repo, commit) else []
        new = versioning.read_manifest_at(self.repo, commit, data_rel)
        info = versioning.read_classes_at(self.repo, commit, data_rel)
        diff = diff_manifests(
            old,
            new,
            info.classes if info else (),
            read_old_mask=versioning.mask_reader(self.repo, parent, data_rel),
            read_new_mask=versioning.mask_reader(self.repo, commit, data_rel),
            mask_relabel_iou=mask_relabel_iou,
        )
        images = {item.sha256: item.image for item in old}
        images.update({item.sha256: item.image for item in new})
        return diff, images

    def image(self, line: str, rev: str, path: str) -> bytes:
        """One image of a dataset version by its manifest path (`images/ab/<sha256>.jpg`), through DVC."""
        from dvc.api import DVCFileSystem

        parts = path.split("/")
        if len(parts) < 2 or parts[0] != "images" or ".." in parts:
            raise ValueError(f"{path}: not an image path of a dataset version")
        return bytes(DVCFileSystem(str(self.repo), rev=rev).cat_file(f"/{self.data_root}/{line}/{path}"))


def _has_parent(repo: Path, commit: str) -> bool:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "-q", f"{commit}~1"], cwd=repo, capture_output=True, timeout=5, check=False
    )
    return proc.returncode == 0


# ----------------------------------------------------------------------------------------------------------------
# Label Studio


@dataclass(frozen=True)
class Progress:
    project_id: int
    url: str
    total: int
    labeled: int

    @property
    def waiting(self) -> int:
        return max(self.total - self.labeled, 0)

    def task_url(self, task_id: int) -> str:
        return f"{self.url}/projects/{self.project_id}/data?task={int(task_id)}"


def labeled_tasks(project: Any) -> int:
    """Tasks of a Label Studio project that count as labeled, as its own project card counts them.

    `finished_task_number` counts tasks whose `is_labeled` is set, which Label Studio keeps for annotations made in
    its UI and for annotations imported with the tasks alike. `num_tasks_with_annotations` is not used: it stays 0
    for imported annotations (after `make demo`, 0 / 1589 where Label Studio's card says 1440 / 1589)."""
    finished = getattr(project, "finished_task_number", None)
    if finished is None:  # an older server without the field: each task counted once however many annotations
        finished = getattr(project, "num_tasks_with_annotations", None)
    return int(finished or 0)


class LabelStudioReader:
    def __init__(self, url: str, token: str, timeout_s: float = 3.0, ttl_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._cache: TTLCache[dict[str, Progress]] = TTLCache(ttl_s)
        self._client: Any = None

    def _projects(self) -> dict[str, Progress]:
        from label_studio_sdk import LabelStudio

        from crux.label.projects import MARKER
        from crux.label.server import health

        if not health(self.url, timeout=self.timeout_s):
            raise ConnectionError(f"Label Studio at {self.url} does not answer /health")
        if self._client is None:
            # The SDK's LabelStudio re-declares __init__(*args, **kwargs) without annotations (its base is typed).
            self._client = LabelStudio(base_url=self.url, api_key=self.token, timeout=self.timeout_s)  # type: ignore[no-untyped-call]
        out = {}
        for project in self._client.projects.list(page_size=100):
            for text in (project.description or "").splitlines():
                if text.startswith(f"{MARKER} "):
                    name = text[len(MARKER) + 1 :].strip()
                    total = int(getattr(project, "task_number", None) or 0)
                    out[name] = Progress(int(project.id), self.url, total, labeled_tasks(project))
        return out

    def progress(self) -> dict[str, Progress]:
        """Each CRUX-managed project's progress by line name (projects carry the marker `crux project sync` adds)."""
        return self._cache.get("projects", self._projects)

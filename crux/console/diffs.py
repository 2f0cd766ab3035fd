"""Dataset diffs for the console, computed once per commit and paged from SQLite.

A commit never changes, so neither does its diff against its parent: the console computes it once (reading two
manifests through DVC takes seconds at 100k items), in one background worker, and keeps it in a SQLite file
(the summary as JSON, one row per changed item). A page then reads one page of rows by primary key, in
milliseconds whatever the size of the dataset, and a restarted console finds every diff it computed before.
"""

from __future__ import annotations

import concurrent.futures
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The order the page shows the changes in, and the only values `change` may take in a request.
CHANGES = ("added", "removed", "relabelled")
# Items per page of the dataset diff page.
PAGE_SIZE = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS diffs (line TEXT, commit_sha TEXT, summary TEXT, PRIMARY KEY (line, commit_sha));
CREATE TABLE IF NOT EXISTS items (
    line TEXT, commit_sha TEXT, change TEXT, pos INTEGER, task_id INTEGER, sha256 TEXT, name TEXT, image TEXT,
    old_classes TEXT, new_classes TEXT, annotators TEXT, detail TEXT,
    PRIMARY KEY (line, commit_sha, change, pos)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_sha ON items (line, commit_sha, sha256);
"""


@dataclass(frozen=True)
class DiffItem:
    change: str
    task_id: int
    sha256: str
    name: str
    image: str  # path in the dataset folder of the version that holds it (the parent's, for a removed item)
    old_classes: tuple[str, ...]
    new_classes: tuple[str, ...]
    annotators: tuple[str, ...]
    detail: str  # what changed in a relabel: boxes moved / added / removed, mask IoU


@dataclass(frozen=True)
class DiffPage:
    summary: dict[str, Any]
    change: str
    page: int
    pages: int
    items: tuple[DiffItem, ...]


def _detail(change: Any) -> str:
    parts = []
    if change.boxes.any:
        parts.append(f"{'regions' if change.mask_iou is not None else 'boxes'}: {change.boxes.describe()}")
    if change.mask_iou is not None:
        parts.append(f"mask IoU {change.mask_iou:.2f}")
    return "; ".join(parts)


def summary_of(diff: Any) -> dict[str, Any]:
    """What the page shows above the items: counts per class and split, before and after."""
    return {
        "classes": list(diff.classes),
        "before": diff.before,
        "after": diff.after,
        "split_before": diff.split_before,
        "split_after": diff.split_after,
        "per_class": {c: list(v) for c, v in diff.per_class().items()},
        "counts": {"added": len(diff.added), "removed": len(diff.removed), "relabelled": len(diff.relabelled)},
        "annotators": list(diff.annotators),
        "retasked": len(diff.retasked),
    }


def _connect(path: Path | None) -> sqlite3.Connection:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path or ":memory:"), check_same_thread=False, isolation_level=None, timeout=30)
    if path is not None:
        db.execute("PRAGMA journal_mode=WAL")  # pages read while a worker process writes another diff
    db.executescript(_SCHEMA)
    return db


def compute_into(path: Path, reader: Any, line: str, commit: str) -> None:
    """Compute one diff and write it to the cache file (run in the worker process)."""
    DiffCache(reader, path, processes=False)._compute(line, commit)


class DiffCache:
    """Each (line, commit)'s diff: in SQLite once computed; computed by one background worker when asked for.

    With a cache file the worker is a separate process: a diff of 100k items is seconds of pure Python, which in a
    thread would hold the GIL and stall every page the console serves meanwhile."""

    def __init__(self, reader: Any, path: Path | None, *, processes: bool = True) -> None:
        self.reader = reader  # a crux.console.sources.DatasetReader (None: no dataset repository configured)
        self.path = path
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], concurrent.futures.Future[None]] = {}
        # One diff at a time: each reads two manifests and may decode masks; the pages must keep their CPU.
        self._worker: concurrent.futures.Executor
        if processes and path is not None:
            import multiprocessing

            # spawn: a fork of a server with threads running may copy a held lock.
            context = multiprocessing.get_context("spawn")
            self._worker = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context)
        else:
            self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="crux-console-diff")
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            # One connection shared by the threads, every use under the lock (reads take milliseconds).
            self._db = _connect(self.path)
        return self._db

    def _submit(self, line: str, commit: str) -> concurrent.futures.Future[None]:
        if isinstance(self._worker, concurrent.futures.ProcessPoolExecutor):
            assert self.path is not None
            return self._worker.submit(compute_into, self.path, self.reader, line, commit)
        return self._worker.submit(self._compute, line, commit)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def ready(self, line: str, commit: str) -> bool:
        with self._lock:
            row = (
                self._conn().execute("SELECT 1 FROM diffs WHERE line = ? AND commit_sha = ?", (line, commit)).fetchone()
            )
        return row is not None

    def ensure(self, line: str, commit: str) -> concurrent.futures.Future[None]:
        """A future that is done when the diff is in the cache (at once if it already is)."""
        key = (line, commit)
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None and not (pending.done() and pending.exception() is not None):
                return pending
        if self.ready(line, commit):
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            done.set_result(None)
            return done
        with self._lock:
            future = self._pending.get(key)
            if future is None or (future.done() and future.exception() is not None):  # a failed one is retried
                future = self._submit(line, commit)
                self._pending[key] = future
            return future

    def _compute(self, line: str, commit: str) -> None:
        if self.ready(line, commit):
            return
        diff, images = self.reader.diff(line, commit)
        rows: list[tuple[Any, ...]] = []
        for change_name, changes in (("added", diff.added), ("removed", diff.removed), ("relabelled", diff.relabelled)):
            rev = f"{commit}~1" if change_name == "removed" else commit
            for pos, c in enumerate(changes):
                rows.append(
                    (line, commit, change_name, pos, int(c.task_id), c.sha256, c.original_name,
                     f"{rev}:{images.get(c.sha256, '')}", json.dumps(list(c.old_classes)),
                     json.dumps(list(c.new_classes)), json.dumps(list(c.annotators)), _detail(c))
                )  # fmt: skip
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")
            try:
                db.execute("DELETE FROM items WHERE line = ? AND commit_sha = ?", (line, commit))
                db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                # The summary last: a diff counts as ready only with all its items written.
                db.execute(
                    "INSERT OR REPLACE INTO diffs VALUES (?, ?, ?)", (line, commit, json.dumps(summary_of(diff)))
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def page(self, line: str, commit: str, change: str, page: int, size: int = PAGE_SIZE) -> DiffPage | None:
        """One page of one kind of change (None: the diff is not computed yet). `page` counts from 1."""
        with self._lock:
            db = self._conn()
            row = db.execute("SELECT summary FROM diffs WHERE line = ? AND commit_sha = ?", (line, commit)).fetchone()
            if row is None:
                return None
            summary = json.loads(row[0])
            total = int(summary["counts"].get(change, 0))
            pages = max(1, -(-total // size))
            page = min(max(page, 1), pages)
            found = db.execute(
                "SELECT change, task_id, sha256, name, image, old_classes, new_classes, annotators, detail FROM items"
                " WHERE line = ? AND commit_sha = ? AND change = ? AND pos >= ? AND pos < ? ORDER BY pos",
                (line, commit, change, (page - 1) * size, page * size),
            ).fetchall()
        items = tuple(
            DiffItem(r[0], int(r[1]), r[2], r[3], r[4], _tuple(r[5]), _tuple(r[6]), _tuple(r[7]), r[8]) for r in found
        )
        return DiffPage(summary, change, page, pages, items)

    def image_of(self, line: str, commit: str, sha256: str) -> tuple[str, str] | None:
        """(revision, path) of a changed item's image in this diff, by its sha256; None when no item has it."""
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "SELECT image FROM items WHERE line = ? AND commit_sha = ? AND sha256 = ? LIMIT 1",
                    (line, commit, sha256),
                )
                .fetchone()
            )
        if row is None or ":" not in row[0]:
            return None
        rev, _, path = str(row[0]).partition(":")
        return (rev, path) if path else None


def _tuple(text: str) -> tuple[str, ...]:
    values: Sequence[Any] = json.loads(text)
    return tuple(str(v) for v in values)

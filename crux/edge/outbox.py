"""On-disk outbox of the edge: captures wait here until the ingest service has them.

Guarantees
- Enqueue is atomic: a capture is one file, written to a temporary name, fsynced and renamed, so a
  power cut leaves either the whole capture or nothing.
- Order: one uploader thread sends the oldest file first and moves on only when it is acknowledged.
- None twice: each capture carries an Idempotency-Key chosen at enqueue time and reused on every
  retry, so an upload whose response was lost is stored once by the server.
- None lost: network errors, 5xx, 408 and 429 are retried with exponential backoff (forever); 401/403
  (revoked or wrong token) are retried too, loudly, since an operator can fix them. Captures the
  server will never accept (413/415/422/409...) go to `rejected/` with the server's answer, not to
  the bin, so one bad capture cannot block the queue.
- Quota: when the queue would exceed `quota_bytes`, the oldest OK captures are evicted first; an NG
  capture is never dropped silently: if it cannot fit, enqueue raises OutboxFullError.

Only stdlib + httpx, so the edge box needs neither torch nor prefect for this.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from crux.config import ConfigError
from crux.errors import CruxError


class OutboxBusyError(CruxError, RuntimeError):
    """Another process owns the outbox folder (two edge runtimes on one station)."""


log = logging.getLogger(__name__)

SUFFIX = ".cap"
# Statuses that say "try again later"; anything else in 4xx means this capture will never be accepted.
RETRYABLE_STATUS = frozenset({401, 403, 408, 425, 429})


class OutboxFullError(RuntimeError):
    """An NG capture does not fit in the quota even after evicting every OK capture."""


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    ng: bool
    key: str
    path: Path
    size: int

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class OutboxStats:
    enqueued: int = 0
    uploaded: int = 0
    replayed: int = 0
    evicted_ok: int = 0
    dropped_ok: int = 0
    rejected: int = 0
    failed_attempts: int = 0


def _item_name(seq: int, ng: bool, key: str) -> str:
    # Zero-padded sequence first: lexical order of names is the upload order.
    return f"{seq:016d}-{'ng' if ng else 'ok'}-{key}{SUFFIX}"


def _parse_name(path: Path, size: int) -> OutboxItem | None:
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else None
    if stem is None:
        return None
    parts = stem.split("-", 2)
    if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in ("ok", "ng"):
        return None
    return OutboxItem(int(parts[0]), parts[1] == "ng", parts[2], path, size)


def encode_capture(image: bytes, metadata: Mapping[str, Any], content_type: str, filename: str) -> bytes:
    """One file per capture: a JSON header line, then the raw image bytes."""
    header = {"metadata": dict(metadata), "content_type": content_type, "filename": filename}
    return json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n" + image


def decode_capture(blob: bytes) -> tuple[dict[str, Any], bytes]:
    header, _, image = blob.partition(b"\n")
    return json.loads(header), image


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem, hence best effort.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Outbox:
    """A folder of pending captures and the thread that uploads them to `{server_url}/v1/captures`.

    Use `enqueue` from the inspection loop; `start()` the uploader once; `drain()` to wait until the
    queue is empty; `stop()` on shutdown (pending captures stay on disk for the next start).
    Only one Outbox may own a folder at a time (an exclusive lock file enforces it on POSIX).
    """

    def __init__(
        self,
        root: Path,
        server_url: str,
        token: str,
        *,
        quota_bytes: int = 2 * 1024**3,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 60.0,
        timeout_s: float = 10.0,
        client: httpx.Client | None = None,
        fsync: bool = True,
        on_event: Callable[[str, OutboxItem], None] | None = None,
    ) -> None:
        if quota_bytes <= 0:
            raise ConfigError(f"edge.outbox_quota_mb: the quota must be positive, got {quota_bytes} bytes")
        self.root = Path(root)
        self.queue_dir = self.root / "queue"
        self.rejected_dir = self.root / "rejected"
        self.tmp_dir = self.root / "tmp"
        for d in (self.queue_dir, self.rejected_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_fh = self._take_folder_lock()
        self.url = server_url.rstrip("/") + "/v1/captures"
        self.token = token
        self.quota_bytes = quota_bytes
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.fsync = fsync
        self.on_event = on_event
        self.stats = OutboxStats()
        self._client = client or httpx.Client(timeout=timeout_s)
        self._owns_client = client is None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight: str | None = None
        # Leftovers of a crash during enqueue are incomplete by construction: delete them.
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
        self._items: dict[str, OutboxItem] = {}
        for path in self.queue_dir.iterdir():
            item = _parse_name(path, path.stat().st_size)
            if item is not None:
                self._items[item.name] = item
        self._next_seq = max((i.seq for i in self._items.values()), default=0) + 1
        self._bytes = sum(i.size for i in self._items.values())

    # ------------------------------------------------------------------ enqueue side

    def enqueue(
        self,
        image: bytes,
        metadata: Mapping[str, Any],
        *,
        ng: bool,
        content_type: str = "image/jpeg",
        filename: str = "capture.jpg",
    ) -> OutboxItem | None:
        """Persist one capture for upload. Returns the item, or None when an OK capture was dropped
        for lack of room (logged). Raises OutboxFullError when an NG capture cannot fit."""
        meta = dict(metadata)
        meta.setdefault("verdict", "ng" if ng else "ok")
        blob = encode_capture(image, meta, content_type, filename)
        size = len(blob)
        with self._lock:
            if not self._make_room(size, ng):
                if ng:
                    log.error("outbox full: NG capture of %d bytes does not fit in %d bytes", size, self.quota_bytes)
                    raise OutboxFullError(
                        f"NG capture ({size} bytes) does not fit in the outbox quota of {self.quota_bytes} bytes "
                        f"even after evicting all OK captures ({self._bytes} bytes of NG captures pending)"
                    )
                self.stats.dropped_ok += 1
                log.warning("outbox full of NG captures: dropped a new OK capture (%d bytes)", size)
                return None
            seq = self._next_seq
            self._next_seq += 1
            key = uuid.uuid4().hex
            item = OutboxItem(seq, ng, key, self.queue_dir / _item_name(seq, ng, key), size)
            tmp = self.tmp_dir / f"{item.name}.part"
            with open(tmp, "wb") as fh:
                fh.write(blob)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, item.path)
            if self.fsync:
                _fsync_dir(self.queue_dir)
            self._items[item.name] = item
            self._bytes += size
            self.stats.enqueued += 1
            self._idle.clear()
        self._wake.set()
        return item

    def _make_room(self, size: int, ng: bool) -> bool:
        """Evict the oldest OK captures until `size` more bytes fit (caller holds the lock)."""
        if self._bytes + size <= self.quota_bytes:
            return True
        if size > self.quota_bytes:
            return False
        oks = sorted((i for i in self._items.values() if not i.ng and i.name != self._in_flight), key=lambda i: i.seq)
        # Evict only if that actually makes room; otherwise an OK would be lost for nothing.
        freeable = sum(i.size for i in oks)
        if self._bytes - freeable + size > self.quota_bytes:
            return False
        for victim in oks:
            if self._bytes + size <= self.quota_bytes:
                break
            victim.path.unlink(missing_ok=True)
            del self._items[victim.name]
            self._bytes -= victim.size
            self.stats.evicted_ok += 1
            log.info("outbox quota: evicted OK capture %s (%d bytes)", victim.name, victim.size)
            self._emit("evicted", victim)
        return True

    # ------------------------------------------------------------------ inspection

    def pending(self) -> list[OutboxItem]:
        with self._lock:
            return sorted(self._items.values(), key=lambda i: i.seq)

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def rejected(self) -> list[Path]:
        return sorted(p for p in self.rejected_dir.iterdir() if p.name.endswith(SUFFIX))

    # ------------------------------------------------------------------ uploader

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="crux-outbox-uploader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the uploader after the current attempt; pending captures stay on disk."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        if self._owns_client:
            self._client.close()
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def drain(self, timeout: float) -> bool:
        """Wait until the queue is empty (True) or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._items:
                    return True
            self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        with self._lock:
            return not self._items

    def _run(self) -> None:
        delay = self.backoff_initial_s
        while not self._stop.is_set():
            head = self._head()
            if head is None:
                self._idle.set()
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                outcome = self._attempt(head)
            except Exception:  # e.g. disk errors: keep the thread alive and the capture queued
                log.exception("outbox: unexpected error while uploading %s", head.name)
                outcome = "retry"
            if outcome == "retry":
                self.stats.failed_attempts += 1
                # Full jitter keeps a fleet of stations from hammering a recovering server in lockstep.
                self._stop.wait(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self.backoff_max_s)
            else:
                delay = self.backoff_initial_s
        with self._lock:
            self._in_flight = None

    def _head(self) -> OutboxItem | None:
        with self._lock:
            if not self._items:
                self._in_flight = None
                return None
            head = min(self._items.values(), key=lambda i: i.seq)
            self._in_flight = head.name
            return head

    def _attempt(self, item: OutboxItem) -> str:
        try:
            blob = item.path.read_bytes()
        except FileNotFoundError:  # evicted between _head and here
            self._forget(item)
            return "done"
        try:
            header, image = decode_capture(blob)
            if not {"metadata", "filename", "content_type"} <= set(header):
                raise KeyError("metadata/filename/content_type")
        except (ValueError, KeyError, TypeError) as exc:
            # Cannot come from enqueue (atomic write); only from outside tampering or disk corruption.
            self._reject(item, 0, f"unreadable outbox file: {exc}")
            return "done"
        try:
            response = self._client.post(
                self.url,
                headers={"Authorization": f"Bearer {self.token}", "Idempotency-Key": item.key},
                files={"image": (header["filename"], image, header["content_type"])},
                data={"metadata": json.dumps(header["metadata"], separators=(",", ":"))},
            )
        except httpx.HTTPError as exc:
            log.debug("outbox: upload of %s failed (%s); will retry", item.name, exc)
            return "retry"
        status = response.status_code
        if status in (200, 201):
            if status == 200:
                self.stats.replayed += 1
            self.stats.uploaded += 1
            self._forget(item, delete=True)
            self._emit("uploaded", item)
            return "done"
        if status >= 500 or status in RETRYABLE_STATUS:
            level = logging.ERROR if status in (401, 403) else logging.DEBUG
            log.log(level, "outbox: server answered %d for %s: %s; will retry", status, item.name, response.text[:300])
            return "retry"
        # The server will never take this capture: keep it with the reason, and go on with the next.
        self._reject(item, status, response.text[:10000])
        return "done"

    def _reject(self, item: OutboxItem, status: int, body: str) -> None:
        log.error("outbox: %s rejected (status %d): %s", item.name, status, body[:300])
        reason = self.rejected_dir / (item.name + ".reason.json")
        reason.write_text(json.dumps({"status": status, "body": body}))
        os.replace(item.path, self.rejected_dir / item.name)
        self.stats.rejected += 1
        self._forget(item)
        self._emit("rejected", item)

    def _forget(self, item: OutboxItem, delete: bool = False) -> None:
        with self._lock:
            if delete:
                item.path.unlink(missing_ok=True)
            if self._items.pop(item.name, None) is not None:
                self._bytes -= item.size
            self._in_flight = None

    def _emit(self, event: str, item: OutboxItem) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event, item)
            except Exception:  # a faulty callback must not kill the uploader
                log.exception("outbox: on_event callback failed")

    def _take_folder_lock(self) -> Any:
        fh = open(self.root / ".lock", "a+")  # noqa: SIM115 - held open for the Outbox's lifetime
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory locks; single-owner is the caller's duty there
            pass
        except OSError as exc:
            fh.close()
            raise OutboxBusyError(
                f"outbox folder {self.root} is in use by another process (another `crux edge run`?)"
            ) from exc
        return fh

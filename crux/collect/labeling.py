"""Collect: captures uploaded by edge stations (the ingest DB) become Label Studio tasks of their line's project.

Each capture becomes one task carrying the edge model's prediction as a pre-annotation. Tasks are imported
most-informative first — captures a drift alarm queued (crux.monitor.watch), then NG before OK, and within each
group the most uncertain first (smallest top-2 margin where the edge sent class scores, else the lowest score) —
through the bulk import endpoint in batches; each
batch is recorded in the ingest DB (`mark_sent`) right after Label Studio accepted it.

Idempotent: the capture id travels in the task data, and every run first reconciles the project's existing
tasks against the unsent captures, so a run that died between an import and its `mark_sent` never leads to a
second task for the same capture.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crux.collect.heartbeats import queued_captures
from crux.collect.records import CaptureRecord, list_captures, mark_sent
from crux.errors import CruxError
from crux.geometry import PixelBox
from crux.kinds import Label, get_kind

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.types import RoleBasedTask
    from sqlalchemy.engine import Engine

    from crux.collect.storage import ImageStore
    from crux.config import ProjectSpec

BATCH_SIZE = 500
# Label Studio 1.23 (open source) accepts "Sequential sampling", "Uniform sampling" and "Uncertainty sampling".
# Uncertainty sampling only ranks tasks whose prediction carries the project's *current* `model_version` (one
# version; captures from stations on different model versions fall back to random order) and knows nothing of
# NG vs OK. Sequential sampling hands out unlabeled tasks in task-id order, and ids follow the import order, so
# importing in our priority order gives annotators exactly NG-first, most-uncertain-first within every run. Tasks
# of a later run come after the unlabeled rest of earlier runs; the `priority` data column sorts the whole queue
# in the Data Manager (a tab ordered by it also drives "Label All Tasks").
SAMPLING = "Sequential sampling"


class CollectError(CruxError, RuntimeError):
    """Captures cannot be handed to Label Studio (image store not reachable by it, project missing, ...)."""


@dataclass(frozen=True)
class CollectReport:
    project: str
    project_id: int
    pending: int  # unsent captures of the line found in the ingest DB
    reconciled: int  # already tasks (an earlier run died before mark_sent): marked sent, not imported again
    created: int  # new tasks imported by this run
    predictions: int  # of which carry the edge prediction as a pre-annotation
    batches: int
    task_ids: tuple[int, ...]  # in import (= priority) order

    def summary(self) -> str:
        return (
            f"{self.project}: {self.created} new task(s) in {self.batches} batch(es), {self.predictions} with a "
            f"pre-annotation, {self.reconciled} reconciled from an earlier run, {self.pending} capture(s) pending"
        )


# --------------------------------------------------------------------------------------------------
# Ordering


def _class_for(name: str | None, spec: ProjectSpec) -> str | None:
    if name is None:
        return None
    if name in spec.aliases:
        return spec.aliases[name]
    return name if name in spec.classes else None


def predicted_class(record: CaptureRecord) -> str | None:
    """The edge's top class: `prediction`, else the arg-max of `scores`."""
    if record.prediction is not None:
        return record.prediction
    if record.scores:
        return max(record.scores.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return None


def confidence(record: CaptureRecord) -> float | None:
    """The edge model's confidence in its decision: the predicted class's score, else the highest class
    score, else (detection without image-level scores) the lowest box score; None when nothing was sent."""
    if record.scores:
        top = predicted_class(record)
        return float(record.scores[top]) if top in record.scores else float(max(record.scores.values()))
    box_scores = [float(b["score"]) for b in record.boxes if b.get("score") is not None]
    return min(box_scores) if box_scores else None


def margin(record: CaptureRecord) -> float | None:
    """Top-1 minus top-2 class score where at least two scores are given, else `confidence`. Lower = less sure."""
    if len(record.scores) >= 2:
        first, second = sorted((float(v) for v in record.scores.values()), reverse=True)[:2]
        return first - second
    return confidence(record)


def is_ng(record: CaptureRecord, spec: ProjectSpec) -> bool:
    """The edge's NG verdict; without one, derived from the prediction. When nothing tells, NG: an unclear frame
    must never hide behind the OK samples."""
    if record.verdict is not None:
        return record.verdict == "ng"
    reason = getattr(record, "reason", None)  # stored once the ingest DB keeps `reason` (see crux/collect/schemas)
    if reason == "ng":
        return True
    if spec.kind == "detect":
        return bool(record.boxes) or record.model_version is None
    top = _class_for(predicted_class(record), spec)
    if spec.ok_class is None or top is None:
        return True
    return top != spec.ok_class


def priority_key(record: CaptureRecord, spec: ProjectSpec, first: Collection[int] = ()) -> tuple[int, float, int]:
    """Sort key, ascending = label first: (queued by a drift alarm -1 / NG 0 / OK 1, margin — unknown last,
    capture id). `first`: capture ids a drift alarm queued (crux.collect.heartbeats.queue_shifted)."""
    value = margin(record)
    group = -1 if record.id in first else 0 if is_ng(record, spec) else 1
    return (group, math.inf if value is None else value, record.id)


def priority_label(key: tuple[int, float, int]) -> str:
    """The sort key as a fixed-width string: sorting the Data Manager column by it sorts the whole queue (a drift
    alarm's "-1-…" sorts before "0-…": '-' < '0')."""
    group, value, capture_id = key
    shown = 9.999999 if math.isinf(value) else min(max(value, 0.0), 9.999999)
    return f"{group}-{shown:.6f}-{capture_id:012d}"


def order_captures(
    records: Iterable[CaptureRecord], spec: ProjectSpec, first: Collection[int] = ()
) -> list[CaptureRecord]:
    """Captures a drift alarm queued, then NG, then OK; within each, the most uncertain first; ties by arrival."""
    return sorted(records, key=lambda r: priority_key(r, spec, first))


# --------------------------------------------------------------------------------------------------
# Tasks


def _clip(box: Sequence[float], width: int, height: int) -> PixelBox | None:
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = min(max(x1, 0.0), float(width)), min(max(x2, 0.0), float(width))
    y1, y2 = min(max(y1, 0.0), float(height)), min(max(y2, 0.0), float(height))
    return PixelBox(x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _region_mask(box: Mapping[str, Any], record: CaptureRecord) -> Any:
    """The region's bool mask from its COCO RLE, or None when absent or not of the capture's size."""
    from crux.postprocess import rle_decode

    counts = box.get("mask")
    if not isinstance(counts, str):
        return None
    try:
        return rle_decode(counts, record.height, record.width)
    except ValueError:
        return None


def prediction_for(record: CaptureRecord, spec: ProjectSpec) -> dict[str, Any] | None:
    """The edge prediction as a Label Studio prediction `{model_version, score, result}`, or None when the
    capture has none usable (no model output, or only classes the project does not have)."""
    kind = get_kind(spec.kind)
    score = confidence(record)
    results: list[dict[str, Any]] = []
    if kind.geometry in ("box", "mask"):
        for box in record.boxes:
            cls = _class_for(box.get("class"), spec)
            pixels = _clip(box.get("box") or (0, 0, 0, 0), record.width, record.height)
            # A segmenter's region carries its mask (COCO RLE over the whole image); a box alone paints nothing.
            mask = _region_mask(box, record) if kind.geometry == "mask" else None
            if cls is None or pixels is None or (kind.geometry == "mask" and mask is None):
                continue
            box_score = box.get("score")
            results.extend(
                kind.to_results(
                    [Label(cls=cls, box=pixels, mask=mask)],
                    record.width,
                    record.height,
                    score=None if box_score is None else float(box_score),
                )
            )
        for i, result in enumerate(results):
            result["id"] = f"p{i}"
        verdict = _class_for(predicted_class(record), spec) if kind.geometry == "mask" and spec.ok_class else None
        if verdict is not None:  # the edge's whole-image class pre-fills the project's verdict Choices
            results.extend(kind.to_results([Label(cls=verdict)], record.width, record.height, score=score))
        # No box from a known model is a prediction too ("no defect"); no model at all is none.
        if not results and record.model_version is None:
            return None
    else:
        cls = _class_for(predicted_class(record), spec)
        if cls is None:
            return None
        results = kind.to_results([Label(cls=cls)], record.width, record.height, score=score)
    payload: dict[str, Any] = {"model_version": record.model_version or "edge", "result": results}
    if score is not None:
        payload["score"] = score
    return payload


def task_for(record: CaptureRecord, spec: ProjectSpec, image_url: str, first: Collection[int] = ()) -> dict[str, Any]:
    data: dict[str, Any] = {
        "image": image_url,
        "sha256": record.sha256,
        "original_name": record.original_name or os.path.basename(record.image_key),
        "width": record.width,
        "height": record.height,
        "capture_id": record.id,
        "station": record.station,
        "line": record.line,
        "captured_at": record.captured_at.isoformat(),
        "verdict": record.verdict,
        "priority": priority_label(priority_key(record, spec, first)),
    }
    reason = getattr(record, "reason", None)
    if reason is not None:
        data["reason"] = reason
    task: dict[str, Any] = {"data": data}
    prediction = prediction_for(record, spec)
    if prediction is not None:
        task["predictions"] = [prediction]
    return task


def captures_to_tasks(
    records: Iterable[CaptureRecord],
    spec: ProjectSpec,
    image_url_for: Callable[[CaptureRecord], str],
    first: Collection[int] = (),
) -> list[dict[str, Any]]:
    """One Label Studio task per capture, in labeling priority order (see `order_captures`)."""
    return [task_for(r, spec, image_url_for(r), first) for r in order_captures(records, spec, first)]


# --------------------------------------------------------------------------------------------------
# Label Studio side


def _is_local(store: ImageStore) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(store.fs, LocalFileSystem)


def _protocol(store: ImageStore) -> str:
    protocol = store.fs.protocol
    return protocol if isinstance(protocol, str) else protocol[0]


def image_url_resolver(store: ImageStore, files_root: Path | None) -> Callable[[CaptureRecord], str]:
    """How Label Studio reaches a capture's image: `/data/local-files/?d=…` below its files root for a local
    store (refused with a clear error when the store lies outside it), the object URL for S3."""
    if _is_local(store):
        if files_root is None:
            raise CollectError(
                f"the ingest image store {store.root} is a local folder, but Label Studio runs elsewhere "
                "(no files root); use an s3:// ingest.storage_url for a remote Label Studio"
            )
        root = Path(files_root).resolve()
        folder = Path(store.root).resolve()
        if not folder.is_relative_to(root):
            raise CollectError(
                f"the ingest image store {folder} is outside Label Studio's files root {root}: Label Studio "
                "cannot serve its images. Move ingest.storage_url below it or set labelstudio.files_root; "
                "nothing was imported"
            )
        prefix = folder.relative_to(root).as_posix()

        def local_url(record: CaptureRecord) -> str:
            rel = f"{prefix}/{record.image_key}" if prefix != "." else record.image_key
            return "/data/local-files/?d=" + urllib.parse.quote(rel)

        return local_url
    protocol = _protocol(store)
    if protocol not in ("s3", "s3a"):
        raise CollectError(f"ingest image store {protocol}:// cannot be served by Label Studio; use a folder or s3://")

    def s3_url(record: CaptureRecord) -> str:
        return f"s3://{store.path(record.image_key)}"

    return s3_url


def ensure_image_storage(
    client: LabelStudio, project_id: int, store: ImageStore, s3_options: Mapping[str, Any] | None = None
) -> None:
    """A Label Studio storage over the ingest image store (not synced: collect imports the tasks itself)."""
    from crux.label.importer import ensure_storage

    root = store.root if _is_local(store) else f"s3://{store.root}"
    try:
        ensure_storage(client, project_id, root, s3_options or {})
    except Exception as exc:  # the SDK raises ApiError subclasses per status code
        raise CollectError(f"Label Studio refused a storage for the ingest images at {root}: {exc}") from exc


def ensure_sampling(client: LabelStudio, project: Any) -> None:
    if getattr(project, "sampling", None) != SAMPLING:
        client.projects.update(id=project.id, sampling=SAMPLING)


def prepare_project(
    client: LabelStudio,
    project_name: str,
    store: ImageStore,
    files_root: Path | None,
    s3_options: Mapping[str, Any] | None = None,
) -> int:
    """Check the store is reachable by Label Studio, then make the project ready (storage, sampling). Idempotent."""
    from crux.label.projects import require_project

    image_url_resolver(store, files_root)  # fails before any write when Label Studio could not serve the images
    project = require_project(client, project_name)
    ensure_image_storage(client, project.id, store, s3_options)
    ensure_sampling(client, project)
    return int(project.id)


def tasks_by_capture(client: LabelStudio, project_id: int) -> dict[int, int]:
    """capture id → task id of the project's tasks that came from the ingest DB."""
    found: dict[int, int] = {}
    task: RoleBasedTask
    for task in client.tasks.list(project=project_id, fields="task_only", page_size=1000):
        data: dict[str, Any] = task.data or {}
        capture_id = data.get("capture_id")
        if isinstance(capture_id, int) and not isinstance(capture_id, bool):
            found.setdefault(capture_id, int(task.id))
    return found


def unsent_captures(engine: Engine, line: str, page: int = 1000) -> list[CaptureRecord]:
    """All captures of `line` not yet in Label Studio (keyset paging, so a long backlog is read whole)."""
    records: list[CaptureRecord] = []
    after: int | None = None
    while True:
        chunk = list_captures(engine, line=line, sent=False, after=after, limit=page)
        records.extend(chunk)
        if len(chunk) < page:
            return records
        after = chunk[-1].id


def collect(
    engine: Engine,
    client: LabelStudio,
    project_name: str,
    spec: ProjectSpec,
    storage: ImageStore,
    files_root: Path | None,
    batch_size: int = BATCH_SIZE,
    *,
    s3_options: Mapping[str, Any] | None = None,
    max_tasks: int | None = None,
) -> CollectReport:
    """Unsent captures of line `project_name` → tasks of the Label Studio project of that name.

    `files_root` is Label Studio's LOCAL_FILES_DOCUMENT_ROOT (needed for a local image store, which must lie
    below it); `s3_options` are the credentials Label Studio needs for an S3 store; `max_tasks` caps one run
    (the most important captures go first).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    url_for = image_url_resolver(storage, files_root)
    project_id = prepare_project(client, project_name, storage, files_root, s3_options)
    pending = unsent_captures(engine, project_name)
    existing = tasks_by_capture(client, project_id) if pending else {}
    orphans = {r.id: existing[r.id] for r in pending if r.id in existing}
    if orphans:
        mark_sent(engine, project_name, orphans)
    todo = [r for r in pending if r.id not in orphans]
    first = queued_captures(engine, project_name) if todo else set()  # a drift alarm's frames go ahead
    if max_tasks is not None:
        todo = order_captures(todo, spec, first)[:max_tasks]
    tasks = captures_to_tasks(todo, spec, url_for, first)
    task_ids: list[int] = []
    batches = 0
    for start in range(0, len(tasks), batch_size):
        batch = tasks[start : start + batch_size]
        # The SDK types `request` as its ImportApiRequest models and leaves `task_ids` out of the response model
        # (Label Studio Community returns it; the model keeps it as an extra field); plain task dicts are what the
        # endpoint takes.
        response = client.projects.import_tasks(id=project_id, request=batch, return_task_ids=True)  # type: ignore[arg-type]
        ids = list(response.task_ids or [])  # type: ignore[attr-defined]
        if len(ids) != len(batch):
            raise CollectError(
                f"Label Studio returned {len(ids)} task id(s) for a batch of {len(batch)}; the next run "
                "reconciles by capture id"
            )
        mark_sent(engine, project_name, {int(t["data"]["capture_id"]): int(i) for t, i in zip(batch, ids, strict=True)})
        task_ids.extend(int(i) for i in ids)
        batches += 1
    return CollectReport(
        project=project_name,
        project_id=project_id,
        pending=len(pending),
        reconciled=len(orphans),
        created=len(tasks),
        predictions=sum(1 for t in tasks if "predictions" in t),
        batches=batches,
        task_ids=tuple(task_ids),
    )

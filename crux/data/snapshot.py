"""Label Studio snapshot export → a dataset version folder (manifest, classes, dataset info, images).

Two steps with a file between them, so that each can be retried and tested on its own:

1. `export_snapshot_to_file` asks Label Studio for a snapshot export (JSON) and streams it to disk.
2. `build_dataset` stream-parses that file (ijson: one task in memory at a time), picks the annotation
   of each task, fetches only images the store does not have yet, and writes the version into a
   temporary folder next to `out_dir` that replaces `out_dir` only once it is complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crux.config import validate_ratios
from crux.data.manifest import (
    CLASSES,
    DATASET,
    MANIFEST,
    AnnotatorLabels,
    ClassesInfo,
    DatasetInfo,
    ExcludedItem,
    ItemLabel,
    ItemPrediction,
    ManifestItem,
    count_items,
    round_box,
    write_classes,
    write_dataset_info,
    write_manifest,
)
from crux.data.provenance import annotation_provenance, parent_prediction
from crux.data.split import assign_split
from crux.data.store import (
    FORMAT_EXT,
    Fetcher,
    FetchError,
    decode_image,
    find_image,
    image_size,
    link_or_copy,
    relative_image_path,
    sha256_hex,
)
from crux.errors import CruxError
from crux.geometry import iou
from crux.kinds import IMAGE_KEY, Label, LabelError, get_kind
from crux.masks import encode_png, write_mask

log = logging.getLogger(__name__)


class SnapshotError(CruxError, RuntimeError):
    """The export could not be taken or read; the message names the task id where there is one."""


# --------------------------------------------------------------------------------------------------
# 1. Export from Label Studio

# Annotator e-mails instead of bare user ids (readable diffs); drafts as ids only. Predictions in full: an
# annotation made from a pre-annotation (`parent_prediction`) is compared with it to tell "accepted unchanged"
# from "edited" (provenance).
SERIALIZATION_OPTIONS: dict[str, Any] = {
    "annotations__completed_by": {"only_id": False},
    "drafts": {"only_id": True},
    "predictions": {"only_id": False},
}


def _is_transient(exc: BaseException) -> bool:
    """Connection trouble or a 5xx: worth another try. A 4xx (bad token, no such project) is not."""
    import httpx

    if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status >= 500 or status == 429)


def _with_retries(
    what: str, call: Callable[[], Any], retries: int, backoff_s: float, sleep: Callable[[float], None]
) -> Any:
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as exc:
            if not _is_transient(exc):
                raise SnapshotError(f"{what} failed: {exc}") from exc
            if attempt == retries:
                raise SnapshotError(f"{what} failed after {retries + 1} attempts: {type(exc).__name__}: {exc}") from exc
            sleep(backoff_s * 2**attempt)
    raise AssertionError("unreachable")


def export_snapshot_to_file(
    client: Any,
    project_id: int,
    dest: Path,
    *,
    retries: int = 3,
    backoff_s: float = 1.0,
    poll_interval_s: float = 0.5,
    timeout_s: float = 1800.0,
    chunk_size: int = 1 << 20,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Path:
    """Snapshot-export all tasks of a project as Label Studio JSON into `dest`, streamed to disk.

    `client` is a `label_studio_sdk.LabelStudio`. Connection errors and 5xx are retried `retries` times
    with exponential backoff; the file appears at `dest` only when the download is complete (`.part` first).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    exports = client.projects.exports
    created = _with_retries(
        f"creating a snapshot export of Label Studio project {project_id}",
        lambda: exports.create(id=project_id, title="crux snapshot", serialization_options=SERIALIZATION_OPTIONS),
        retries,
        backoff_s,
        sleep,
    )
    export_id = created.id
    status = getattr(created, "status", None)
    deadline = clock() + timeout_s
    while status != "completed":
        if status == "failed":
            raise SnapshotError(f"Label Studio export {export_id} of project {project_id} failed on the server")
        if clock() > deadline:
            raise SnapshotError(
                f"Label Studio export {export_id} of project {project_id} not ready after {timeout_s:.0f} s"
            )
        sleep(poll_interval_s)
        status = _with_retries(
            f"polling export {export_id}",
            lambda: exports.get(id=project_id, export_pk=export_id),
            retries,
            backoff_s,
            sleep,
        ).status

    part = dest.with_name(dest.name + ".part")

    def download() -> None:
        # A download that dies half-way is started again from the beginning (the server-side file is complete).
        with part.open("wb") as f:
            for chunk in exports.download(
                id=project_id, export_pk=export_id, export_type="JSON", request_options={"chunk_size": chunk_size}
            ):
                f.write(chunk)

    try:
        _with_retries(f"downloading export {export_id} of project {project_id}", download, retries, backoff_s, sleep)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
        # Label Studio keeps every export file on its disk; ours is on ours now.
        # Best effort: a leftover export file is not worth failing a snapshot.
        with contextlib.suppress(Exception):
            exports.delete(id=project_id, export_pk=export_id)
    return dest


# --------------------------------------------------------------------------------------------------
# 2. Parse the export


@dataclass(frozen=True)
class ParsedTask:
    """What a snapshot keeps of one labeled task (the raw results of the chosen annotation only)."""

    task_id: int
    url: str
    sha256: str | None
    original_name: str
    data_width: int | None
    data_height: int | None
    results: tuple[Mapping[str, Any], ...]
    annotators: tuple[str, ...]
    annotation_ids: tuple[int, ...]
    # Quick check at parse time (classes and boxes at IoU 0.5); the dataset uses the agreement of `people`.
    conflicted: bool
    # Each annotator's latest results, by annotator (only filled when there are two or more).
    people: tuple[tuple[str, tuple[Mapping[str, Any], ...]], ...] = ()
    provenance: str | None = None
    # The pre-annotation the chosen annotation was made from: (model_version, score, results).
    prediction: tuple[str, float | None, tuple[Mapping[str, Any], ...]] | None = None


@dataclass
class ParseCounts:
    tasks: int = 0
    skipped: int = 0
    unlabeled: int = 0


def _annotator(annotation: Mapping[str, Any]) -> str:
    user = annotation.get("completed_by")
    if isinstance(user, Mapping):
        return str(user.get("email") or f"user:{user.get('id')}")
    if user is None:
        return "unknown"
    return f"user:{user}"


def _latest_key(annotation: Mapping[str, Any]) -> tuple[str, int]:
    return (str(annotation.get("updated_at") or annotation.get("created_at") or ""), int(annotation.get("id") or 0))


def labels_agree(a: Sequence[Label], b: Sequence[Label], iou_threshold: float = 0.5) -> bool:
    """Same classes, and (detection) every box of one matches a same-class box of the other at IoU ≥ threshold."""
    if sorted(lb.cls for lb in a) != sorted(lb.cls for lb in b):
        return False
    unmatched = [lb for lb in b if lb.box is not None]
    for label in a:
        if label.box is None:
            continue
        box = tuple(label.box.as_list())
        best = max(
            (c for c in unmatched if c.cls == label.cls),
            key=lambda c: iou(box, tuple(c.box.as_list())),  # type: ignore[union-attr]
            default=None,
        )
        if best is None or iou(box, tuple(best.box.as_list())) < iou_threshold:  # type: ignore[union-attr]
            return False
        unmatched.remove(best)
    return True


def _labels_of(
    kind_name: str, task_id: int, results: Any, width: int, height: int, classes: Sequence[str]
) -> list[Label]:
    kind = get_kind(kind_name)
    if not isinstance(results, list) or not all(isinstance(r, Mapping) for r in results):
        raise SnapshotError(f"task {task_id}: annotation result is not a list of objects")
    try:
        labels = kind.from_results(results, width, height)
    except (KeyError, TypeError, ValueError, LabelError, ZeroDivisionError, AttributeError, OverflowError) as exc:
        # AttributeError: a `value` that is not an object; OverflowError: int() of an infinite number.
        raise SnapshotError(f"task {task_id}: malformed {kind.result_type} result: {exc!r}") from exc
    for label in labels:
        if label.cls not in classes:
            raise SnapshotError(f"task {task_id}: unknown class {label.cls!r}; known: {', '.join(classes)}")
    return labels


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def parse_task(task: Any, index: int, kind: str, classes: Sequence[str]) -> ParsedTask | str:
    """One exported task → ParsedTask, or "skipped" / "unlabeled"."""
    if (
        not isinstance(task, Mapping)
        or not isinstance(task.get("id"), int)
        or not isinstance(task.get("data"), Mapping)
    ):
        raise SnapshotError(f"export item #{index} is not a Label Studio task (needs an integer id and a data object)")
    task_id: int = task["id"]
    data: Mapping[str, Any] = task["data"]
    annotations = task.get("annotations") or []
    if not isinstance(annotations, list) or not all(isinstance(a, Mapping) for a in annotations):
        raise SnapshotError(f"task {task_id}: annotations is not a list of objects")
    for annotation in annotations:
        ann_id = annotation.get("id")
        if ann_id is not None and (not isinstance(ann_id, int) or isinstance(ann_id, bool)):
            raise SnapshotError(f"task {task_id}: annotation id {ann_id!r} is not an integer")
    live = [a for a in annotations if not a.get("was_cancelled")]
    if not live:
        return "skipped" if annotations else "unlabeled"

    # Latest annotation per annotator; the latest of those is the one training uses.
    per_annotator: dict[str, Mapping[str, Any]] = {}
    for annotation in live:
        who = _annotator(annotation)
        if who not in per_annotator or _latest_key(annotation) > _latest_key(per_annotator[who]):
            per_annotator[who] = annotation
    kept = sorted(per_annotator.values(), key=_latest_key)
    chosen = kept[-1]
    width = _opt_int(data.get("width")) or 1
    height = _opt_int(data.get("height")) or 1
    chosen_labels = _labels_of(kind, task_id, chosen.get("result"), width, height, classes)
    conflicted = any(
        not labels_agree(chosen_labels, _labels_of(kind, task_id, other.get("result"), width, height, classes))
        for other in kept[:-1]
    )
    url = data.get(IMAGE_KEY)
    sha = data.get("sha256")
    people = (
        tuple((who, tuple(a.get("result") or ())) for who, a in sorted(per_annotator.items()))
        if len(per_annotator) > 1
        else ()
    )
    provenance = annotation_provenance(kind, chosen, _annotator(chosen), task.get("predictions"), width, height)
    parent = parent_prediction(chosen, task.get("predictions")) if provenance in ("accepted", "edited") else None
    score = parent.get("score") if parent is not None else None
    return ParsedTask(
        task_id=task_id,
        url=url if isinstance(url, str) else "",
        sha256=sha.lower() if isinstance(sha, str) and len(sha) == 64 else None,
        original_name=str(data.get("original_name") or os.path.basename(str(url or "")).split("=")[-1]),
        data_width=_opt_int(data.get("width")),
        data_height=_opt_int(data.get("height")),
        results=tuple(chosen.get("result") or ()),
        annotators=tuple(sorted(per_annotator)),
        annotation_ids=tuple(sorted(int(a.get("id") or 0) for a in kept)),
        conflicted=conflicted,
        people=people,
        provenance=provenance,
        prediction=None
        if parent is None
        else (
            str(parent.get("model_version") or ""),
            float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
            tuple(parent.get("result") or ()),
        ),
    )


def iter_export(path: Path) -> Iterator[Any]:
    """Tasks of a Label Studio JSON export, one at a time; a clear error when the file is not a JSON array."""
    import ijson

    with Path(path).open("rb") as f:
        head = f.read(64).lstrip()
        if not head.startswith(b"["):
            raise SnapshotError(f"{path}: not a Label Studio JSON export (expected a JSON array of tasks)")
        f.seek(0)
        index = 0
        try:
            # use_float: plain floats instead of Decimal, the same numbers json.loads gives.
            for task in ijson.items(f, "item", use_float=True):
                yield task
                index += 1
        except ijson.JSONError as exc:
            raise SnapshotError(f"{path}: malformed JSON after {index} tasks: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# 3. Build a dataset version


@dataclass(frozen=True)
class DatasetSummary:
    out_dir: Path
    items: int
    skipped: int
    unlabeled: int
    conflicted: int
    excluded: tuple[ExcludedItem, ...]
    fetched: int  # images fetched this time
    reused: int  # images taken from the previous version or already stored
    counts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Resolved:
    sha256: str
    rel: str
    width: int
    height: int


def _previous_index(previous_dir: Path | None) -> dict[str, _Resolved]:
    """sha256 → (stored path, size) of the previous version's images, from its manifest: an increment links them
    without probing the store for each image's extension (6 stats an image, most of a 100k increment's time)."""
    if previous_dir is None or not (previous_dir / MANIFEST).is_file():
        return {}
    index: dict[str, _Resolved] = {}
    try:
        # Four fields of each line, not whole ManifestItems (their labels are what costs: ~40% of reading 100k lines).
        with (previous_dir / MANIFEST).open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                sha, rel = str(row["sha256"]), str(row["image"])
                # Only the store's own content address (images/ab/<sha256>.ext): a hand-edited path never leads out.
                if rel in {relative_image_path(sha, ext) for ext in FORMAT_EXT.values()}:
                    index[sha] = _Resolved(sha, rel, int(row["width"]), int(row["height"]))
    except Exception:  # an unreadable previous manifest only costs speed: images are found and measured again
        return {}
    return index


class _BuildStore:
    """Writes into the version being built (a work folder swapped in only when complete): hard links from the
    previous version and fetched images, each images/ab/ folder created once. No write-then-rename per image: a
    build that dies is discarded whole, so no truncated file can outlive it under a content address."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: set[Path] = set()

    def _folder(self, dst: Path) -> None:
        if dst.parent not in self.made:
            dst.parent.mkdir(parents=True, exist_ok=True)
            self.made.add(dst.parent)

    def write(self, sha256: str, ext: str, data: bytes) -> str:
        rel = relative_image_path(sha256, ext)
        dst = self.root / rel
        self._folder(dst)
        try:
            with dst.open("xb") as f:  # x: two URLs with the same bytes write the file once
                f.write(data)
        except FileExistsError:
            pass
        return rel

    def link(self, src: Path, rel: str) -> bool:
        """Link `src` to root/rel; False when `src` is gone (the caller then looks for it the slow way)."""
        dst = self.root / rel
        self._folder(dst)
        try:
            os.link(src, dst)
        except FileNotFoundError:
            return False
        except FileExistsError:
            pass
        except OSError:  # another file system, or links not supported: copy
            link_or_copy(src, dst)
        return True


def build_dataset(
    export_path: Path,
    out_dir: Path,
    kind: str,
    classes: Sequence[str],
    ok_class: str | None,
    fetch: Fetcher,
    split_ratios: Sequence[float],
    previous_dir: Path | None = None,
    *,
    project: str = "",
    workers: int = 4,
    match_iou: float = 0.5,
    min_agreement: float | None = None,
) -> DatasetSummary:
    """Build the dataset version of a Label Studio export into `out_dir` (replaced only when complete).

    Raises SnapshotError on malformed JSON, a task that is not a task, an unknown class or a malformed
    result (naming the task id); `out_dir` is then left as it was. Images that cannot be fetched or do not
    decode are excluded and listed in dataset.json with their task id and the reason.

    Images with two or more annotators keep each person's labels and their agreement (`match_iou`: box
    matching); below `min_agreement` (None: 1.0, or 0.7 mask IoU for segment) the item is marked conflicted.
    """
    if min_agreement is None:
        min_agreement = 0.7 if kind == "segment" else 1.0
    get_kind(kind)  # unknown kind fails before any work
    ratios = validate_ratios(split_ratios)
    classes = tuple(classes)
    out_dir = Path(out_dir)
    previous_dir = Path(previous_dir) if previous_dir is not None else None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-{os.getpid()}-", dir=out_dir.parent))
    try:
        summary = _build_into(
            export_path,
            tmp,
            kind,
            classes,
            ok_class,
            fetch,
            ratios,
            previous_dir,
            project,
            workers,
            (match_iou, min_agreement),
        )
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DatasetSummary(**{**summary.__dict__, "out_dir": out_dir})


# Work folders beside out_dir (data/.LINE.building-PID-xxxx, data/.LINE.old-PID); .dvcignore lists both patterns.
STALE_PATTERNS = (".*.building-*", ".*.old-*")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _owner_pid(name: str, marker: str) -> int | None:
    rest = name.split(marker, 1)[1]
    head = rest.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove the work folders a killed snapshot left beside `out_dir`; returns what was removed.

    A folder whose process is still alive is another snapshot at work and is left alone. When a snapshot was
    killed between its two renames (out_dir moved aside, the new one not yet in place), the moved-aside version
    is put back instead of being deleted: nothing is lost.
    """
    out_dir = Path(out_dir)
    removed: list[Path] = []
    if not out_dir.parent.is_dir():
        return removed
    for marker in (".building-", ".old-"):
        for path in sorted(out_dir.parent.glob(f".{out_dir.name}{marker}*")):
            pid = _owner_pid(path.name, marker)
            if pid is not None and _pid_alive(pid):
                continue
            if marker == ".old-" and path.is_dir() and not out_dir.exists():
                os.replace(path, out_dir)
                log.warning("%s: restored from %s (a snapshot was interrupted mid-swap)", out_dir, path.name)
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            log.info("removed %s left by an interrupted snapshot", path)
            removed.append(path)
    return removed


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by tmp with two renames; if the second fails the first is undone."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _kept_labels(
    task: ParsedTask,
    who: str,
    results: Sequence[Mapping[str, Any]],
    kind: str,
    classes: tuple[str, ...],
    ok_class: str | None,
    r: _Resolved,
    root: Path,
) -> AnnotatorLabels:
    """One set of results (a person's annotation, or a pre-annotation) as the dataset keeps labels: classes and
    boxes, and for segmentation the class mask (content-addressed) and the verdict."""
    labels = _labels_of(kind, task.task_id, list(results), r.width, r.height, classes)
    try:
        kept = get_kind(kind).dataset_labels(labels, r.width, r.height, classes, ok_class)
    except LabelError as exc:
        raise SnapshotError(f"task {task.task_id} ({who}): {exc}") from exc
    return AnnotatorLabels(
        annotator=who,
        labels=tuple(
            ItemLabel(cls=lb.cls, box=None if lb.box is None else round_box(lb.box.as_list())) for lb in kept.labels
        ),
        mask=None if kept.class_mask is None else write_mask(root, encode_png(kept.class_mask)),
        verdict=kept.verdict,
    )


def _prediction_of(
    task: ParsedTask, kind: str, classes: tuple[str, ...], ok_class: str | None, r: _Resolved, root: Path
) -> ItemPrediction | None:
    if task.prediction is None:
        return None
    model_version, score, results = task.prediction
    try:
        kept = _kept_labels(task, f"prediction {model_version}", results, kind, classes, ok_class, r, root)
    except SnapshotError as exc:
        # A pre-annotation is not a label: one that no longer reads (a class since removed) costs only its restore.
        log.warning("%s; its prediction is not kept", exc)
        return None
    return ItemPrediction(model_version, score, kept.labels, kept.mask, kept.verdict)


def _people_and_agreement(
    task: ParsedTask,
    kind: str,
    classes: tuple[str, ...],
    ok_class: str | None,
    r: _Resolved,
    root: Path,
    match_iou: float,
) -> tuple[tuple[AnnotatorLabels, ...], float | None]:
    """Each annotator's labels (and mask) of an image several people labelled, and their agreement."""
    if not task.people:
        return (), None
    from crux.data.agreement import item_agreement
    from crux.masks import decode_png

    people = [_kept_labels(task, who, results, kind, classes, ok_class, r, root) for who, results in task.people]
    score = item_agreement(
        kind,
        people,
        match_iou=match_iou,
        load_mask=lambda rel: decode_png((root / rel).read_bytes()),
        classes=classes,
    )
    return tuple(people), round(score, 4)


def _build_into(
    export_path: Path,
    root: Path,
    kind: str,
    classes: tuple[str, ...],
    ok_class: str | None,
    fetch: Fetcher,
    ratios: tuple[float, float, float],
    previous_dir: Path | None,
    project: str,
    workers: int,
    agreement_rule: tuple[float, float] = (0.5, 1.0),
) -> DatasetSummary:
    counts = ParseCounts()
    parsed: list[ParsedTask] = []
    seen_ids: set[int] = set()
    for index, task in enumerate(iter_export(export_path)):
        counts.tasks += 1
        result = parse_task(task, index, kind, classes)
        task_id = task["id"]
        if task_id in seen_ids:
            raise SnapshotError(f"task {task_id} appears twice in the export")
        seen_ids.add(task_id)
        if result == "skipped":
            counts.skipped += 1
        elif result == "unlabeled":
            counts.unlabeled += 1
        else:
            assert isinstance(result, ParsedTask)
            parsed.append(result)

    excluded: list[ExcludedItem] = []
    previous = _previous_index(previous_dir)
    resolved: dict[int, _Resolved] = {}
    reused = 0

    # Images already at hand (previous version or stored for an earlier task) are linked, not fetched.
    placed: dict[str, _Resolved] = {}  # sha256 → image linked into this version already
    store = _BuildStore(root)
    to_fetch: dict[str, list[ParsedTask]] = {}
    for task in parsed:
        if not task.url:
            excluded.append(ExcludedItem(task.task_id, "task data has no image URL"))
            continue
        have = placed.get(task.sha256) if task.sha256 is not None else None
        if have is None and task.sha256 is not None and previous_dir is not None:
            known = previous.get(task.sha256)
            if known is not None and store.link(previous_dir / known.rel, known.rel):
                have = known
            else:  # not in the previous manifest (or its file is gone): look in its store, measure the image
                src = find_image(previous_dir, task.sha256)
                if src is not None:
                    rel = src.relative_to(previous_dir).as_posix()
                    store.link(src, rel)
                    have = _Resolved(task.sha256, rel, *image_size(root / rel))
            if have is not None:
                placed[task.sha256] = have
        if have is not None:
            resolved[task.task_id] = have
            reused += 1
        else:
            to_fetch.setdefault(task.url, []).append(task)

    def fetch_one(url: str) -> _Resolved | FetchError:
        try:
            data = fetch(url)
            info = decode_image(data)
        except FetchError as exc:
            return exc
        except Exception as exc:  # a fetcher bug or an unexpected transport error still names the task
            return FetchError(f"{type(exc).__name__}: {exc}")
        sha = sha256_hex(data)
        rel = store.write(sha, info.ext, data)
        return _Resolved(sha, rel, info.width, info.height)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        outcomes = dict(zip(to_fetch, pool.map(fetch_one, to_fetch), strict=True))
    fetched = 0
    for url, tasks in to_fetch.items():
        outcome = outcomes[url]
        if isinstance(outcome, FetchError):
            excluded.extend(ExcludedItem(t.task_id, outcome.reason) for t in tasks)
            continue
        fetched += 1
        for t in tasks:
            if t.sha256 is not None and t.sha256 != outcome.sha256:
                excluded.append(
                    ExcludedItem(t.task_id, f"image changed since import: sha256 {outcome.sha256} != task's {t.sha256}")
                )
            else:
                resolved[t.task_id] = outcome

    # Images fetched only for tasks that were then excluded must not linger in the store.
    used = {r.rel for r in resolved.values()}
    for outcome in outcomes.values():
        if isinstance(outcome, _Resolved) and outcome.rel not in used:
            (root / outcome.rel).unlink(missing_ok=True)

    items: list[ManifestItem] = []
    task_kind = get_kind(kind)
    for task in parsed:
        r = resolved.get(task.task_id)
        if r is None:
            continue
        # Results carry original_width/height; the measured size is the fallback (and the truth for the image).
        labels = _labels_of(kind, task.task_id, list(task.results), r.width, r.height, classes)
        try:
            kept = task_kind.dataset_labels(labels, r.width, r.height, classes, ok_class)
        except LabelError as exc:
            raise SnapshotError(f"task {task.task_id}: {exc}") from exc
        # Segmentation: one class mask per image, content-addressed like the images (equal masks, equal bytes).
        mask = None if kept.class_mask is None else write_mask(root, encode_png(kept.class_mask))
        people, agreement = _people_and_agreement(task, kind, classes, ok_class, r, root, agreement_rule[0])
        conflicted = agreement is not None and agreement < agreement_rule[1]
        items.append(
            ManifestItem(
                sha256=r.sha256,
                task_id=task.task_id,
                image=r.rel,
                width=r.width,
                height=r.height,
                original_name=task.original_name,
                split=assign_split(r.sha256, ratios),
                labels=tuple(
                    ItemLabel(cls=lb.cls, box=None if lb.box is None else round_box(lb.box.as_list()))
                    for lb in kept.labels
                ),
                annotators=task.annotators,
                annotation_ids=task.annotation_ids,
                conflicted=conflicted,
                mask=mask,
                verdict=kept.verdict,
                by_annotator=people,
                agreement=agreement,
                provenance=task.provenance,
                prediction=_prediction_of(task, kind, classes, ok_class, r, root),
            )
        )

    counts_json = count_items(items, classes)
    counts_json.update(tasks=counts.tasks, skipped=counts.skipped, unlabeled=counts.unlabeled, excluded=len(excluded))
    write_manifest(root / MANIFEST, items)
    write_classes(root / CLASSES, ClassesInfo(kind=kind, classes=classes, ok_class=ok_class))
    write_dataset_info(
        root / DATASET,
        DatasetInfo(project=project, counts=counts_json, excluded=tuple(excluded), split_ratios=ratios),
    )
    return DatasetSummary(
        out_dir=root,
        items=len(items),
        skipped=counts.skipped,
        unlabeled=counts.unlabeled,
        conflicted=sum(i.conflicted for i in items),
        excluded=tuple(sorted(excluded, key=lambda e: e.task_id)),
        fetched=fetched,
        reused=reused,
        counts=counts_json,
    )


__all__ = [
    "DatasetSummary",
    "ParsedTask",
    "SnapshotError",
    "build_dataset",
    "export_snapshot_to_file",
    "iter_export",
    "labels_agree",
    "parse_task",
]

"""Import images and existing labels into an inspection project, in bulk.

Two phases, so that nothing is half imported: `scan_source` (crux.label.sources, one module per source format)
reads, decodes and validates every image and label of the source and raises one error listing every problem (file
and line); only then does `import_items` write to Label Studio, through the bulk task endpoint with the annotations
and predictions embedded (one request per batch, never one per annotation). Predictions (`crux predict --json`) are
read and matched to the scanned images here.
"""

from __future__ import annotations

import json
import posixpath
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crux.geometry import PixelBox
from crux.kinds import Label, LabelError, get_kind
from crux.label.sources import LABEL_FORMATS
from crux.label.sources.scan import scan_source
from crux.label.sources.source_files import class_name, finite, mask_regions, verdict_label
from crux.label.sources.source_items import ImportValidationError, ScanResult, SourceItem, describe, same_labels

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.types import RoleBasedTask

    from crux.config import ProjectSpec

# The first phase, re-exported: `crux import` and its callers run importer.scan_source, then importer.import_items.
__all__ = [
    "BATCH_SIZE",
    "LABEL_FORMATS",
    "ImportReport",
    "ImportValidationError",
    "Prediction",
    "ScanResult",
    "SourceItem",
    "build_task",
    "count_labels",
    "ensure_storage",
    "existing_hashes",
    "import_items",
    "local_files_url",
    "match_predictions",
    "project_conflicts",
    "read_predictions",
    "scan_source",
]

BATCH_SIZE = 500


@dataclass(frozen=True)
class Prediction:
    """A model pre-annotation, in the `crux predict --json` contract."""

    model_version: str
    score: float
    labels: tuple[Label, ...]
    label_scores: tuple[float, ...]
    where: str = ""  # file:line it came from, for messages


@dataclass(frozen=True)
class ImportReport:
    project_id: int
    scanned: int
    created: int
    already_present: int
    duplicates_in_source: int
    annotations: int
    predictions: int
    task_ids: tuple[int, ...]
    # Images the project already holds with other labels than the source's: "file: …, kept the project's labels".
    conflicts: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------
# Predictions


def read_predictions(path: Path, spec: ProjectSpec) -> dict[str, Prediction]:
    """`crux predict --json` lines, keyed by the image path as given (relative to the source root).

    Segment projects: each line names a mask PNG (`"mask"`, relative to the JSONL file's folder) with class
    indices (0 background, v = 1 + index in the project's classes), or 0/255 for the single class `"label"`;
    `"label"` is also the predicted verdict.
    """
    problems: list[str] = []
    predictions: dict[str, Prediction] = {}
    geometry = get_kind(spec.kind).geometry
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ImportValidationError([f"{path}: predictions file not found"]) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportValidationError([f"{path}: cannot read the predictions file ({exc})"]) from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
            image = record["image"]
            if not isinstance(image, str) or not image:
                raise ValueError(f"image {image!r} is not a path")
            model_version = str(record["model_version"])
            score = finite(record["score"])
            if geometry == "box":
                boxes = record.get("boxes") or []
                if not isinstance(boxes, list) or not all(isinstance(b, dict) for b in boxes):
                    raise TypeError("boxes is not a list of objects")
                labels = tuple(Label(cls=class_name(b["label"]), box=PixelBox(*map(finite, b["xyxy"]))) for b in boxes)
                scores = tuple(finite(b["score"]) for b in boxes)
            elif geometry == "mask":
                regions = _predicted_regions(path.parent, record, spec, where, problems)
                if regions is None:
                    continue
                labels = regions
                scores = (score,) * len(labels)
            else:
                labels, scores = (Label(cls=class_name(record["label"])),), (score,)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"{where}: not a prediction record ({type(exc).__name__}: {exc})")
            continue
        outside = [v for v in (score, *scores) if not 0.0 <= v <= 1.0]
        if outside:
            problems.append(f"{where}: score(s) {outside} outside 0..1")
            continue
        unknown = sorted({label.cls for label in labels} - set(spec.classes))
        if unknown:
            problems.append(f"{where}: class(es) {', '.join(unknown)} not in project {spec.title!r}")
            continue
        predictions[posixpath.normpath(image)] = Prediction(model_version, score, labels, scores, where)
    if problems:
        raise ImportValidationError(problems)
    return predictions


def _predicted_regions(
    folder: Path, record: Mapping[str, Any], spec: ProjectSpec, where: str, problems: list[str]
) -> tuple[Label, ...] | None:
    """A segment prediction's mask PNG → regions, plus its `label` as the verdict (with an ok_class)."""
    import numpy as np

    from crux.masks import MaskError, read_image_array

    label = record.get("label")
    if label is not None and not (isinstance(label, str) and label in spec.classes):
        problems.append(f"{where}: class {label!r} not in project {spec.title!r}")
        return None
    if not record.get("mask"):
        return verdict_label(label, spec)  # "no defect found" is a prediction too
    mask_path = (folder / str(record["mask"])).resolve()
    at = f"{where}: mask {mask_path}"
    try:
        array, mode = read_image_array(mask_path.read_bytes())
    except (OSError, MaskError) as exc:
        problems.append(f"{at}: {exc}")
        return None
    if mode != "L" or array.ndim != 2:
        problems.append(f"{at}: not an 8-bit single-channel mask (mode {mode})")
        return None
    classes = list(spec.classes)
    values = [int(v) for v in np.unique(array) if v]
    if values == [255]:  # a binary mask of the one class `label`
        if label is None or label == spec.ok_class:
            problems.append(f'{at}: a 0/255 mask needs a defect class in "label"')
            return None
        array = np.where(array == 255, classes.index(label) + 1, 0).astype(np.uint8)
        values = [classes.index(label) + 1]
    if any(v > len(classes) for v in values):
        problems.append(f"{at}: pixel values {values} are neither 0/255 nor class indices 1..{len(classes)}")
        return None
    if spec.ok_class is not None and classes.index(spec.ok_class) + 1 in values:
        problems.append(f"{at}: pixels of the OK class {spec.ok_class!r}, which marks no pixels")
        return None
    return tuple(mask_regions(spec, array, classes)) + verdict_label(label, spec)


def match_predictions(scan: ScanResult, predictions: Mapping[str, Prediction]) -> dict[str, Prediction]:
    """Key predictions by image sha256; a prediction for an image not in the source, or with a mask of another
    size than its image, is an error."""
    root = scan.root.split("://", 1)[-1]
    by_rel = {item.rel: item for item in scan.items}
    matched: dict[str, Prediction] = {}
    unmatched = []
    for image, prediction in predictions.items():
        rel = posixpath.relpath(image, root) if posixpath.isabs(image) else image
        item = by_rel.get(rel)
        if item is None:
            unmatched.append(f"prediction for {image}: no such image in {scan.root}")
            continue
        sizes = {lb.mask.shape for lb in prediction.labels if lb.mask is not None}
        if sizes - {(item.height, item.width)}:
            h, w = next(iter(sizes - {(item.height, item.width)}))
            unmatched.append(f"{prediction.where}: mask is {w}x{h} px, the image {image} {item.width}x{item.height}")
            continue
        matched[item.sha256] = prediction
    if unmatched:
        raise ImportValidationError(unmatched)
    return matched


# --------------------------------------------------------------------------------------------------
# Writing to Label Studio


def local_files_url(path: str, files_root: Path) -> str:
    """The URL Label Studio serves a local file under; refuses paths outside its document root."""
    resolved = Path(path).resolve()
    root = files_root.resolve()
    if not resolved.is_relative_to(root):
        raise ImportValidationError(
            [f"{path}: outside Label Studio's files root {root}; move the data below it or set labelstudio.files_root"]
        )
    return "/data/local-files/?d=" + urllib.parse.quote(resolved.relative_to(root).as_posix())


def ensure_storage(client: LabelStudio, project_id: int, source_root: str, s3_options: Mapping[str, Any]) -> None:
    """A Label Studio storage that lets annotators' browsers load the source's images (not synced:
    CRUX imports the tasks itself, with their labels)."""
    if source_root.startswith("s3://"):
        bucket, _, prefix = source_root[len("s3://") :].partition("/")
        existing = client.import_storage.s3.list(project=project_id)
        if any(s.bucket == bucket and (s.prefix or "") == prefix for s in existing):
            return
        client.import_storage.s3.create(
            project=project_id,
            bucket=bucket,
            prefix=prefix,
            title=f"crux: {source_root}",
            use_blob_urls=True,
            **s3_options,
        )
        return
    path = str(Path(source_root).resolve())
    existing = client.import_storage.local.list(project=project_id)
    if any(s.path == path for s in existing):
        return
    client.import_storage.local.create(project=project_id, path=path, title=f"crux: {path}", use_blob_urls=True)


def existing_hashes(client: LabelStudio, project_id: int) -> dict[str, int]:
    """sha256 → task id of the tasks already in a project (dedup by content, not by file name)."""
    hashes: dict[str, int] = {}
    # The SDK's pager is generic in its item type but `list` leaves it unbound (mypy infers Never): name it here.
    tasks: Iterable[RoleBasedTask] = client.tasks.list(project=project_id, fields="task_only", page_size=1000)
    for task in tasks:
        data: Mapping[str, Any] = task.data or {}
        sha256 = data.get("sha256")
        if sha256 and task.id is not None:  # a listed task has its id; the SDK's model leaves every field optional
            hashes.setdefault(sha256, task.id)
    return hashes


def _prediction_payload(kind_name: str, prediction: Prediction, width: int, height: int) -> dict[str, Any]:
    kind = get_kind(kind_name)
    results = []
    for label, score in zip(prediction.labels, prediction.label_scores, strict=True):
        results.extend(kind.to_results([label], width, height, score=score))
    for i, result in enumerate(results):
        if "id" in result:  # regions (boxes, masks): unique ids within the prediction
            result["id"] = f"p{i}"
    return {"model_version": prediction.model_version, "score": prediction.score, "result": results}


def build_task(
    item: SourceItem,
    spec: ProjectSpec,
    image_url: str,
    prediction: Prediction | None,
    credit_to: str | None = None,
) -> dict[str, Any]:
    kind = get_kind(spec.kind)
    task: dict[str, Any] = {
        "data": {
            "image": image_url,
            "sha256": item.sha256,
            "original_name": posixpath.basename(item.rel),
            "source": item.rel,
            "width": item.width,
            "height": item.height,
        }
    }
    if item.labels is not None:
        task["annotations"] = [{"result": kind.to_results(list(item.labels), item.width, item.height)}]
        if credit_to is not None:  # the import identity, not the admin who ran the import (provenance)
            task["annotations"][0]["completed_by"] = {"email": credit_to}
    if prediction is not None:
        task["predictions"] = [_prediction_payload(spec.kind, prediction, item.width, item.height)]
    return task


def import_items(
    client: LabelStudio,
    project_id: int,
    spec: ProjectSpec,
    scan: ScanResult,
    files_root: Path,
    predictions: Mapping[str, Prediction] | None = None,
    s3_options: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    batch_size: int = BATCH_SIZE,
) -> ImportReport:
    predictions = predictions or {}
    is_s3 = scan.root.startswith("s3://")
    urls = {item.sha256: item.url if is_s3 else local_files_url(item.url, files_root) for item in scan.items}
    present = existing_hashes(client, project_id)
    ensure_storage(client, project_id, scan.root, s3_options or {})
    new_items = [item for item in scan.items if item.sha256 not in present]
    conflicts = project_conflicts(client, project_id, spec, [i for i in scan.items if i.sha256 in present], present)
    credit_to = None
    if any(item.labels is not None for item in new_items):
        from crux.data.provenance import IMPORT_IDENTITY
        from crux.label.team import ensure_member

        ensure_member(client, IMPORT_IDENTITY, "CRUX import")
        credit_to = IMPORT_IDENTITY
    tasks = [build_task(item, spec, urls[item.sha256], predictions.get(item.sha256), credit_to) for item in new_items]
    task_ids: list[int] = []
    for start in range(0, len(tasks), batch_size):
        batch = tasks[start : start + batch_size]
        task_ids.extend(_post_tasks(client, project_id, batch))
        if progress:
            progress(len(batch))
    # Pre-annotations for images the project already has: the new model's view of old tasks.
    late = [
        {
            "task": present[item.sha256],
            **_prediction_payload(spec.kind, predictions[item.sha256], item.width, item.height),
        }
        for item in scan.items
        if item.sha256 in present and item.sha256 in predictions
    ]
    if late:
        # The SDK types `request` as its PredictionRequest models; the endpoint takes these plain dicts.
        client.projects.import_predictions(id=project_id, request=late)  # type: ignore[arg-type]
    return ImportReport(
        project_id=project_id,
        scanned=len(scan.items),
        created=len(tasks),
        already_present=len(scan.items) - len(new_items),
        duplicates_in_source=len(scan.duplicates),
        annotations=sum(1 for task in tasks if "annotations" in task),
        predictions=sum(1 for task in tasks if "predictions" in task) + len(late),
        task_ids=tuple(task_ids),
        conflicts=tuple(conflicts),
    )


def _post_tasks(client: LabelStudio, project_id: int, batch: list[dict[str, Any]]) -> list[int]:
    """One bulk import request; the new tasks' ids.

    The batch is serialised once with json.dumps and sent through the SDK's own HTTP client, base URL and auth
    headers: the SDK's `import_tasks` first walks every nested value of the request in Python
    (convert_and_respect_annotation_metadata, then jsonable_encoder), ~3 ms a task with two boxes, a fifth of a
    10,000-task import (bench/import_scale.py --profile). An SDK without that client layout gets its own path.
    """
    wrapper = getattr(client, "_client_wrapper", None)
    http = getattr(getattr(wrapper, "httpx_client", None), "httpx_client", None)
    if wrapper is None or http is None or not hasattr(wrapper, "get_headers"):
        # The SDK types `request` as its ImportApiRequest models and leaves `task_ids` out of the response model
        # (Label Studio Community returns it; the model keeps it as an extra field); plain task dicts are what the
        # endpoint takes.
        response = client.projects.import_tasks(id=project_id, request=batch, return_task_ids=True)  # type: ignore[arg-type]
        return list(response.task_ids or [])  # type: ignore[attr-defined]
    from label_studio_sdk.core.api_error import ApiError

    response = http.post(
        f"{wrapper.get_base_url().rstrip('/')}/api/projects/{project_id}/import",
        params={"return_task_ids": "true"},
        content=json.dumps(batch, separators=(",", ":")).encode(),
        headers={**wrapper.get_headers(), "content-type": "application/json"},
        timeout=wrapper.get_timeout(),
    )
    if not 200 <= response.status_code < 300:  # the SDK's own error type, as its import_tasks raises
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=body)
    return [int(i) for i in response.json().get("task_ids") or []]


def _latest_labels(spec: ProjectSpec, task: Any, width: int, height: int) -> tuple[Label, ...] | None:
    """The labels a snapshot would take of a task (its latest live annotation); None when it has none."""
    annotations = [a if isinstance(a, Mapping) else a.dict() for a in task.annotations or []]
    live = [a for a in annotations if not a.get("was_cancelled")]
    if not live:
        return None
    latest = max(live, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), int(a.get("id") or 0)))
    return tuple(get_kind(spec.kind).from_results(latest.get("result") or [], width, height))


def project_conflicts(
    client: LabelStudio, project_id: int, spec: ProjectSpec, items: Sequence[SourceItem], present: Mapping[str, int]
) -> list[str]:
    """Source images the project already holds (same bytes) whose labels differ from the project's. The project's
    labels are kept (people may have corrected them there), and each such image is named with that choice: a
    re-import never overwrites nor silently drops a label. Identical labels are a plain duplicate."""
    labelled = {present[item.sha256]: item for item in items if item.labels is not None}
    if not labelled:
        return []
    conflicts = []
    task: Any
    for task in client.tasks.list(project=project_id, fields="all", page_size=500):
        item = labelled.get(task.id)
        if item is None:
            continue
        try:
            held = _latest_labels(spec, task, item.width, item.height)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, LabelError) as exc:
            conflicts.append(f"{item.rel}: task {task.id} holds labels that do not read ({exc!r}); kept them")
            continue
        if held is None:
            conflicts.append(
                f"{item.rel}: task {task.id} already holds this image without labels; the source's "
                f"({describe(item.labels)}) were not added: label it in Label Studio"
            )
        elif not same_labels(held, item.labels):
            conflicts.append(
                f"{item.rel}: task {task.id} already holds this image with other labels ({describe(held)} vs the "
                f"source's {describe(item.labels)}); kept the project's labels"
            )
    return sorted(conflicts)


def count_labels(items: Iterable[SourceItem]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        for label in item.labels or ():
            counts[label.cls] = counts.get(label.cls, 0) + 1
    return counts

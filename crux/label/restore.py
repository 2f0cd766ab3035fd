"""Recreate a Label Studio project from a dataset version: the inverse of `crux.data.snapshot`.

Label Studio Community lets every member change a project's settings and delete the project with all its labels;
there is no role that prevents it. What a snapshot kept of each task (the manifest: image, every annotator's labels,
provenance, the pre-annotation a label was made from) is enough to put the project back: the project from
params.yaml, then the tasks through the bulk import path with the annotations embedded (credited to the same member
accounts) and the predictions, and finally the links that make provenance read the same again.

The next snapshot of a restored project gives the same labels per image; only task and annotation ids are new
(`crux data diff` matches an image moved to a new task id as the same item).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crux.data.manifest import AnnotatorLabels, ClassesInfo, ItemLabel, ManifestItem
from crux.data.provenance import IMPORT_IDENTITY
from crux.data.store import link_or_copy, sha256_file
from crux.errors import CruxError
from crux.geometry import PixelBox
from crux.kinds import Label, LabelError, get_kind

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

    from crux.config import ProjectSpec

log = logging.getLogger(__name__)

# task.data key holding the task id the image had in the dataset version it was restored from (for people reading
# Label Studio; the snapshot ignores unknown data keys).
RESTORED_FROM = "restored_from_task"


class RestoreError(CruxError, RuntimeError):
    """A project cannot be restored from a dataset version; the message names the project (and item)."""


@dataclass(frozen=True)
class RestoreReport:
    name: str
    project_id: int
    project_action: str  # what `sync_project` did: created | updated | unchanged
    tasks: int  # tasks created
    already_present: int  # images the project still had (--force): left as they are
    annotations: int
    predictions: int
    members_created: tuple[str, ...]
    # Annotators the version names without an e-mail ("user:7"): their labels are credited to the account that
    # ran the restore, so their provenance may read differently.
    uncredited: tuple[str, ...]
    # Old task ids whose provenance cannot be reproduced (an "edited" label whose prediction the version lacks).
    provenance_lost: tuple[int, ...]


def task_count(client: LabelStudio, project_id: int) -> int:
    """How many tasks a project holds (Label Studio's own count)."""
    return int(getattr(client.projects.get(id=project_id), "task_number", 0) or 0)


def _to_labels(
    kind_name: str,
    labels: Sequence[ItemLabel],
    mask: str | None,
    verdict: str | None,
    dataset_dir: Path,
    info: ClassesInfo,
    spec: ProjectSpec,
) -> list[Label]:
    """Manifest labels → the Label objects `to_results` writes (segment: regions cut from the class mask)."""
    kind = get_kind(kind_name)
    if kind.geometry != "mask":
        return [Label(lb.cls, None if lb.box is None else PixelBox(*lb.box)) for lb in labels]
    from crux.kinds import SegmentKind
    from crux.masks import decode_png

    assert isinstance(kind, SegmentKind)
    if mask is not None and not _inside(mask):
        raise RestoreError(f"mask path {mask!r} leads outside the dataset")
    regions = (
        [] if mask is None else kind.regions_from_mask(decode_png((dataset_dir / mask).read_bytes()), info.classes)
    )
    # The verdict is a Choices control only in projects with an OK class; elsewhere it follows from the pixels.
    return regions + ([Label(verdict)] if verdict is not None and spec.ok_class is not None else [])


def _inside(rel: str) -> bool:
    """A manifest path stays inside the dataset folder (no absolute path, no `..`): restore never reads elsewhere."""
    from pathlib import PurePosixPath

    path = PurePosixPath(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts and "\\" not in rel


def _same(person: AnnotatorLabels, item: ManifestItem) -> bool:
    return sorted(person.labels) == sorted(item.labels) and (person.mask, person.verdict) == (item.mask, item.verdict)


def _ordered_people(item: ManifestItem) -> list[AnnotatorLabels]:
    """Each person's labels, the one the snapshot chose (whose labels are the item's) last: Label Studio numbers the
    annotations in import order, and the latest is the one a snapshot takes."""
    if not item.by_annotator:
        who = item.annotators[-1] if item.annotators else "unknown"
        return [AnnotatorLabels(who, item.labels, item.mask, item.verdict)]
    people = sorted(item.by_annotator, key=lambda p: p.annotator)
    matching = [p for p in people if _same(p, item)]
    # Two people agreeing: the provenance tells whose label was kept (the import identity's, or a person's).
    imported = item.provenance == "imported"
    preferred = [p for p in matching if (p.annotator == IMPORT_IDENTITY) == imported] or matching or people
    chosen = preferred[-1]
    return [p for p in people if p is not chosen] + [chosen]


def _is_email(who: str) -> bool:
    from crux.label.annotators import EMAIL

    return bool(EMAIL.match(who))


def _members(client: LabelStudio) -> set[str]:
    return {(user.email or "").lower() for user in client.users.list()}


def restore_project(
    client: LabelStudio,
    name: str,
    spec: ProjectSpec,
    items: Sequence[ManifestItem],
    info: ClassesInfo,
    dataset_dir: Path,
    image_dir: Path,
    files_root: Path,
    *,
    version: str,
    force: bool = False,
    create_members: Callable[[Sequence[str]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RestoreReport:
    """Recreate project `name` from a dataset version (`items`, `info`, its folder `dataset_dir`).

    Images are linked (or copied) from the version into `image_dir`, a content-addressed folder below Label Studio's
    `files_root` that outlives checkouts of other versions, and served from there. Refuses a project that exists
    and holds tasks unless `force` (then only the images it lacks are added). Missing annotator accounts are made
    by `create_members` (logins, as `crux annotators add` makes them), else as members without a password.
    """
    from crux.label.importer import BATCH_SIZE, ensure_storage, existing_hashes, local_files_url
    from crux.label.projects import find_project, sync_project
    from crux.label.team import ensure_member

    if info.kind != spec.kind:
        raise RestoreError(f"project {name!r}: the dataset version {version} is a {info.kind} dataset, params.yaml "
                           f"declares {spec.kind}; restore from a version made under this config")  # fmt: skip
    unknown = sorted(set(info.classes) - set(spec.class_names))
    if unknown:
        raise RestoreError(
            f"project {name!r}: the dataset version {version} has class(es) {', '.join(unknown)} that params.yaml no "
            "longer declares; restore from a version made under this config"
        )
    if not items:
        raise RestoreError(f"project {name!r}: the dataset version {version} holds no labelled item to restore")
    existing = find_project(client, name)
    if existing is not None and not force:
        held = task_count(client, existing.id)
        if held:
            raise RestoreError(
                f"project {name!r} (Label Studio project {existing.id}) exists and holds {held} task(s); restore "
                "recreates a deleted or emptied project. Pass --force to add only the images it lacks."
            )

    # Every image first, so that a version whose images cannot be read changes nothing in Label Studio.
    urls: dict[tuple[str, int], str] = {}
    problems = []
    for item in items:
        if not _inside(item.image) or (item.mask is not None and not _inside(item.mask)):
            problems.append(f"task {item.task_id}: path {item.image!r} or {item.mask!r} leads outside the dataset")
            continue
        src, dst = dataset_dir / item.image, image_dir / item.image
        if not src.is_file():
            problems.append(f"{item.image} (task {item.task_id}): missing from the dataset version")
            continue
        if not dst.is_file() or sha256_file(dst) != item.sha256:
            dst.unlink(missing_ok=True)
            link_or_copy(src, dst)
        if sha256_file(dst) != item.sha256:
            problems.append(f"{item.image} (task {item.task_id}): its bytes do not match sha256 {item.sha256}")
            dst.unlink(missing_ok=True)
            continue
        urls[item.sha256, item.task_id] = local_files_url(str(dst), files_root)
    if problems:
        raise RestoreError(f"project {name!r}: cannot restore from {version}: " + "; ".join(problems[:10]))

    synced = sync_project(client, name, spec)
    project_id = synced.project_id
    ensure_storage(client, project_id, str(image_dir), {})

    # Member accounts: the same people get their labels back (Label Studio matches `completed_by` by e-mail).
    people = {p.annotator for item in items for p in _ordered_people(item)}
    uncredited = tuple(sorted(who for who in people if not _is_email(who)))
    if IMPORT_IDENTITY in people:
        ensure_member(client, IMPORT_IDENTITY, "CRUX import")
    have = _members(client)
    missing = sorted(who for who in people if _is_email(who) and who.lower() not in have)
    if missing and create_members is not None:
        create_members(missing)
    else:
        for who in missing:
            ensure_member(client, who)

    present = existing_hashes(client, project_id) if existing is not None else {}
    todo = [item for item in items if item.sha256 not in present]
    kind = get_kind(spec.kind)
    tasks = []
    for item in todo:
        annotations = []
        for person in _ordered_people(item):
            labels = _to_labels(spec.kind, person.labels, person.mask, person.verdict, dataset_dir, info, spec)
            try:
                result = kind.to_results(labels, item.width, item.height)
            except LabelError as exc:
                raise RestoreError(f"project {name!r}: task {item.task_id} ({person.annotator}): {exc}") from exc
            annotation: dict[str, Any] = {"result": result}
            if _is_email(person.annotator):
                annotation["completed_by"] = {"email": person.annotator}
            annotations.append(annotation)
        task: dict[str, Any] = {
            "data": {
                "image": urls[item.sha256, item.task_id],
                "sha256": item.sha256,
                "original_name": item.original_name,
                "width": item.width,
                "height": item.height,
                RESTORED_FROM: item.task_id,
            },
            "annotations": annotations,
        }
        if item.prediction is not None:
            p = item.prediction
            labels = _to_labels(spec.kind, p.labels, p.mask, p.verdict, dataset_dir, info, spec)
            prediction: dict[str, Any] = {"model_version": p.model_version, "result": []}
            try:
                prediction["result"] = kind.to_results(labels, item.width, item.height)
            except LabelError as exc:
                raise RestoreError(f"project {name!r}: task {item.task_id} (prediction): {exc}") from exc
            if p.score is not None:
                prediction["score"] = p.score
            task["predictions"] = [prediction]
        tasks.append(task)
    for start in range(0, len(tasks), BATCH_SIZE):
        batch = tasks[start : start + BATCH_SIZE]
        client.projects.import_tasks(id=project_id, request=batch, return_task_ids=True)  # type: ignore[arg-type]
        if progress:
            progress(len(batch))

    lost = _relink_provenance(client, project_id, {item.task_id: item for item in todo})
    return RestoreReport(
        name=name,
        project_id=project_id,
        project_action=synced.action,
        tasks=len(tasks),
        already_present=len(items) - len(todo),
        annotations=sum(len(t["annotations"]) for t in tasks),
        predictions=sum(1 for t in tasks if "predictions" in t),
        members_created=tuple(missing),
        uncredited=uncredited,
        provenance_lost=lost,
    )


def _as_dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else value.dict()


def _relink_provenance(client: LabelStudio, project_id: int, by_old_id: Mapping[int, ManifestItem]) -> tuple[int, ...]:
    """What the bulk import cannot carry: the link from an annotation to the pre-annotation it was made from
    (accepted / edited), and the mark that an imported label was saved by a person since (edited). One request per
    such item; the rest of the restore is bulk."""
    lost = []
    task: Any
    for task in client.tasks.list(project=project_id, fields="all", page_size=500):
        data = task.data or {}
        item = by_old_id.get(data.get(RESTORED_FROM))  # type: ignore[arg-type]
        if item is None or item.provenance not in ("accepted", "edited"):
            continue
        annotations = sorted((_as_dict(a) for a in task.annotations or []), key=lambda a: int(a["id"]))
        if not annotations:
            continue
        chosen = annotations[-1]  # imported last: the chosen person's
        predictions = [_as_dict(p) for p in task.predictions or []]
        if predictions:
            client.annotations.update(id=int(chosen["id"]), parent_prediction=int(predictions[0]["id"]))
        elif item.provenance == "edited" and _ordered_people(item)[-1].annotator == IMPORT_IDENTITY:
            # Label Studio records who last saved an annotation; saving it again makes the import "edited".
            client.annotations.update(id=int(chosen["id"]), result=chosen.get("result") or [])
        else:
            lost.append(item.task_id)
    if lost:
        log.warning("provenance of %d restored task(s) cannot be reproduced: %s", len(lost), lost)
    return tuple(sorted(lost))


def version_items(root: Path, data_rel: str) -> int | None:
    """Labelled items of a line's last dataset version: the workspace's, else HEAD's; None when there is none."""
    from crux.data import versioning
    from crux.data.manifest import MANIFEST, ManifestError, read_manifest

    path = Path(root) / data_rel / MANIFEST
    if path.is_file():
        try:
            return len(read_manifest(path))
        except ManifestError:
            return None  # `crux data check` reports a damaged manifest; nothing to restore from here
    if not (Path(root) / ".git").exists() or versioning.read_classes_at(root, "HEAD", data_rel) is None:
        return None
    return len(versioning.read_manifest_at(root, "HEAD", data_rel))


def restore_needed(client: LabelStudio, name: str, project_id: int | None, items: int | None) -> str | None:
    """Why project `name` must be restored rather than synced or snapshotted: missing from Label Studio, or emptied,
    while its dataset holds labelled items. None when it is fine (or there is nothing to restore from)."""
    if not items:
        return None
    fix = f"run `crux project restore {name}` to recreate it from the dataset, with its labels"
    if project_id is None:
        return (
            f"project {name!r} is missing from Label Studio while its dataset holds {items} labelled item(s): {fix} "
            "(`crux project sync` would make it empty)"
        )
    if task_count(client, project_id) == 0:
        return (
            f"project {name!r} (Label Studio project {project_id}) holds no task while its dataset holds {items} "
            f"labelled item(s): {fix} (a snapshot now would version an empty dataset; if it was emptied on purpose, "
            "remove the dataset folder first)"
        )
    return None

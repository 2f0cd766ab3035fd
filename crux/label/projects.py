"""Inspection projects declared in config, created or updated idempotently in Label Studio."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crux.errors import CruxError
from crux.kinds import get_kind

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.types import AllRolesProjectList, RoleBasedTask

    from crux.config import ProjectSpec

MARKER = "crux-project:"  # line in the project description that ties a Label Studio project to a config entry


class ProjectSyncError(CruxError, RuntimeError):
    """A config change would damage existing annotations, or Label Studio refused the project."""


@dataclass(frozen=True)
class SyncResult:
    name: str
    project_id: int
    action: str  # "created" | "updated" | "unchanged"
    changed_fields: tuple[str, ...] = ()


def description_for(name: str) -> str:
    return f"Managed by CRUX from params.yaml; edit the config, not this page.\n{MARKER} {name}"


def find_project(client: LabelStudio, name: str) -> Any | None:
    # The SDK's pager is generic in its item type but `list` leaves it unbound (mypy infers Never): name it here.
    projects: Iterable[AllRolesProjectList] = client.projects.list(page_size=100)
    for project in projects:
        if f"{MARKER} {name}" in (project.description or "").splitlines():
            return project
    return None


def require_project(client: LabelStudio, name: str) -> Any:
    project = find_project(client, name)
    if project is None:
        raise ProjectSyncError(f"project {name!r} does not exist in Label Studio yet; run `crux project sync`")
    return project


def classes_in_config(label_config: str) -> list[str]:
    """Class values of the Choices and *Labels controls (rectangles, brushes, polygons) of a label config."""
    root = ET.fromstring(label_config)
    return [node.attrib["value"] for node in root.iter() if node.tag in ("Label", "Choice") and "value" in node.attrib]


def class_usage(client: LabelStudio, project_id: int) -> Counter[str]:
    """How many annotation results use each class in a project (all tasks, all annotators)."""
    usage: Counter[str] = Counter()
    # The SDK's pager is generic in its item type but `list` leaves it unbound (mypy infers Never): name it here.
    tasks: Iterable[RoleBasedTask] = client.tasks.list(project=project_id, fields="all", page_size=500)
    for task in tasks:
        for annotation in task.annotations or []:
            annotation = annotation if isinstance(annotation, dict) else annotation.dict()
            for result in annotation.get("result") or []:
                value = result.get("value", {})
                for key in ("choices", "rectanglelabels", "brushlabels", "polygonlabels"):
                    for cls in value.get(key, []):
                        usage[cls] += 1
    return usage


def wanted_fields(name: str, spec: ProjectSpec) -> dict[str, Any]:
    """Every Label Studio project field CRUX manages from params.yaml (what `sync` sets, `sync --check` checks)."""
    from crux.label.team import overlap_settings

    return {
        "title": spec.title,
        "label_config": get_kind(spec.kind).label_config(spec),
        "expert_instruction": spec.instructions,
        "description": description_for(name),
        "show_instruction": bool(spec.instructions),
        **overlap_settings(spec),
    }


def check_project(client: LabelStudio, name: str, spec: ProjectSpec) -> tuple[int | None, list[Any]]:
    """The project's id and the managed fields that differ from params.yaml (someone edited them in the UI)."""
    from crux.label.team import Difference, project_differences

    existing = find_project(client, name)
    if existing is None:
        return None, [Difference("project", None, f"{name} (missing: run `crux project sync`)")]
    return existing.id, project_differences(existing, wanted_fields(name, spec))


def sync_project(client: LabelStudio, name: str, spec: ProjectSpec, force: bool = False) -> SyncResult:
    from crux.label.team import project_differences

    wanted = wanted_fields(name, spec)
    existing = find_project(client, name)
    if existing is None:
        project = client.projects.create(**wanted)
        if project.id is None:  # the SDK's model leaves every field optional; a created project has its id
            raise ProjectSyncError(f"Label Studio created project {name!r} but returned no id")
        return SyncResult(name, project.id, "created", tuple(wanted))
    changed = tuple(d.field for d in project_differences(existing, wanted))
    if not changed:
        return SyncResult(name, existing.id, "unchanged")
    if "label_config" in changed:
        removed = set(classes_in_config(existing.label_config or "<View/>")) - set(spec.class_names)
        if removed and not force:
            in_use = {cls: n for cls, n in class_usage(client, existing.id).items() if cls in removed}
            if in_use:
                listing = ", ".join(f"{cls} ({n} annotation results)" for cls, n in sorted(in_use.items()))
                raise ProjectSyncError(
                    f"project {name!r}: removing or renaming class(es) still used by annotations: {listing}. "
                    "Relabel those first, or pass --force to accept that they become invalid."
                )
    try:
        client.projects.update(id=existing.id, **{key: wanted[key] for key in changed})
    except Exception as exc:
        raise ProjectSyncError(f"Label Studio refused the update of project {name!r}: {exc}") from exc
    return SyncResult(name, existing.id, "updated", changed)

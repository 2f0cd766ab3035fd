"""The team behind a line, read live from its Label Studio project: each annotator's throughput, how well the
people who labelled the same images agree, and the review queue.

Pure aggregations over what Label Studio's task list returns (`fields=all`: tasks with their annotations, plain
dicts), plus `read_team`, the one function that talks to Label Studio (through the SDK client the console already
uses). Agreement is crux.data.agreement's measure (#17), computed here from the live annotations instead of a
committed dataset version, so a team lead sees a disagreement before the next snapshot; the review queue is the
Data Manager tab `crux review` publishes (crux.label.review), with the live low-agreement images beside it.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Agreement is measured live for the kinds whose labels compare without decoding masks (classify, anomaly: the
# choice; detect: boxes). A segment line's agreement needs the class masks: `crux data agreement` on a version.
LIVE_AGREEMENT = {"classify": "classify", "anomaly": "classify", "detect": "detect"}
MAX_QUEUE_SHOWN = 20


@dataclass(frozen=True)
class AnnotatorRow:
    annotator: str
    annotations: int  # submitted, not skipped
    last_24h: int
    last_7d: int
    skipped: int
    median_lead_s: float | None  # Label Studio's lead time: seconds the annotator spent on a task
    last_at: dt.datetime | None
    agreement: float | None  # mean pair score over the images this person shares with another
    shared: int  # images this person labelled that someone else labelled too
    imported: bool  # the import identity (labels of an imported dataset), not a person


@dataclass(frozen=True)
class QueueItem:
    task_id: int
    reason: str  # "low agreement" | "review tab"
    agreement: float | None
    annotators: tuple[str, ...]
    name: str


@dataclass(frozen=True)
class ReviewTab:
    view_id: int
    task_ids: tuple[int, ...]


@dataclass(frozen=True)
class TeamSummary:
    line: str
    kind: str
    project_id: int
    url: str  # Label Studio's base URL (the links the console prints)
    tasks: int
    labeled: int
    annotators: tuple[AnnotatorRow, ...]
    overlapped: int  # images labelled by two or more people
    mean_agreement: float | None
    threshold: float
    agreement_live: bool  # False: this kind's agreement is not measured live (see LIVE_AGREEMENT)
    queue: tuple[QueueItem, ...]
    queue_total: int
    review_tab: ReviewTab | None
    read_at: dt.datetime

    def task_url(self, task_id: int) -> str:
        return f"{self.url}/projects/{self.project_id}/data?task={int(task_id)}"

    @property
    def project_url(self) -> str:
        return f"{self.url}/projects/{self.project_id}/data"

    @property
    def review_url(self) -> str | None:
        tab = self.review_tab
        return None if tab is None else f"{self.url}/projects/{self.project_id}/data?tab={tab.view_id}"


def plain(value: Any) -> dict[str, Any]:
    """An SDK object or a dict as a dict (the SDK hands annotations back as either, by version)."""
    if isinstance(value, Mapping):
        return dict(value)
    for method in ("model_dump", "dict"):
        if hasattr(value, method):
            data: dict[str, Any] = getattr(value, method)()
            return data
    return dict(vars(value))


def annotator_name(annotation: Mapping[str, Any], names: Mapping[int, str]) -> str:
    """The person behind an annotation as the dataset names them (crux.data.snapshot: email, else user:ID)."""
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        email = who.get("email")
        who = email if email else who.get("id")
        if isinstance(who, str):
            return who
    if isinstance(who, int) and not isinstance(who, bool):
        return names.get(who) or f"user:{who}"
    return "unknown"


def _when(annotation: Mapping[str, Any]) -> dt.datetime | None:
    raw = annotation.get("created_at")
    if not isinstance(raw, str):
        return None
    try:
        at = dt.datetime.fromisoformat(raw)
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)


def _lead(annotation: Mapping[str, Any]) -> float | None:
    lead = annotation.get("lead_time")
    return float(lead) if isinstance(lead, int | float) and not isinstance(lead, bool) and lead >= 0 else None


def throughput(
    tasks: Iterable[Mapping[str, Any]], names: Mapping[int, str], now: dt.datetime
) -> dict[str, dict[str, Any]]:
    """Per annotator: submitted annotations (all, last 24 h, last 7 days), skipped ones, median lead time and the
    latest; every annotation counts (a relabel is work too)."""
    rows: dict[str, dict[str, Any]] = {}
    for task in tasks:
        for annotation in task.get("annotations") or ():
            a = plain(annotation)
            who = annotator_name(a, names)
            row = rows.setdefault(who, {"annotations": 0, "last_24h": 0, "last_7d": 0, "skipped": 0, "leads": []})
            if a.get("was_cancelled"):
                row["skipped"] += 1
                continue
            row["annotations"] += 1
            at = _when(a)
            if at is not None:
                age = now - at
                row["last_24h"] += age <= dt.timedelta(hours=24)
                row["last_7d"] += age <= dt.timedelta(days=7)
                row["last_at"] = max(row.get("last_at") or at, at)
            lead = _lead(a)
            if lead is not None:
                row["leads"].append(lead)
    return rows


def people_of(
    task: Mapping[str, Any], kind: str, names: Mapping[int, str]
) -> list[Any]:  # list[crux.data.manifest.AnnotatorLabels]
    """Each person's latest submitted labels of one task (what crux.data.snapshot keeps for agreement)."""
    from crux.data.manifest import AnnotatorLabels, ItemLabel, round_box
    from crux.kinds import get_kind

    latest: dict[str, dict[str, Any]] = {}
    for annotation in task.get("annotations") or ():
        a = plain(annotation)
        if a.get("was_cancelled"):
            continue
        who = annotator_name(a, names)
        key = (str(a.get("updated_at") or a.get("created_at") or ""), int(a.get("id") or 0))
        if who not in latest or key > latest[who]["_key"]:
            latest[who] = {**a, "_key": key}
    data = task.get("data") or {}
    width = int(data.get("width") or 1) if isinstance(data, Mapping) else 1
    height = int(data.get("height") or 1) if isinstance(data, Mapping) else 1
    out = []
    for who, a in sorted(latest.items()):
        results = a.get("result") or []
        try:
            labels = get_kind(kind).from_results([r for r in results if isinstance(r, Mapping)], width, height)
        except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError):
            labels = []  # a malformed result counts as no label: it disagrees with any real one
        out.append(
            AnnotatorLabels(
                who,
                tuple(ItemLabel(lb.cls, None if lb.box is None else round_box(lb.box.as_list())) for lb in labels),
            )
        )
    return out


def live_agreement(
    tasks: Sequence[Mapping[str, Any]], kind: str, names: Mapping[int, str], threshold: float, match_iou: float
) -> Any:  # crux.data.agreement.AgreementReport | None
    """crux.data.agreement's report over the tasks two or more people labelled; None for a kind not measured
    live (segment)."""
    from crux.data.agreement import agreement_report
    from crux.data.manifest import ManifestItem

    measure = LIVE_AGREEMENT.get(kind)
    if measure is None:
        return None
    items = []
    for task in tasks:
        people = people_of(task, measure, names)
        if len(people) < 2:
            continue
        data = task.get("data") or {}
        items.append(
            ManifestItem(
                sha256=str(data.get("sha256") or ""),
                task_id=int(task["id"]),
                image="",
                width=int(data.get("width") or 1),
                height=int(data.get("height") or 1),
                original_name=str(data.get("original_name") or f"task {task['id']}"),
                split="",
                annotators=tuple(p.annotator for p in people),
                by_annotator=tuple(people),
            )
        )
    return agreement_report(items, measure, (), threshold=threshold, match_iou=match_iou)


def per_annotator_agreement(per_pair: Iterable[Mapping[str, Any]]) -> dict[str, tuple[float, int]]:
    """Each person's mean pair score (weighted by shared images) and the images they share, from the report's
    per-pair rows."""
    sums: dict[str, list[float]] = {}
    for pair in per_pair:
        for who in pair["annotators"]:
            s = sums.setdefault(who, [0.0, 0])
            s[0] += float(pair["mean"]) * int(pair["images"])
            s[1] += int(pair["images"])
    return {who: (total / n, int(n)) for who, (total, n) in sums.items() if n}


def review_tab(views: Iterable[Any], title: str) -> ReviewTab | None:
    """The Data Manager tab `crux review` publishes (its task-id filter), if the project has one."""
    for view in views:
        v = plain(view)
        data = v.get("data") or {}
        if data.get("title") != title:
            continue
        items = ((data.get("filters") or {}).get("items")) or []
        ids = tuple(
            int(i["value"])
            for i in items
            if i.get("filter") == "filter:tasks:id" and isinstance(i.get("value"), int) and i["value"] >= 0
        )
        return ReviewTab(int(v["id"]), ids)
    return None


def summarize(
    line: str,
    kind: str,
    project_id: int,
    url: str,
    tasks: Sequence[Mapping[str, Any]],
    names: Mapping[int, str],
    views: Iterable[Any],
    now: dt.datetime,
    *,
    threshold: float | None = None,
    match_iou: float = 0.5,
) -> TeamSummary:
    """Everything the team panel shows, from one read of the project (pure: values in, a summary out)."""
    from crux.data.provenance import IMPORT_IDENTITY
    from crux.label.review import VIEW_TITLE

    if threshold is None:  # the kind's default item agreement (crux.config.ProjectSpec.min_item_agreement)
        threshold = 0.7 if kind == "segment" else 1.0
    counts = throughput(tasks, names, now)
    report = live_agreement(tasks, kind, names, threshold, match_iou)
    by_person = per_annotator_agreement(report.per_pair) if report is not None else {}
    rows = [
        AnnotatorRow(
            annotator=who,
            annotations=c["annotations"],
            last_24h=c["last_24h"],
            last_7d=c["last_7d"],
            skipped=c["skipped"],
            median_lead_s=statistics.median(c["leads"]) if c["leads"] else None,
            last_at=c.get("last_at"),
            agreement=by_person[who][0] if who in by_person else None,
            shared=by_person[who][1] if who in by_person else 0,
            imported=who == IMPORT_IDENTITY,
        )
        for who, c in counts.items()
    ]
    # People first, busiest this week first; the import identity last (it is not someone's throughput).
    rows.sort(key=lambda r: (r.imported, -r.last_7d, -r.annotations, r.annotator))
    tab = review_tab(views, VIEW_TITLE)
    names_by_task = {int(t["id"]): str((t.get("data") or {}).get("original_name") or "") for t in tasks}
    queue = [
        QueueItem(f.task_id, "low agreement", f.agreement, f.annotators, f.original_name)
        for f in (report.flagged if report is not None else ())
    ]
    seen = {q.task_id for q in queue}
    queue += [
        QueueItem(t, "review tab", None, (), names_by_task.get(t, ""))
        for t in (tab.task_ids if tab else ())
        if t not in seen
    ]
    labeled = sum(1 for t in tasks if any(not plain(a).get("was_cancelled") for a in t.get("annotations") or ()))
    return TeamSummary(
        line=line,
        kind=kind,
        project_id=project_id,
        url=url.rstrip("/"),
        tasks=len(tasks),
        labeled=labeled,
        annotators=tuple(rows),
        overlapped=report.overlapped if report is not None else 0,
        mean_agreement=report.mean if report is not None else None,
        threshold=threshold,
        agreement_live=report is not None,
        queue=tuple(queue[:MAX_QUEUE_SHOWN]),
        queue_total=len(queue),
        review_tab=tab,
        read_at=now,
    )


def read_team(client: Any, line: str, kind: str, project_id: int, url: str, now: dt.datetime) -> TeamSummary:
    """One read of a line's project through the SDK: its tasks with annotations, the members, the tabs."""
    names = {int(u.id): str(u.email or f"user:{u.id}") for u in client.users.list()}
    # resolve_uri=False: the image URLs are not shown here, and resolving them costs Label Studio per task.
    tasks = [plain(t) for t in client.tasks.list(project=project_id, fields="all", page_size=500, resolve_uri=False)]
    views = list(client.views.list(project=project_id))
    return summarize(line, kind, project_id, url, tasks, names, views, now)

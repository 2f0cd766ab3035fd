"""Fixture data for the console's team panel and capture cards (tests/console_support.py builds the plant): more
captures through the real ingest API (uncertain ones, another class, enough to page), and a Label Studio project
two annotators labelled, with `crux review`'s tab published."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import httpx
from console_support import LINE, OTHER_LINE, Plant, upload_capture

from crux.collect.ingest_server import make_jpeg

# Pixels of the caption band's text (yellow on a dark band), counted in the browser from the decoded image.
YELLOW_PIXELS_JS = """(img) => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] > 200 && d[i + 1] > 170 && d[i + 2] < 90) n++;
  return n;
}"""


@dataclass(frozen=True)
class ExtraCaptures:
    uncertain: list[int]  # OK verdict, top two scores 0.52 / 0.48
    spot: list[int]  # NG, class spot, a box each
    plain_ok: list[int]  # OK, sure
    segment: list[int]  # OTHER_LINE: a segmenter's NG frame, its region's mask and one score


def add_captures(ingest_url: str, tokens: dict[str, str]) -> ExtraCaptures:
    """34 more captures of LINE from cam-1/cam-2: 24 sure OK, 6 NG of class spot, then 4 uncertain OK (the newest,
    so that the line page's kept-OK gallery shows them)."""
    out: dict[str, list[int]] = {"uncertain": [], "spot": [], "plain_ok": [], "segment": []}
    now = dt.datetime.now(dt.UTC)
    with httpx.Client(base_url=ingest_url, timeout=10) as client:
        for i in range(34):
            group = "plain_ok" if i < 24 else ("spot" if i < 30 else "uncertain")
            station = "cam-1" if i % 2 else "cam-2"
            meta: dict[str, Any] = {
                "station": station,
                "line": LINE,
                "captured_at": (now - dt.timedelta(minutes=200 + i)).isoformat(),
                "model_version": f"{LINE}.v2",
                "prediction": {"uncertain": "ok", "spot": "spot", "plain_ok": "ok"}[group],
                "verdict": "ng" if group == "spot" else "ok",
                "scores": {
                    "uncertain": {"ok": 0.52, "scratch": 0.48},
                    "spot": {"spot": 0.91, "ok": 0.05, "scratch": 0.04},
                    "plain_ok": {"ok": 0.97, "scratch": 0.03},
                }[group],
                "boxes": [{"class": "spot", "box": [40.0, 40.0, 140.0, 140.0], "score": 0.91}]
                if group == "spot"
                else [],
            }
            out[group].append(upload_capture(client, tokens[station], f"x{i}.jpg", make_jpeg(900 + i), meta))
        out["segment"] = [segment_capture(client, tokens["cam-9"])]
    return ExtraCaptures(out["uncertain"], out["spot"], out["plain_ok"], out["segment"])


def segment_capture(client: httpx.Client, token: str) -> int:
    """A segmenter's NG frame of OTHER_LINE (cam-9): one region with its mask (COCO RLE) and a single NG score."""
    import numpy as np

    from crux.postprocess import rle_encode

    mask = np.zeros((200, 200), dtype=np.uint8)
    mask[60:140, 50:150] = 1
    meta = {
        "station": "cam-9",
        "line": OTHER_LINE,
        "captured_at": dt.datetime.now(dt.UTC).isoformat(),
        "model_version": f"{OTHER_LINE}.v1",
        "verdict": "ng",
        "scores": {"scratch": 0.93},
        "boxes": [{"class": "scratch", "box": [50.0, 60.0, 150.0, 140.0], "score": 0.93, "mask": rle_encode(mask)}],
    }
    return upload_capture(client, token, "seg.jpg", make_jpeg(777), meta)


def team_console_config(plant: Plant, team_line: str, *, ls_url: str | None = None, ls_token: str = "x") -> Any:
    """tests/console_support.py's console over `plant`, with one more classify line (`team_line`)."""
    from dataclasses import replace

    from console_support import console_config

    from crux.console.deps import LineInfo

    cfg = console_config(plant, ls_url=ls_url, ls_token=ls_token)
    return replace(cfg, lines=(*cfg.lines, LineInfo(team_line, "Team line", "classify")))


@dataclass(frozen=True)
class TeamProject:
    project_id: int
    task_ids: list[int]
    disagreement: int  # the task ann and bob labelled differently
    queued: int  # the task published in the review tab
    ann: str
    bob: str


def team_project(ls_client: Any, line: str) -> TeamProject:
    """A classify project for `line` with 6 tasks: ann labels 4, bob the same 4 (disagreeing on one) and skips
    a fifth; the review tab holds a sixth, unlabelled task."""
    from crux.config import ProjectSpec
    from crux.kinds import Label, get_kind
    from crux.label.projects import sync_project
    from crux.label.review import publish_view
    from crux.label.team import ensure_member

    spec = ProjectSpec(title=f"Team {line}"[:50], kind="classify", classes={"ok": "#00aa00", "scratch": "#ff0000"},
                       ok_class="ok")  # fmt: skip
    project_id = sync_project(ls_client, line, spec).project_id
    created = ls_client.projects.import_tasks(
        id=project_id,
        request=[{"data": {"image": f"/data/local-files/?d=t{i}.jpg", "original_name": f"t{i}.jpg", "width": 200,
                           "height": 200}} for i in range(6)],
        return_task_ids=True,
    )  # fmt: skip
    ids = [int(t) for t in created.task_ids]
    ann_email, bob_email = f"ann-{line}@plant.example", f"bob-{line}@plant.example"
    ann, bob = ensure_member(ls_client, ann_email), ensure_member(ls_client, bob_email)

    def choice(cls: str) -> list[dict[str, Any]]:
        return get_kind("classify").to_results([Label(cls)], 200, 200)

    for n, tid in enumerate(ids[:4]):
        ls_client.annotations.create(id=tid, result=choice("scratch"), completed_by=ann, lead_time=4.0 + n)
        other = "ok" if n == 1 else "scratch"
        ls_client.annotations.create(id=tid, result=choice(other), completed_by=bob, lead_time=6.0)
    ls_client.annotations.create(id=ids[4], result=[], completed_by=bob, was_cancelled=True)
    publish_view(ls_client, project_id, [ids[5]])
    return TeamProject(project_id, ids, ids[1], ids[5], ann_email, bob_email)

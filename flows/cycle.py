"""The improvement cycle of one inspection line: snapshot → only when a new dataset version appears:
train + evaluate + export (`dvc repro`) → push → gate → publish.

Returns {"project", "dataset", "published", "gate"}: `published` is {"version", …} or None (no new data, or
the gate refused: then `gate` holds every criterion and why, also the `LINE-gate` artifact)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.deploy import one_cycle_per_line
from flows.tasks import publish_task, push_task, reproduce_task, snapshot_task


@flow(name="cycle")
@one_cycle_per_line
def cycle(
    project: str,
    params_path: str = "params.yaml",
    quick: bool = False,
    remote: str | None = None,
    profile: str | None = None,
) -> dict:
    version = snapshot_task(project, params_path)
    if version is None:
        return {"project": project, "dataset": None, "published": None}
    reproduce_task(project, params_path, quick, profile)
    push_task(params_path)
    decision: Any = publish_task(project, params_path, remote)
    published = decision if decision and decision.get("published") else None
    return {"project": project, "dataset": version, "published": published, "gate": decision and decision["gate"]}

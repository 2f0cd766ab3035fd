"""The improvement cycle of one inspection line: check the line can train → (shared Git) rebase onto git.remote and
pull the line's data → snapshot → only when a new dataset version appears: train + evaluate + export
(`dvc repro`) → `dvc push` of the line → (shared Git) commit its dvc.lock entries and push, retrying a lost race →
gate → publish.

A line outside pipeline.lines is refused before anything else (no fetch, no snapshot, no commit). Nothing reaches
the Git remote before training ends: a cycle that dies leaves its commits in its own checkout only (its next run
there trains that version), so the remote never holds a version whose cycle did not finish.

Returns {"project", "dataset", "published", "gate", "git"}: `published` is {"version", …} or None (no new data, or
the gate refused: then `gate` holds every criterion and why, also the `LINE-gate` artifact)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.deploy import one_cycle_per_line
from flows.tasks import (
    check_line,
    commit_lock_task,
    git_push_task,
    git_sync_task,
    line_data_task,
    pending_version,
    publish_task,
    push_task,
    reproduce_task,
    snapshot_task,
)


@flow(name="cycle")
@one_cycle_per_line
def cycle(
    project: str,
    params_path: str = "params.yaml",
    quick: bool = False,
    remote: str | None = None,
    profile: str | None = None,
) -> dict:
    check_line(project, params_path)
    synced = git_sync_task(params_path)
    if synced is not None:
        line_data_task(project, params_path)
    version = snapshot_task(project, params_path)
    if version is None:
        pending = pending_version(project, params_path)
        if pending is None:
            return {"project": project, "dataset": None, "published": None, "git": synced}
        version = {"commit": pending, "message": "a version committed here by a cycle that did not finish"}
    reproduce_task(project, params_path, quick, profile)
    push_task(params_path, project)
    commit_lock_task(project, params_path)
    pushed = git_push_task(params_path)
    decision: Any = publish_task(project, params_path, remote)
    published = decision if decision and decision.get("published") else None
    return {
        "project": project,
        "dataset": version,
        "published": published,
        "gate": decision and decision["gate"],
        "git": pushed,
    }

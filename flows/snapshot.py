"""Snapshot one Label Studio project into a new DVC dataset version (no commit when nothing changed)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.tasks import snapshot_task


@flow(name="snapshot")
def snapshot(project: str, params_path: str = "params.yaml") -> dict[str, Any] | None:
    return snapshot_task(project, params_path)

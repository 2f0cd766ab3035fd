"""Gate the line's exported candidate against production and publish it to the model remote."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.tasks import publish_task


@flow(name="publish")
def publish(line: str, params_path: str = "params.yaml", remote: str | None = None) -> dict[str, Any] | None:
    return publish_task(line, params_path, remote)

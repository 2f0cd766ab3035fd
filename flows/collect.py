"""Collect: captures in the ingest DB → Label Studio tasks of their line's project, most uncertain first.

Two tasks, one side effect each, both safe to repeat: make the project ready (image storage, sampling), then
import the unsent captures (idempotent: reconciled by capture id). Config comes through `crux.cli`; the work
is `crux.collect.labeling`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact


def _context(params_path: str) -> Any:
    from crux.cli import load_context

    return load_context(Path(params_path))


def _resolve(params_path: str) -> dict[str, Any]:
    """Everything a collect step needs, resolved from params.yaml and the environment by crux.cli."""
    from crux.cli import ingest_settings, labelstudio_access, labelstudio_config, s3_storage_options
    from crux.collect.storage import ImageStore

    ctx = _context(params_path)
    settings = ingest_settings(ctx)
    store = ImageStore(settings.storage_url, settings.storage_options)
    remote_store = "://" in settings.storage_url and not settings.storage_url.startswith("file://")
    s3_options = s3_storage_options() if remote_store else {}
    return {
        "ctx": ctx,
        "settings": settings,
        "store": store,
        "access": labelstudio_access(ctx),
        "cfg": labelstudio_config(ctx),
        "s3_options": s3_options,
    }


@task(retries=2, retry_delay_seconds=15)
def prepare_task(project: str, params_path: str) -> int:
    """Label Studio side: a storage over the ingest images and the sampling mode (idempotent)."""
    from crux.collect.labeling import prepare_project
    from crux.label.client import connect

    r = _resolve(params_path)
    r["cfg"].project(project)  # an undeclared project fails here, before anything is written
    client = connect(r["access"].url, r["access"].token)
    return prepare_project(client, project, r["store"], r["access"].files_root, r["s3_options"])


@task(retries=2, retry_delay_seconds=15)
def import_task(project: str, params_path: str, batch_size: int) -> dict[str, Any]:
    """Unsent captures → tasks, batch by batch, each batch marked sent; a retry reconciles by capture id."""
    from crux.collect import create_db_engine, migrate
    from crux.collect.labeling import collect as collect_captures
    from crux.label.client import connect

    r = _resolve(params_path)
    engine = create_db_engine(r["settings"].database_url)
    try:
        migrate(engine)
        client = connect(r["access"].url, r["access"].token)
        report = collect_captures(
            engine,
            client,
            project,
            r["cfg"].project(project),
            r["store"],
            r["access"].files_root,
            batch_size,
            s3_options=r["s3_options"],
        )
    finally:
        engine.dispose()
    create_markdown_artifact(
        key=f"{project.replace('_', '-')}-collect",
        markdown=f"# {project}: collect\n\n{report.summary()}\n",
        description="Collect",
    )
    result = dataclasses.asdict(report)
    result["task_ids"] = list(report.task_ids)
    return result


@flow(name="collect")
def collect(project: str, params_path: str = "params.yaml", batch_size: int = 500) -> dict[str, Any]:
    prepare_task(project, params_path)
    return import_task(project, params_path, batch_size)

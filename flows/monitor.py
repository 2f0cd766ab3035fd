"""The drift monitor: every line's stations against the validation distribution of the model they run.

One task per run: for each line in labelstudio.projects, `crux.monitor.watch.check_line` compares the score
histograms of the last `monitor.window_s` of heartbeats with each card's reference, raises, keeps or clears alarms
in the ingest DB and queues a new alarm's frames for labelling first (the collect flow sends them ahead of the rest).
The report is the `drift` markdown artifact. `serve()` runs it every `monitor.interval_s`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

ARTIFACT_KEY = "drift"


@task(retries=1, retry_delay_seconds=10)
def check_task(params_path: str, lines: list[str] | None = None) -> dict[str, Any]:
    """Check every line (or `lines`); returns {"alarms": [scope, …], "checks": [{scope, status, …}, …]}."""
    from crux.collect import create_db_engine, migrate
    from crux.monitor.watch import check_line, markdown_report, release_reference
    from crux.settings import (
        ingest_settings,
        labelstudio_config,
        load_context,
        model_remote,
        monitor_config,
        s3_storage_options,
        trusted_keys,
    )
    from crux.ship.releases import ReleaseError, read_pointer

    ctx = load_context(Path(params_path))
    cfg = monitor_config(ctx)
    remote = model_remote(ctx, None)
    options = s3_storage_options() if remote.startswith("s3://") else None
    keys = trusted_keys(ctx)
    names = lines or list(labelstudio_config(ctx).projects)
    engine = create_db_engine(ingest_settings(ctx).database_url)
    now = dt.datetime.now(dt.UTC)
    checks = []
    try:
        migrate(engine)
        for line in names:
            cache: dict[int, Any] = {}

            def reference(version: int | None, line: str = line, cache: dict[int, Any] = cache) -> Any:
                if version is None:
                    return None
                if version not in cache:
                    try:
                        cache[version] = release_reference(remote, line, version, keys, options)
                    except (ReleaseError, OSError, ValueError):
                        cache[version] = None  # unverifiable or gone: shown as "no reference", never an alarm
                return cache[version]

            try:
                pointer = read_pointer(f"{remote.rstrip('/')}/{line}", keys, options)
            except (ReleaseError, OSError):
                pointer = None
            production = int(pointer["version"]) if pointer else None
            checks.extend(check_line(engine, line, reference, production, cfg, now))
    finally:
        engine.dispose()
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=markdown_report(checks), description="Drift monitor")
    return {
        "alarms": [c.scope for c in checks if c.assessment.alarm],
        "raised": [c.scope for c in checks if c.raised],
        "queued": sum(len(c.queued) for c in checks),
        "checks": [
            {"scope": c.scope, "status": c.assessment.status, "frames": c.assessment.frames, "psi": c.assessment.psi}
            for c in checks
        ],
    }


@flow(name="monitor")
def monitor(params_path: str = "params.yaml", lines: list[str] | None = None) -> dict[str, Any]:
    return check_task(params_path, lines)


def serve(params_path: str = "params.yaml") -> None:
    """Run the monitor every `monitor.interval_s` in this process (a long-running service beside the ingest)."""
    from crux.settings import load_context, monitor_config

    interval = monitor_config(load_context(Path(params_path))).interval_s
    monitor.serve(name="drift-monitor", interval=interval, parameters={"params_path": params_path})


if __name__ == "__main__":
    serve()

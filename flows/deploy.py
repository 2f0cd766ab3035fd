"""Prefect deployments of the cycle flow: one per project, on a cron schedule and on demand.

`deployments(...)` builds `cycle-<project>` deployments of `flows.cycle:cycle`; `register(...)` applies them
to the Prefect API the environment points at (PREFECT_API_URL; an ephemeral local server otherwise);
`trigger_cycle(project)` starts one run now unless a cycle of that project is already queued or running.

Where runs execute (README: "Scheduled and label-triggered cycles"):
- one machine: `prefect server start`, then `prefect worker start --pool crux` (a process worker) from the
  project folder; `crux deploy` creates the `crux` process pool when it is missing;
- scale-out: set `deploy.work_pool` to a pool served by a worker on the GPU machine (`prefect work-pool create
  gpu --type process`, then `prefect worker start --pool gpu` there, with PREFECT_API_URL pointing at the
  server). The worker imports `flows.cycle` from its own install of this repo (`pip install -e .[app]`) and
  runs it in `deploy.working_dir` (where params.yaml and the DVC workspace live on that machine), so the
  training — the expensive step of the cycle — runs on the GPU.

Never two cycles of one project at once: every deployment carries a concurrency limit of 1 (the server
queues a second run until the first ends) and `trigger_cycle` does not even queue one while a run is
pending, running, or scheduled to start soon.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crux.config import ConfigError
from crux.errors import CruxError

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

FLOW_NAME = "cycle"
DEFAULT_POOL = "crux"
CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?#LW-]+\Z")
# A run started by the scheduler this close to now counts as running: a label-triggered run just before
# the nightly one would only do the same work twice.
DUE_WITHIN_S = 900.0


class DeployError(CruxError, RuntimeError):
    """A deployment could not be registered or started (the message says which and why)."""


@dataclass(frozen=True)
class DeployConfig:
    """params.yaml `deploy:` — when the cycle runs on its own, and where."""

    schedule_cron: str = "0 2 * * *"
    timezone: str = "UTC"
    enabled: bool = True
    work_pool: str | None = DEFAULT_POOL
    work_queue: str | None = None
    working_dir: Path | None = None

    def __post_init__(self) -> None:
        fields = self.schedule_cron.split()
        if len(fields) != 5 or not all(CRON_FIELD.match(f) for f in fields):
            raise ConfigError(f"deploy.schedule_cron: {self.schedule_cron!r} is not a 5-field cron expression")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"deploy.timezone: {self.timezone!r} is not an IANA time zone") from None
        if self.work_queue is not None and self.work_pool is None:
            raise ConfigError("deploy.work_queue needs deploy.work_pool")


def deployment_name(project: str) -> str:
    return f"cycle-{project}"


def _cycle_flow() -> Flow[..., Any]:
    try:
        from flows.cycle import cycle
    except ImportError as exc:
        raise DeployError(f"the cycle flow (flows/cycle.py) cannot be imported: {exc}") from exc
    return cycle


def deployments(
    projects: Iterable[str],
    schedule_cron: str,
    timezone: str,
    *,
    enabled: bool = True,
    work_pool: str | None = None,
    work_queue: str | None = None,
    working_dir: Path | None = None,
    flow: Flow[..., Any] | None = None,
) -> list[RunnerDeployment]:
    """One `cycle-<project>` deployment per project: cron in `timezone`, parameters {"project": project}.

    `enabled=False` registers the schedule inactive: the deployments stay for on-demand and label-triggered
    runs. `flow` defaults to `flows.cycle:cycle`; its entrypoint is a module path, so any worker with this
    repo installed can load it whatever its folder layout.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    flow = flow or _cycle_flow()
    built = []
    for project in projects:
        job_variables = {"working_dir": str(working_dir)} if working_dir is not None and work_pool else None
        try:
            deployment = flow.to_deployment(
                name=deployment_name(project),
                parameters={"project": project},
                schedules=[Cron(schedule_cron, timezone=timezone, active=enabled)],
                # ENQUEUE: a run that collides waits for the first and then finds the labels it was for.
                concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
                description=f"The CRUX learning loop for project {project}: snapshot, and on new data train, "
                "evaluate, gate, publish.",
                tags=["crux", f"project:{project}"],
                work_pool_name=work_pool,
                work_queue_name=work_queue,
                job_variables=job_variables,
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        except ValueError as exc:  # pydantic validation of the cron expression or time zone
            raise DeployError(f"deployment {deployment_name(project)}: {exc}") from exc
        built.append(deployment)
    return built


def deployments_from_config(
    projects: Iterable[str], config: DeployConfig, working_dir: Path | None = None, flow: Flow[..., Any] | None = None
) -> list[RunnerDeployment]:
    """`deployments` with the values of params.yaml `deploy:`; `working_dir` is the fallback for a local worker."""
    return deployments(
        projects,
        config.schedule_cron,
        config.timezone,
        enabled=config.enabled,
        work_pool=config.work_pool,
        work_queue=config.work_queue,
        working_dir=config.working_dir or working_dir,
        flow=flow,
    )


def ensure_work_pool(name: str, pool_type: str = "process") -> bool:
    """Create work pool `name` when missing (True when created); an existing pool is left as it is."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        template = None
        if pool_type == "process":
            from prefect.workers.process import ProcessWorker

            template = ProcessWorker.get_default_base_job_template()
        client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template or {}))
        return True


def register(deployments: Sequence[RunnerDeployment], work_pool: str | None) -> list[str]:
    """Create or update the deployments in the configured Prefect API; returns their ids.

    Re-registering replaces the schedules (a changed cron never leaves the old one behind). With
    `work_pool=None` the deployments have no pool: only `serve(deployments)` runs them.
    """
    if work_pool is not None:
        ensure_work_pool(work_pool)
    ids = []
    for deployment in deployments:
        try:
            ids.append(str(deployment.apply(work_pool_name=work_pool)))
        except Exception as exc:  # httpx / Prefect API errors: name the deployment and the API
            raise DeployError(f"registering deployment {deployment.name} failed: {exc}") from exc
    return ids


def prune(projects: Iterable[str], flow_name: str = FLOW_NAME) -> list[str]:
    """Delete the `cycle-*` deployments of `flow_name` whose project is not in `projects` (removed from
    params.yaml: their nightly runs would fail); returns the deleted deployment names."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    keep = {deployment_name(p) for p in projects}
    removed = []
    with get_client(sync_client=True) as client:
        found = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
        for deployment in found:
            if deployment.name.startswith("cycle-") and deployment.name not in keep:
                client.delete_deployment(deployment.id)
                removed.append(deployment.name)
    return removed


def serve(deployments: Sequence[RunnerDeployment]) -> None:
    """Run the deployments' schedules and triggered runs in this process until interrupted (no worker)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments)


def active_runs(project: str, flow_name: str = FLOW_NAME, due_within_s: float = DUE_WITHIN_S) -> list[Any]:
    """Runs of `<flow_name>/cycle-<project>` that are pending, running, paused, cancelling, or scheduled to
    start within `due_within_s` (or started by hand and not yet picked up)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    name = f"{flow_name}/{deployment_name(project)}"
    busy = [StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING, StateType.SCHEDULED]
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise DeployError(f"deployment {name} is not registered; run `crux deploy`") from None
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=busy))),
        )
    horizon = datetime.now(UTC) + timedelta(seconds=due_within_s)

    def counts(run: Any) -> bool:
        if run.state is None or run.state.type != StateType.SCHEDULED:
            return True
        # The scheduler fills days ahead: tomorrow's nightly run must not block a run now. A run made by
        # hand or by a trigger (not auto-scheduled), late or awaiting a concurrency slot, does.
        if not run.auto_scheduled or run.state.name != "Scheduled":
            return True
        when = run.state.state_details.scheduled_time or run.expected_start_time
        return when is None or when <= horizon

    return [run for run in runs if counts(run)]


def trigger_cycle(
    project: str, flow_name: str = FLOW_NAME, due_within_s: float = DUE_WITHIN_S, reason: str = "on-demand"
) -> str | None:
    """Start a run of `cycle-<project>` now and return its flow-run id; None when one is already queued or
    running (see `active_runs`). Returns at once (timeout=0): the worker executes the run. `reason` becomes
    a tag of the run ("on-demand", "labels"), so the UI shows why it started."""
    from prefect.deployments import run_deployment

    if active_runs(project, flow_name, due_within_s):
        return None
    try:
        run = run_deployment(
            name=f"{flow_name}/{deployment_name(project)}",
            timeout=0,
            # Never a child of whatever flow happens to call this: it is a cycle of its own.
            as_subflow=False,
            tags=["crux", reason],
        )
    except Exception as exc:
        raise DeployError(f"starting {flow_name}/{deployment_name(project)} failed: {exc}") from exc
    return str(run.id)

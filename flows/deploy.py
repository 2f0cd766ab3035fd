"""Prefect deployments of the cycle flow: one per line, on a cron schedule and on demand, run by process workers.

`deployments(...)` builds `cycle-<line>` deployments of `flows.cycle:cycle`; `register(...)` applies them to the
Prefect API the environment points at (PREFECT_API_URL; an ephemeral local server otherwise) together with the
pool, one global concurrency limit per line and the crashed-run automation; `trigger_cycle(line)` starts one run
now unless a cycle of that line is already queued or running.

Where runs execute (README: "More than one machine"): every worker machine has its own clone of the project
and runs `crux worker start` there. That command starts a Prefect process worker of the pool with CRUX_WORKDIR =
the clone; the deployments carry one pull step, `set_working_directory` to `{{ $CRUX_WORKDIR }}`, which Prefect
resolves from the environment of the process that executes the run — so one deployment runs in whichever clone
picks it up, never in a folder hard-coded at deploy time. (`deploy.working_dir` still pins one folder: a single
worker machine whose project lives elsewhere than where `crux deploy` ran.)

One cycle per line at a time, across every worker, from Prefect's own concurrency machinery:
- every deployment has a deployment concurrency limit of 1 (ENQUEUE: a colliding run waits for the first);
- the cycle flow holds the global concurrency limit `crux-line-<line>` (1 slot, created here) for its whole
  body, so a `crux cycle` started by hand against the same server waits too. The slot is a lease of
  LINE_LEASE_S seconds that the running flow renews; a run whose machine dies stops renewing, and the server's
  repossessor frees the slot within LINE_LEASE_S + 15 s.
- a run whose worker died stays "Running" in the API until someone notices: `crux deploy` creates the
  automation ZOMBIE_AUTOMATION (Prefect's documented zombie-flow pattern): a flow run that has sent a heartbeat
  (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set by `crux worker start` from `deploy.heartbeat_s`) and then misses
  MISSED_HEARTBEATS of them is set to Crashed, which also frees its deployment slot; `trigger_cycle` then
  starts the next cycle on a live worker.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast

from crux.config import ConfigError
from crux.errors import CruxError

if TYPE_CHECKING:
    from uuid import UUID

    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

P = ParamSpec("P")
R = TypeVar("R")

FLOW_NAME = "cycle"
DEFAULT_POOL = "crux"
# The environment variable a worker sets to its own clone (`crux worker start` does); the pull step reads it.
WORKDIR_ENV = "CRUX_WORKDIR"
PULL_STEPS: list[dict[str, Any]] = [
    {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $" + WORKDIR_ENV + " }}"}}
]
# Seconds a line's slot outlives a dead holder: the flow renews its lease well before; after a machine dies
# the repossessor (every 15 s) frees the slot this long after the last renewal.
LINE_LEASE_S = 60.0
ZOMBIE_AUTOMATION = "crux: crash flow runs whose worker died"
# Heartbeats a running flow may miss before it counts as dead (a busy 2-core box can delay one).
MISSED_HEARTBEATS = 3
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
    heartbeat_s: int = 60

    def __post_init__(self) -> None:
        if self.heartbeat_s < 30:  # Prefect's own floor for PREFECT_FLOWS_HEARTBEAT_FREQUENCY
            raise ConfigError(f"deploy.heartbeat_s: {self.heartbeat_s} is below Prefect's minimum of 30 seconds")
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


def line_limit_name(line: str) -> str:
    return f"crux-line-{line}"


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
    parameters: dict[str, Any] | None = None,
) -> list[RunnerDeployment]:
    """One `cycle-<project>` deployment per project: cron in `timezone`, parameters {"project": project}.

    `enabled=False` registers the schedule inactive: the deployments stay for on-demand and label-triggered
    runs. `flow` defaults to `flows.cycle:cycle`; its entrypoint is a module path, so any worker with this
    repo installed can load it whatever its folder layout. `parameters` are further defaults of every run
    (e.g. {"quick": True} for a test).
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
                parameters={"project": project, **(parameters or {})},
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
    projects: Iterable[str], config: DeployConfig, flow: Flow[..., Any] | None = None
) -> list[RunnerDeployment]:
    """`deployments` with the values of params.yaml `deploy:`."""
    return deployments(
        projects,
        config.schedule_cron,
        config.timezone,
        enabled=config.enabled,
        work_pool=config.work_pool,
        work_queue=config.work_queue,
        working_dir=config.working_dir,
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


def register(
    deployments: Sequence[RunnerDeployment], work_pool: str | None, heartbeat_s: int = DeployConfig.heartbeat_s
) -> list[str]:
    """Create or update the deployments in the configured Prefect API; returns their ids.

    Re-registering replaces the schedules (a changed cron never leaves the old one behind). With
    `work_pool=None` the deployments have no pool: only `serve(deployments)` runs them. With a pool, a
    deployment without a fixed `working_dir` gets PULL_STEPS (it runs in the clone of whichever worker picks
    it up), and the per-line concurrency limits and the crashed-run automation are created or updated.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    if work_pool is not None:
        ensure_work_pool(work_pool)
        ensure_line_limits(str(d.parameters["project"]) for d in deployments)
        ensure_zombie_automation(heartbeat_s)
    ids = []
    for deployment in deployments:
        try:
            # apply() is sync-compatible (typed as "value or coroutine"); called from sync code it returns the id.
            deployment_id = cast("UUID", deployment.apply(work_pool_name=work_pool))
            if work_pool is not None and "working_dir" not in (deployment.job_variables or {}):
                # RunnerDeployment.apply writes pull steps only from a code storage; ours only move into the clone.
                with get_client(sync_client=True) as client:
                    client.update_deployment(deployment_id, DeploymentUpdate(pull_steps=PULL_STEPS))
        except Exception as exc:  # httpx / Prefect API errors: name the deployment and the API
            raise DeployError(f"registering deployment {deployment.name} failed: {exc}") from exc
        ids.append(str(deployment_id))
    return ids


def ensure_line_limits(lines: Iterable[str]) -> list[str]:
    """The global concurrency limit `crux-line-<line>` (1 slot) of every line, created or reset to 1 slot."""
    from prefect import get_client

    names = [line_limit_name(line) for line in lines]
    with get_client(sync_client=True) as client:
        for name in names:
            client.upsert_global_concurrency_limit_by_name(name, limit=1)
    return names


@contextmanager
def line_slot(line: str) -> Iterator[None]:
    """Hold line `line`'s slot (the global concurrency limit `crux-line-<line>`) for the body: a second cycle of
    the line, from any worker or a `crux cycle` against the same server, waits here until the first ends.

    Without the limit on the server (a local ephemeral API, `crux deploy` never ran) Prefect lets the body run
    unguarded — one machine, one run at a time anyway."""
    from prefect.concurrency.sync import concurrency

    with concurrency(line_limit_name(line), occupy=1, lease_duration=LINE_LEASE_S):
        yield


def one_cycle_per_line(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator of the cycle flow's function (first argument: the line): its whole body holds `line_slot`."""

    @functools.wraps(fn)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        line = kwargs["project"] if "project" in kwargs else args[0]
        with line_slot(str(line)):
            return fn(*args, **kwargs)

    return guarded


def ensure_zombie_automation(heartbeat_s: int, missed: int = MISSED_HEARTBEATS) -> str:
    """Prefect's zombie-flow automation: a flow run that sent a heartbeat and then none for MISSED_HEARTBEATS
    periods (its worker or machine died; nothing else would ever end it) is set to Crashed. Returns its id."""
    from datetime import timedelta

    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    finished = [f"prefect.flow-run.{name}" for name in ("Completed", "Failed", "Cancelled", "Crashed")]
    automation = AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description="A running cycle whose worker stopped sending heartbeats is marked Crashed, which frees its "
        "deployment concurrency slot for the next run.",
        trigger=EventTrigger(
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *finished},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=heartbeat_s * missed),
        ),
        actions=[
            ChangeFlowRunState(
                name=None,
                force=False,
                state=StateType.CRASHED,
                message=f"No heartbeat for {heartbeat_s * missed} s: the worker running it died.",
            )
        ],
    )
    with get_client(sync_client=True) as client:
        for old in client.read_automations_by_name(ZOMBIE_AUTOMATION):
            client.delete_automation(old.id)
        return str(client.create_automation(automation))


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

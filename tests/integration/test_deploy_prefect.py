"""Deployments of the cycle against a real (ephemeral) Prefect API: schedules as declared, one run at a time.

A stand-in flow named `cycle` keeps this test independent of the real cycle's imports (torch, DVC).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

pytestmark = pytest.mark.integration

prefect = pytest.importorskip("prefect")

from prefect import flow  # noqa: E402

from flows import deploy  # noqa: E402


@flow(name="cycle")
def stand_in_cycle(project: str, params_path: str = "params.yaml") -> str:
    return project


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    # The default 20 s start-up timeout is tight on 2 cores; analytics off avoids a "database is locked".
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=60):
        yield


def read(name: str):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def test_schedules_are_registered_as_declared(prefect_api: None, tmp_path) -> None:
    built = deploy.deployments(
        ["neu-det", "magnetic-tile"],
        "0 2 * * *",
        "Europe/Berlin",
        work_pool="crux-test",
        work_queue="gpu",
        working_dir=tmp_path,
        flow=stand_in_cycle,
    )
    ids = deploy.register(built, work_pool="crux-test")
    assert len(ids) == 2

    for project in ("neu-det", "magnetic-tile"):
        found = read(f"cycle/cycle-{project}")
        assert found.parameters == {"project": project}
        assert len(found.schedules) == 1
        schedule = found.schedules[0]
        assert schedule.schedule.cron == "0 2 * * *"
        assert schedule.schedule.timezone == "Europe/Berlin"
        assert schedule.active is True
        assert found.work_pool_name == "crux-test"
        assert found.work_queue_name == "gpu"
        assert found.job_variables == {"working_dir": str(tmp_path)}
        assert found.global_concurrency_limit.limit == 1
        assert found.concurrency_options.collision_strategy == "ENQUEUE"
        assert found.entrypoint == f"{stand_in_cycle.fn.__module__}.stand_in_cycle"

    # A changed cron replaces the schedule; disabling keeps the deployment but pauses its schedule.
    deploy.register(
        deploy.deployments(
            ["neu-det"], "30 3 * * 1-5", "UTC", enabled=False, flow=stand_in_cycle, work_pool="crux-test"
        ),
        work_pool="crux-test",
    )
    found = read("cycle/cycle-neu-det")
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in found.schedules] == [
        ("30 3 * * 1-5", "UTC", False)
    ]

    assert deploy.prune(["neu-det"]) == ["cycle-magnetic-tile"]
    with pytest.raises(deploy.DeployError, match="not registered"):
        deploy.active_runs("magnetic-tile")


def test_config_rejects_bad_values() -> None:
    from crux.config import ConfigError, from_mapping

    cfg = from_mapping(deploy.DeployConfig, {"schedule_cron": "15 1 * * *", "timezone": "Europe/Paris"}, "deploy")
    assert cfg.work_pool == "crux" and cfg.enabled
    with pytest.raises(ConfigError, match="cron"):
        from_mapping(deploy.DeployConfig, {"schedule_cron": "nightly"}, "deploy")
    with pytest.raises(ConfigError, match="time zone"):
        from_mapping(deploy.DeployConfig, {"timezone": "Mars/Olympus"}, "deploy")
    with pytest.raises(ConfigError, match="unknown key"):
        from_mapping(deploy.DeployConfig, {"cron": "0 2 * * *"}, "deploy")
    with pytest.raises(ConfigError, match="heartbeat_s: 10"):
        from_mapping(deploy.DeployConfig, {"heartbeat_s": 10}, "deploy")


def test_pool_deployments_run_in_the_workers_clone_one_per_line(prefect_api: None) -> None:
    """Without deploy.working_dir a deployment carries the CRUX_WORKDIR pull step (tests/integration/
    test_workers_topology.py runs it on two workers); register creates each line's limit and the crashed-run
    automation, and registering again leaves one of each."""
    from prefect import get_client

    for _ in range(2):
        deploy.register(
            deploy.deployments(["pa", "pb"], "0 2 * * *", "UTC", flow=stand_in_cycle, work_pool="crux-test"),
            work_pool="crux-test",
            heartbeat_s=45,
        )
    found = read("cycle/cycle-pa")
    assert found.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $CRUX_WORKDIR }}"}}
    ]
    assert not found.job_variables
    with get_client(sync_client=True) as client:
        limits = {line: client.read_global_concurrency_limit_by_name(f"crux-line-{line}") for line in ("pa", "pb")}
        (automation,) = client.read_automations_by_name(deploy.ZOMBIE_AUTOMATION)
    assert all(limit.limit == 1 and limit.active for limit in limits.values())
    assert automation.trigger.within.total_seconds() == 45 * deploy.MISSED_HEARTBEATS
    assert automation.actions[0].state.value == "CRASHED"

    # The cycle's body holds the line's slot: while it runs, nobody else gets it.
    from prefect.concurrency.sync import concurrency

    @deploy.one_cycle_per_line
    def body(project: str) -> bool:
        try:
            with concurrency("crux-line-pa", timeout_seconds=1, strict=True):
                return False
        except TimeoutError:
            return True

    assert body("pa") is True
    with concurrency("crux-line-pa", timeout_seconds=5, strict=True):  # released after the body
        pass


def test_trigger_cycle_refuses_while_a_run_is_queued(prefect_api: None) -> None:
    from prefect import get_client
    from prefect.client.schemas.objects import StateType

    deploy.register(
        deploy.deployments(["tile"], "0 2 * * *", "UTC", flow=stand_in_cycle, work_pool="crux-test"),
        work_pool="crux-test",
    )
    deployment = read("cycle/cycle-tile")
    with get_client(sync_client=True) as client:
        # The scheduler's own endpoint: runs for the next nightly slots, flagged auto-scheduled. They lie
        # hours ahead and must not block a run now.
        response = client.request(
            "POST",
            "/deployments/{id}/schedule",
            path_params={"id": deployment.id},
            json={"start_time": (datetime.now(UTC) + timedelta(hours=1)).isoformat(), "max_runs": 2},
        )
        response.raise_for_status()
        ahead = client.read_flow_runs()
    assert ahead and all(r.auto_scheduled and r.state.type == StateType.SCHEDULED for r in ahead)
    assert deploy.active_runs("tile") == []

    first = deploy.trigger_cycle("tile", reason="labels")
    assert first is not None
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(first)
    assert run.state.type == StateType.SCHEDULED  # no worker in this test: it waits, as when the pool is busy
    assert run.parameters == {"project": "tile"}
    assert "labels" in run.tags

    # Never two cycles of one project: a second trigger while the first waits or runs starts nothing.
    assert deploy.trigger_cycle("tile") is None
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(first, prefect.states.Running(), force=True)
    assert deploy.trigger_cycle("tile") is None
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(first, prefect.states.Completed(), force=True)
    second = deploy.trigger_cycle("tile")
    assert second is not None and second != first


def test_a_burst_of_webhooks_starts_exactly_one_flow_run(prefect_api: None) -> None:
    """The receiver wired to trigger_cycle. No debounce here, so it is Prefect's view of the queued run that
    refuses the later triggers: both layers hold on their own."""
    from fastapi.testclient import TestClient
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from crux.loop.trigger import WEBHOOK_PATH, ReceiverSettings, TriggerConfig, create_receiver

    deploy.register(
        deploy.deployments(["burst"], "0 2 * * *", "UTC", enabled=False, flow=stand_in_cycle, work_pool="crux-test"),
        work_pool="crux-test",
    )
    answers: list[str | None] = []

    def trigger(project: str) -> str | None:
        answers.append(deploy.trigger_cycle(project, reason="labels"))
        return answers[-1]

    secret = "burst-secret-0123456789abcdef"
    settings = ReceiverSettings(secret=secret, trigger=TriggerConfig(min_new_labels=5, debounce_s=0), recheck_s=0)
    client = TestClient(create_receiver(settings, trigger, lambda: {11: "burst"}))
    payload = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "project": 11}, "project": {"id": 11}}
    for _ in range(50):
        assert client.post(WEBHOOK_PATH, json=payload, headers={"Authorization": f"Bearer {secret}"}).status_code == 200

    started = [a for a in answers if a is not None]
    assert len(started) == 1 and len(answers) > 1  # later attempts were refused, not started
    deployment = read("cycle/cycle-burst")
    with get_client(sync_client=True) as prefect_client:
        runs = prefect_client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    assert [str(r.id) for r in runs] == started


FLOW_MODULE = """
from pathlib import Path
from prefect import flow

@flow(name="cycle")
def cycle(project: str, params_path: str = "params.yaml") -> str:
    Path("ran.txt").write_text(f"{project} {Path(params_path).resolve()}")
    return project
"""


def test_a_process_worker_runs_the_triggered_cycle_in_the_working_dir(
    prefect_api: None, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scale-out path: a worker elsewhere imports the flow by module path and runs it in deploy.working_dir
    (where params.yaml lives on that machine)."""
    import importlib
    import subprocess
    import sys

    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    code, workdir = tmp_path / "code", tmp_path / "work"
    code.mkdir()
    workdir.mkdir()
    (code / "crux_stand_in_flows.py").write_text(FLOW_MODULE)
    monkeypatch.syspath_prepend(str(code))
    module = importlib.import_module("crux_stand_in_flows")

    built = deploy.deployments(["line"], "0 2 * * *", "UTC", flow=module.cycle, work_pool="gpu", working_dir=workdir)
    deploy.register(built, work_pool="gpu")
    run_id = deploy.trigger_cycle("line")
    assert run_id is not None

    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(code))
    prefect_cli = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpu", "--run-once"]
    worker = subprocess.run(prefect_cli, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    assert state.is_completed(), worker.stdout[-3000:] + worker.stderr[-3000:]
    assert (workdir / "ran.txt").read_text() == f"line {workdir / 'params.yaml'}"

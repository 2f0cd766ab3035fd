"""Several machines on loopback: a real Prefect server, one process pool, two `crux worker start` workers in two
clones of the project (nothing shared but the Prefect API — and, for the full cycle, a bare Git remote and S3).

- `test_two_workers_share_the_lines_and_a_dead_worker_loses_nothing`: the orchestration alone, with a stand-in cycle
  (same flow name, same per-line concurrency decorator): each run executes in the clone of the worker that picked it
  up, two lines run at once on two workers, a line's slot is held across processes, a worker killed mid-run has its
  run marked Crashed by the automation `crux deploy` creates, the line's slot comes back, and the next cycle of the
  line completes on the other worker.
- `test_two_lines_on_two_workers_with_git_and_s3`: the real cycle (Label Studio, DVC on S3, Git remote, model remote
  on S3, quick training profile) on the same topology.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from topology import Worker, prefect_server, start_worker, wait_for, wait_state

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POOL = "crux-topology"
HEARTBEAT_S = 30  # Prefect's minimum: the crashed-run automation fires after 2 missed heartbeats in these tests

STAND_IN = """
import os, time
from pathlib import Path
from prefect import flow
from flows.deploy import one_cycle_per_line

@flow(name="cycle")
@one_cycle_per_line
def cycle(project: str, params_path: str = "params.yaml") -> str:
    barrier = Path(os.environ["TOPOLOGY_BARRIER"])
    n = len(list(barrier.glob(f"{project}-*.started")))
    # The working directory is the worker's clone (the pull step); params.yaml is read from there.
    Path(f"ran-{project}-{n}").write_text(f"{Path.cwd()}\\n{Path(params_path).resolve()}")
    (barrier / f"{project}-{n}.started").write_text(str(Path.cwd()))
    deadline = time.monotonic() + 300
    while not (barrier / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    return str(Path.cwd())
"""


@pytest.fixture
def prefect_api(tmp_path: Path) -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with prefect_server(tmp_path / "prefect-server") as url, temporary_settings({PREFECT_API_URL: url}):
        yield url


def clone_params(clone: Path, lines: list[str]) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["deploy"].update(work_pool=POOL, heartbeat_s=HEARTBEAT_S, working_dir=None)
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def worker_env(api: str, clone: Path, *paths: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (*paths, REPO))
    env["PREFECT_HOME"] = str(clone / ".crux" / "prefect")  # each machine its own Prefect home
    return env


def slot_is_free(line: str) -> bool:
    from prefect.concurrency.sync import concurrency

    from flows.deploy import line_limit_name

    try:
        with concurrency(line_limit_name(line), timeout_seconds=2, strict=True):
            return True
    except TimeoutError:
        return False


def test_two_workers_share_the_lines_and_a_dead_worker_loses_nothing(prefect_api: str, tmp_path: Path) -> None:
    import importlib

    from flows import deploy

    code, barrier = tmp_path / "code", tmp_path / "barrier"
    code.mkdir()
    barrier.mkdir()
    (code / "crux_topology_flows.py").write_text(STAND_IN)
    sys.path.insert(0, str(code))
    try:
        stand_in = importlib.import_module("crux_topology_flows").cycle
    finally:
        sys.path.remove(str(code))
    lines = ["line-a", "line-b"]
    built = deploy.deployments(lines, "0 2 * * *", "UTC", enabled=False, work_pool=POOL, flow=stand_in)
    deploy.register(built, work_pool=POOL, heartbeat_s=HEARTBEAT_S)
    deploy.ensure_zombie_automation(HEARTBEAT_S, missed=2)
    found = flow_run_deployment("cycle/cycle-line-a")
    assert found.pull_steps == deploy.PULL_STEPS and not found.job_variables

    workers: list[Worker] = []
    try:
        for name in ("machine-1", "machine-2"):
            clone = tmp_path / name / "project"
            clone.mkdir(parents=True)
            clone_params(clone, lines)
            env = worker_env(prefect_api, clone, code, TOPOLOGY_BARRIER=str(barrier))
            workers.append(start_worker(name, clone, env))

        # Two lines at once: both runs reach their barrier before either is released, one per worker.
        first = {line: deploy.trigger_cycle(line) for line in lines}
        assert all(first.values())
        started = wait_for("both lines running", lambda: len(list(barrier.glob("*.started"))) == 2, 240, workers) and {
            p.stem: p.read_text() for p in barrier.glob("*.started")
        }
        assert sorted(started.values()) == sorted(str(w.clone) for w in workers)  # one each, in its own clone
        assert not slot_is_free("line-a")  # the running cycle holds its line's slot across processes
        assert deploy.trigger_cycle("line-a") is None  # and a second trigger starts nothing
        (barrier / "release").touch()
        for run_id in first.values():
            assert wait_state(run_id, {"COMPLETED"}, 120, workers)
        for worker in workers:
            (ran,) = worker.clone.glob("ran-*-0")
            assert ran.read_text().splitlines() == [str(worker.clone), str(worker.clone / "params.yaml")]

        # A machine dies mid-cycle: its run is marked Crashed by Prefect, the line's slot comes back, and the next
        # cycle of the line completes on the other machine.
        (barrier / "release").unlink()
        doomed = deploy.trigger_cycle("line-a")
        assert doomed
        wait_for("the third run", lambda: len(list(barrier.glob("line-a-*.started"))) == 2, 120, workers)
        clone = Path((barrier / "line-a-1.started").read_text())
        victim = next(w for w in workers if w.clone == clone)
        survivor = next(w for w in workers if w is not victim)
        victim.kill()
        crashed = wait_state(doomed, {"CRASHED"}, HEARTBEAT_S * 2 + 90, [survivor])
        assert "heartbeat" in (crashed.state.message or "")
        wait_for("line-a's slot", lambda: slot_is_free("line-a"), deploy.LINE_LEASE_S + 30)
        (barrier / "release").touch()
        after = deploy.trigger_cycle("line-a")
        assert after
        assert wait_state(after, {"COMPLETED"}, 180, [survivor])
        assert (survivor.clone / "ran-line-a-2").is_file()
    finally:
        for worker in workers:
            worker.stop()


def flow_run_deployment(name: str):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)

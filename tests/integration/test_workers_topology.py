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
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from topology import Worker, flow_run, prefect_server, start_worker, wait_for, wait_state

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
        time.sleep(deploy.LINE_LEASE_S + 10)  # past the first lease: the running flow keeps renewing it
        assert not slot_is_free("line-a")
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


LINES = ("wt-a", "wt-b")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def seed_remote(tmp_path: Path, dvc_url: str, models_url: str, endpoint: str) -> Path:
    """The project as the plant's Git server holds it: params.yaml with two tiny lines, dvc.yaml, the DVC remote on S3
    (credentials only in each machine's environment), pushed to a bare repository."""
    from crux.data import versioning

    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    seed = tmp_path / "seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "main")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["labelstudio"]["projects"] = {line: params["labelstudio"]["projects"]["neu-det"] for line in LINES}
    params["pipeline"]["lines"] = list(LINES)
    params["pipeline"]["overrides"] = {}
    params["gate"]["lines"] = {}
    params["gate"]["tolerance"] = 1.0  # quick-profile models are noise: let every candidate through
    params["gate"]["min"] = {"detect": {"map50": 0.0}}
    params["export"]["parity_images"] = 4
    params["edge"]["remote"] = models_url
    params["git"].update(remote=str(bare), branch="main")
    params["deploy"].update(work_pool=POOL, heartbeat_s=HEARTBEAT_S, working_dir=None)
    (seed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / "dvc.yaml", seed / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", seed / ".gitignore")
    shutil.copytree(REPO / "crux", seed / "crux", ignore=shutil.ignore_patterns("__pycache__"))
    versioning.init_repo(seed, "data")
    versioning.set_remote(seed, dvc_url, options={"endpointurl": endpoint})
    git(seed, "add", ".")
    git(seed, "-c", "user.email=seed@crux.local", "-c", "user.name=seed", "commit", "-qm", "init")
    git(seed, "push", "-q", str(bare), "main")
    return bare


def machine(bare: Path, root: Path, keys: Path) -> Path:
    """A worker machine: its own clone, Git identity, signing key files, empty DVC cache and .crux/."""
    clone = root / "project"
    root.mkdir()
    subprocess.run(["git", "clone", "-q", str(bare), str(clone)], check=True, capture_output=True)
    git(clone, "config", "user.email", f"{root.name}@crux.local")
    git(clone, "config", "user.name", root.name)
    shutil.copytree(keys, clone / ".crux" / "keys")
    return clone


def running_task(run_id: str, prefix: str) -> bool:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return any(t.name.startswith(prefix) and t.state and t.state.type.value == "RUNNING" for t in tasks)


def check_remote(bare: Path, tmp_path: Path) -> list[str]:
    """The invariants: linear history, and every line version in it readable from S3 by a clone with an empty cache.
    Returns the subjects, newest first."""
    from crux.data import versioning
    from crux.data.manifest import read_manifest

    assert git(bare, "rev-list", "--min-parents=2", "main") == ""  # linear: rebases, never merges or forces
    check = tmp_path / f"check-{len(list(tmp_path.glob('check-*')))}"
    subprocess.run(["git", "clone", "-q", str(bare), str(check)], check=True, capture_output=True)
    for commit in git(bare, "rev-list", "main").split():
        for line in LINES:
            if versioning.version_file_at(check, commit, f"data/{line}") is None:
                continue
            out = tmp_path / f"{check.name}-data" / commit / line
            dest = versioning.materialize(check, commit, out, f"data/{line}")
            items = read_manifest(dest / "manifest.jsonl")
            assert items and all((dest / i.image).is_file() for i in items), (commit, line)
    return git(bare, "log", "--format=%s", "main").splitlines()


def releases(models_url: str, line: str, keys: Path) -> list[int]:
    """Published versions of `line`; each must verify against the signing key (a half-written release would not)."""
    from crux.ship.listing import list_models
    from crux.ship.signing import load_public_keys

    history = list_models(models_url, line, load_public_keys([keys / "publish.pub"]))
    assert all(v["verified"] for v in history["versions"]), history
    return [v["version"] for v in history["versions"]]


def relabel_one(ls_client, project_id: int) -> None:
    task = next(iter(ls_client.tasks.list(project=project_id, fields="all")))
    annotation = task.annotations[0]
    annotation = annotation if isinstance(annotation, dict) else annotation.dict()
    result = annotation["result"]
    old = result[0]["value"]["rectanglelabels"][0]
    result[0]["value"]["rectanglelabels"] = ["crazing" if old == "scratches" else "scratches"]
    ls_client.annotations.update(id=annotation["id"], result=result)


def test_two_lines_on_two_workers_with_git_and_s3(
    prefect_api: str,
    moto_s3: str,
    ls_server: tuple,
    ls_client,
    ls_files_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conftest import copy_neu_subset, neu_stems, new_bucket

    from crux.config import ProjectSpec, from_mapping
    from crux.label import importer
    from crux.label.projects import sync_project
    from crux.ship.signing import init_keys
    from flows import deploy
    from flows.cycle import cycle

    settings, credentials = ls_server
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "site-cache"))
    dvc_url, models_url = f"s3://{new_bucket('crux-dvc')}/dvc", f"s3://{new_bucket('crux-models')}/models"
    bare = seed_remote(tmp_path, dvc_url, models_url, moto_s3)
    keys = tmp_path / "keys"
    init_keys(keys / "publish.key", keys / "publish.pub")

    declared = yaml.safe_load((REPO / "params.yaml").read_text())["labelstudio"]["projects"]["neu-det"]
    spec = from_mapping(ProjectSpec, declared, "p")
    project_ids = {}
    for line in LINES:
        project_ids[line] = sync_project(ls_client, line, spec).project_id
        source = copy_neu_subset(ls_files_root / line, neu_stems(3))
        items = importer.scan_source(str(source), spec, "yolo")
        importer.import_items(ls_client, project_ids[line], spec, items, ls_files_root)

    built = deploy.deployments(
        LINES, "0 2 * * *", "UTC", enabled=False, work_pool=POOL, flow=cycle, parameters={"quick": True}
    )
    deploy.register(built, work_pool=POOL, heartbeat_s=HEARTBEAT_S)
    deploy.ensure_zombie_automation(HEARTBEAT_S, missed=2)

    workers: list[Worker] = []
    try:
        for name in ("machine-1", "machine-2"):
            clone = machine(bare, tmp_path / name, keys)
            ls_env = {"CRUX_LS_URL": settings.url, "CRUX_LS_TOKEN": credentials.token, "OMP_NUM_THREADS": "1"}
            env = worker_env(prefect_api, clone, DVC_SITE_CACHE_DIR=str(tmp_path / name / "dvc-site"), **ls_env)
            workers.append(start_worker(name, clone, env))

        # Two lines at once, one per worker: both versions reach the remote, both models are published.
        first = {line: deploy.trigger_cycle(line) for line in LINES}
        assert all(first.values())
        both_running = lambda: all(flow_run(r).state.is_running() for r in first.values())  # noqa: E731
        wait_for("both cycles running at once", both_running, 300, workers)
        for run_id in first.values():
            wait_state(run_id, {"COMPLETED"}, 900, workers)
        subjects = check_remote(bare, tmp_path)
        assert sorted(s.split(":")[0] for s in subjects if s.startswith("data(")) == ["data(wt-a)", "data(wt-b)"]
        authors = git(bare, "log", "--format=%an %s", "main").splitlines()
        assert sorted(a.split()[0] for a in authors if " data(" in a) == ["machine-1", "machine-2"]  # one each
        assert releases(models_url, "wt-a", keys) == [1] and releases(models_url, "wt-b", keys) == [1]

        # wt-a is relabelled and the machine training it dies: nothing of that cycle reaches Git or the model
        # remote, Prefect marks the run Crashed, and the next cycle of wt-a completes on the other machine.
        relabel_one(ls_client, project_ids["wt-a"])
        head = git(bare, "rev-parse", "main").strip()
        doomed = deploy.trigger_cycle("wt-a")
        assert doomed
        wait_for("the relabelled cycle training", lambda: running_task(doomed, "reproduce_task"), 300, workers)
        # The machine training it holds the new version of wt-a, committed in its clone and not pushed.
        victim = next(w for w in workers if git(w.clone, "log", "-1", "--format=%s").startswith("data(wt-a)"))
        survivor = next(w for w in workers if w is not victim)
        victim.kill()
        crashed = wait_state(doomed, {"CRASHED"}, HEARTBEAT_S * 2 + 120, [survivor])
        assert "heartbeat" in (crashed.state.message or "")
        assert git(bare, "rev-parse", "main").strip() == head  # no half-written version in the remote
        check_remote(bare, tmp_path)
        assert releases(models_url, "wt-a", keys) == [1]  # no partial release

        after = deploy.trigger_cycle("wt-a")
        assert after
        wait_state(after, {"COMPLETED"}, 900, [survivor])
        subjects = check_remote(bare, tmp_path)
        new = git(bare, "log", "--format=%an %s", f"{head}..main").splitlines()
        assert any(a.startswith(f"{survivor.name} data(wt-a)") for a in new), new
        assert all(a.startswith(f"{survivor.name} ") for a in new), new
        # On top of the history the remote had: nothing rewritten.
        assert subjects[len(new) :] == git(bare, "log", "--format=%s", head).splitlines()
        assert releases(models_url, "wt-a", keys) == [1, 2]
    finally:
        for worker in workers:
            worker.stop()

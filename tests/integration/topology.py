"""Support for the several-machines tests: a real `prefect server start`, `crux worker start` workers in their own
clones (each its own process tree, killed like a machine that loses power), and waits on flow-run states."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crux.collect.ingest_server import free_port

CRUX = [sys.executable, "-m", "crux.cli"]


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """`prefect server start` on loopback with its own PREFECT_HOME (SQLite there); yields the API URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(
        os.environ,
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        # The repossessor frees expired concurrency leases; every 5 s keeps the test's waits short.
        PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="5",
    )
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start: {(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        kill_tree(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid, signal.SIGKILL)
        log.close()


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int, sig: int) -> None:
    """Signal `pid` and every process under it, each by its id. Prefect starts each flow run in a process group of
    its own, so a group kill would leave the run alive: a dead machine takes the whole tree."""
    for target in [pid, *descendants(pid)]:
        with suppress(ProcessLookupError):
            os.kill(target, sig)


@dataclass
class Worker:
    name: str
    clone: Path
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """Power loss: SIGKILL the worker and every flow-run process it started."""
        kill_tree(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            kill_tree(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def start_worker(name: str, clone: Path, env: dict[str, str]) -> Worker:
    """`crux worker start` in `clone` (one cycle at a time, as a one-GPU machine)."""
    log = clone.parent / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*CRUX, "worker", "start", "--name", name, "--limit", "1"],
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Worker(name, clone, process, log)


def flow_run(run_id: str) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def wait_for(what: str, check: Callable[[], Any], timeout: float, workers: list[Worker] = ()) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name}\n{w.output()}" for w in workers)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")
        time.sleep(1)


def wait_state(run_id: str, states: set[str], timeout: float, workers: list[Worker] = ()) -> Any:
    def reached() -> Any:
        run = flow_run(run_id)
        return run if run.state and run.state.type.value in states else None

    return wait_for(f"flow run {run_id} in {sorted(states)}", reached, timeout, workers)

"""Running a command in a child process and SIGKILLing it at a chosen moment (the fault-injection tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_and_kill(script: str, delay: float | None, run_timeout: float = 120.0) -> tuple[bool, float]:
    """Run `script`; SIGKILL it `delay` s after it says `go` (None: let it finish, within `run_timeout`).
    Returns (finished, seconds after go)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if line != b"go\n":
            proc.wait(60)
            raise AssertionError(f"child failed before go: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        t0 = time.monotonic()
        try:
            rc = proc.wait(run_timeout if delay is None else delay)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return False, time.monotonic() - t0
        if rc != 0:
            raise AssertionError(f"child failed (rc {rc}): {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        return True, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

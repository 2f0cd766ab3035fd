"""Label-triggered cycles: a small receiver of Label Studio webhooks that starts the cycle deployment.

Self-hosted Prefect has no webhooks (a Prefect Cloud feature), so Label Studio posts to this FastAPI app
instead. It checks a shared secret on every call, counts label changes per CRUX project and calls
`trigger(project)` once `trigger.min_new_labels` is reached.

Guarantees (all in `LabelCounter`, which is thread-safe and takes an injectable clock):
- at most one `trigger` call in flight per project, and none within `debounce_s` of the previous call,
  so a burst of webhooks starts exactly one run;
- the counter drops the labels a started run covers; when `trigger` returns None (a cycle of that
  project is already scheduled or running) or fails, nothing is dropped and the next attempt waits
  for the debounce to pass;
- labels left over after the debounce start the next run on their own (a periodic re-check), so a
  burst that ends inside the debounce window is not forgotten until the nightly schedule.

Label Studio sends webhooks synchronously inside the annotator's request with a 1 s timeout
(WEBHOOK_TIMEOUT) and never retries, so the handler answers at once and `trigger` runs after the
response. A missed webhook costs at most a delay: the scheduled cycle picks the labels up.
"""

# No `from __future__ import annotations`: FastAPI resolves endpoint annotations at runtime, and the
# endpoints close over names imported inside `create_receiver`.

import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crux.config import ConfigError
from crux.errors import CruxError
from crux.label.webhook_registration import authorization_header

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/labelstudio"
# A TASKS_CREATED batch is up to 5000 tasks (WEBHOOK_BATCH_SIZE) of ~0.6 KiB each, plus the project.
MAX_BODY_BYTES = 16 * 1024 * 1024
MIN_SECRET_CHARS = 16

Trigger = Callable[[str], "str | None"]
ProjectResolver = Callable[[], Mapping[int, str]]


class WebhookError(CruxError, RuntimeError):
    """The receiver cannot start (bad secret, unreadable secret file)."""


@dataclass(frozen=True)
class TriggerConfig:
    """params.yaml `trigger:` — when label changes start a cycle."""

    min_new_labels: int = 20
    debounce_s: float = 600.0

    def __post_init__(self) -> None:
        if self.min_new_labels < 1:
            raise ConfigError(f"trigger.min_new_labels: must be >= 1, got {self.min_new_labels}")
        if self.debounce_s < 0:
            raise ConfigError(f"trigger.debounce_s: must be >= 0, got {self.debounce_s}")


@dataclass(frozen=True)
class WebhooksConfig:
    """params.yaml `webhooks:` — where the receiver listens and the URL Label Studio posts to."""

    host: str = "127.0.0.1"
    port: int = 8790
    # What Label Studio posts to; None = http://<host>:<port>/webhooks/labelstudio (same machine).
    public_url: str | None = None
    # Shared secret, generated on first use (mode 0600) unless CRUX_WEBHOOK_SECRET is set.
    secret_file: Path = Path(".crux/webhooks/secret")
    # Seconds between refreshes of the Label Studio project id -> CRUX name map on unknown ids.
    refresh_s: float = 30.0
    # Seconds between re-checks of leftover counts once a debounce window has passed; 0 = off.
    recheck_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"webhooks.port: {self.port} is not a TCP port")
        if self.refresh_s < 0 or self.recheck_s < 0:
            raise ConfigError("webhooks.refresh_s and webhooks.recheck_s must be >= 0")
        if self.public_url is not None and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError(f"webhooks.public_url: {self.public_url!r} is not an http(s) URL")

    @property
    def url(self) -> str:
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}{WEBHOOK_PATH}"


@dataclass(frozen=True)
class ReceiverSettings:
    """Everything `create_receiver` needs; the secret never appears in a repr or a log line."""

    secret: str = field(repr=False)
    trigger: TriggerConfig = field(default_factory=TriggerConfig)
    refresh_s: float = 30.0
    recheck_s: float = 30.0

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_CHARS:
            raise WebhookError(f"the webhook secret must have at least {MIN_SECRET_CHARS} characters")

    @classmethod
    def from_config(cls, config: WebhooksConfig, trigger: TriggerConfig, secret: str) -> "ReceiverSettings":
        return cls(secret=secret, trigger=trigger, refresh_s=config.refresh_s, recheck_s=config.recheck_s)


def load_or_create_secret(path: Path) -> str:
    """The shared secret stored at `path`, created (random, mode 0600) on first use."""
    if path.exists():
        secret = path.read_text().strip()
        if len(secret) < MIN_SECRET_CHARS:
            raise WebhookError(f"{path}: the webhook secret is shorter than {MIN_SECRET_CHARS} characters")
        return secret
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    # O_EXCL: two processes creating it at once must not end up with different secrets.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_or_create_secret(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


# --------------------------------------------------------------------------------------------------
# Counting and debouncing (no HTTP here: unit-testable with a fake clock)


@dataclass
class _ProjectState:
    pending: int = 0
    last_call: float | None = None
    in_flight: bool = False
    runs_started: int = 0
    last_run_id: str | None = None


class LabelCounter:
    """Per-project label counts; decides when `trigger` may be called, and calls it."""

    def __init__(self, config: TriggerConfig, trigger: Trigger, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._trigger = trigger
        self._clock = clock
        self._lock = threading.Lock()
        self._projects: dict[str, _ProjectState] = {}

    def add(self, project: str, labels: int) -> int | None:
        """Count `labels` changes; return a claim (the count the run will cover) when a trigger is due.

        The caller passes a claim to `fire`; between the two the project counts as in flight, so
        concurrent callers never claim the same project twice.
        """
        with self._lock:
            state = self._projects.setdefault(project, _ProjectState())
            state.pending += max(labels, 0)
            return self._claim(state)

    def due(self) -> list[tuple[str, int]]:
        """Claims for every project whose leftover count may trigger now (the periodic re-check)."""
        with self._lock:
            claims = [(name, self._claim(state)) for name, state in self._projects.items()]
        return [(name, claim) for name, claim in claims if claim is not None]

    def _claim(self, state: _ProjectState) -> int | None:
        if state.in_flight or state.pending < self._config.min_new_labels:
            return None
        now = self._clock()
        if state.last_call is not None and now - state.last_call < self._config.debounce_s:
            return None
        state.in_flight = True
        state.last_call = now
        return state.pending

    def fire(self, project: str, claim: int) -> str | None:
        """Call `trigger` for a claimed project (outside the lock: it talks to the Prefect API)."""
        try:
            run_id = self._trigger(project)
        except Exception:
            # A Prefect API outage must not kill the receiver; the count stays for the next attempt.
            log.exception("trigger for project %s failed; will retry after the debounce", project)
            run_id = None
        with self._lock:
            state = self._projects[project]
            state.in_flight = False
            if run_id is not None:
                # Labels that arrived during the call may postdate the run's snapshot: keep them.
                state.pending = max(state.pending - claim, 0)
                state.runs_started += 1
                state.last_run_id = run_id
        if run_id is None:
            log.info("project %s: no run started (one is already scheduled or running)", project)
        else:
            log.info("project %s: started cycle run %s after %d label change(s)", project, run_id, claim)
        return run_id

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {
                name: {
                    "pending": s.pending,
                    "in_flight": s.in_flight,
                    "runs_started": s.runs_started,
                    "last_run_id": s.last_run_id,
                }
                for name, s in self._projects.items()
            }


class ProjectMap:
    """Label Studio project id -> CRUX project name, refreshed on an unknown id at most every `refresh_s`."""

    def __init__(self, resolve: ProjectResolver, refresh_s: float, clock: Callable[[], float]) -> None:
        self._resolve = resolve
        self._refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._names: dict[int, str] = {}
        self._refreshed_at: float | None = None
        self.refresh()

    def refresh(self) -> None:
        try:
            names = {int(k): v for k, v in self._resolve().items()}
        except Exception:
            # Label Studio restarting: keep the old map, try again on the next unknown id.
            log.exception("could not refresh the Label Studio project map")
            names = None
        with self._lock:
            if names is not None:
                self._names = names
            self._refreshed_at = self._clock()

    def name(self, project_id: int) -> str | None:
        with self._lock:
            name = self._names.get(project_id)
            stale = self._refreshed_at is None or self._clock() - self._refreshed_at >= self._refresh_s
        if name is None and stale:
            self.refresh()
            with self._lock:
                name = self._names.get(project_id)
        return name


# --------------------------------------------------------------------------------------------------
# Payloads (shapes checked against Label Studio 1.23: webhooks/models.py WebhookAction.ACTIONS)


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def project_id_of(payload: Mapping[str, Any]) -> int | None:
    """The Label Studio project a webhook is about: `project.id`, else the annotation's or task's `project`."""
    project = payload.get("project")
    if isinstance(project, Mapping) and isinstance(project_id := project.get("id"), int):
        return project_id
    for key in ("annotation", "tasks"):
        for item in _as_list(payload.get(key)):
            if isinstance(item, Mapping) and isinstance(project_id := item.get("project"), int):
                return project_id
    return None


def label_changes(payload: Mapping[str, Any]) -> int:
    """How many label changes a webhook reports; 0 for actions that do not change the dataset."""
    action = payload.get("action")
    if action in ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED"):
        # A skipped task (was_cancelled) is an annotation without a label: the export leaves it out.
        return sum(
            1 for a in _as_list(payload.get("annotation")) if isinstance(a, Mapping) and not a.get("was_cancelled")
        )
    if action == "ANNOTATIONS_DELETED":
        return len(_as_list(payload.get("annotations")))
    if action == "TASKS_CREATED":
        total = 0
        for task in _as_list(payload.get("tasks")):
            if isinstance(task, Mapping) and isinstance(task.get("total_annotations"), int):
                total += task["total_annotations"]
        return total
    return 0


# --------------------------------------------------------------------------------------------------
# The FastAPI app


def create_receiver(
    settings: ReceiverSettings,
    trigger: Trigger,
    projects: ProjectResolver,
    clock: Callable[[], float] = time.monotonic,
) -> "FastAPI":
    """The webhook receiver. `projects()` maps Label Studio project ids to CRUX names (read at start and
    again, rate-limited, when an unknown id arrives); `trigger(project)` starts a cycle and returns its
    flow-run id, or None when one is already scheduled or running."""
    import asyncio
    import contextlib
    import json

    from fastapi import BackgroundTasks, FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    counter = LabelCounter(settings.trigger, trigger, clock)
    names = ProjectMap(projects, settings.refresh_s, clock)
    expected = authorization_header(settings.secret).encode()

    async def recheck_loop() -> None:
        while True:
            await asyncio.sleep(settings.recheck_s)
            for project, claim in counter.due():
                await asyncio.to_thread(counter.fire, project, claim)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        task = asyncio.create_task(recheck_loop()) if settings.recheck_s > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="CRUX webhook receiver", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.counter = counter
    app.state.projects = names

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        # Constant time: the comparison must not leak how much of a guessed secret was right.
        return hmac.compare_digest(given, expected)

    def unauthorized() -> JSONResponse:
        return JSONResponse({"detail": "missing or wrong secret"}, 401, headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/status")
    def status(request: Request) -> Any:
        if not authorized(request):
            return unauthorized()
        return {"projects": counter.snapshot()}

    def count(payload: Mapping[str, Any]) -> dict[str, Any]:
        project_id = project_id_of(payload)
        name = None if project_id is None else names.name(project_id)
        if name is None:
            # Another team's project on the same Label Studio, or a webhook sent without payload.
            return {"ignored": True, "project_id": project_id}
        labels = label_changes(payload)
        claim = counter.add(name, labels)
        return {"ignored": False, "project": name, "labels": labels, "claim": claim}

    @app.post(WEBHOOK_PATH)
    async def receive(request: Request, background: BackgroundTasks) -> Any:
        # The secret first: nothing of an unauthenticated request is read or counted.
        if not authorized(request):
            return unauthorized()
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"body exceeds {MAX_BODY_BYTES} bytes"}, 413)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"detail": f"body exceeds {MAX_BODY_BYTES} bytes"}, 413)
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"detail": "body is not JSON"}, 400)
        if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
            return JSONResponse({"detail": "expected a Label Studio webhook (a JSON object with `action`)"}, 400)
        # The project map may call Label Studio: keep it off the event loop.
        result = await run_in_threadpool(count, payload)
        claim = result.pop("claim", None)
        if claim is not None:
            # After the response: Label Studio waits at most 1 s and the Prefect API may take longer.
            background.add_task(counter.fire, result["project"], claim)
        return {"action": payload["action"], "triggering": claim is not None, **result}

    return app


def serve(
    settings: ReceiverSettings,
    trigger: Trigger,
    projects: ProjectResolver,
    host: str = "127.0.0.1",
    port: int = 8790,
) -> None:
    """Run the receiver with uvicorn until interrupted. Loopback by default: Label Studio on the same
    machine reaches it; put a TLS reverse proxy in front for any other case (the secret travels in a header)."""
    import uvicorn

    uvicorn.run(create_receiver(settings, trigger, projects), host=host, port=port, log_level="info")

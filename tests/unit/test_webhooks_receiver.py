"""The Label Studio webhook receiver: secret on every call, counting, debounce, one run per burst."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from crux.config import ConfigError, from_mapping
from crux.loop.trigger import (
    WEBHOOK_PATH,
    LabelCounter,
    ReceiverSettings,
    TriggerConfig,
    WebhookError,
    WebhooksConfig,
    create_receiver,
    label_changes,
    load_or_create_secret,
    project_id_of,
)

SECRET = "s" * 32
AUTH = {"Authorization": f"Bearer {SECRET}"}
PROJECTS = {7: "neu-det", 8: "magnetic-tile"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A trigger that records its calls; `answer` is what it returns (None = a run is already active)."""

    def __init__(self, answer: str | None = "run-1", delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, project: str) -> str | None:
        time.sleep(self.delay)
        with self._lock:
            self.calls.append(project)
        return self.answer


def annotation_created(project_id: int = 7, annotation_id: int = 1, cancelled: bool = False) -> dict:
    """The ANNOTATION_CREATED shape Label Studio 1.23 posts (trimmed to the fields the receiver reads)."""
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {
            "id": annotation_id,
            "result": [{"type": "choices", "value": {"choices": ["OK"]}}],
            "was_cancelled": cancelled,
            "task": 1,
            "project": project_id,
        },
        "task": {"id": 1, "project": project_id},
        "project": {"id": project_id, "title": "x", "description": f"crux-project: {PROJECTS.get(project_id)}"},
    }


def make(min_new_labels: int = 5, debounce_s: float = 60.0, trigger=None, projects=None, clock=None):
    trigger = trigger or Recorder()
    clock = clock or FakeClock()
    resolver = projects or (lambda: PROJECTS)
    settings = ReceiverSettings(
        secret=SECRET, trigger=TriggerConfig(min_new_labels=min_new_labels, debounce_s=debounce_s), recheck_s=0
    )
    app = create_receiver(settings, trigger, resolver, clock=clock)
    return TestClient(app), trigger, clock, app


def test_secret_is_checked_on_every_call_and_nothing_is_counted_without_it() -> None:
    client, trigger, _, app = make(min_new_labels=1)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}, {"X-Secret": SECRET}):
        response = client.post(WEBHOOK_PATH, json=annotation_created(), headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    assert trigger.calls == []
    assert app.state.counter.snapshot() == {}
    assert client.get("/status").status_code == 401
    # The right secret on the next call: counted and triggered.
    assert client.post(WEBHOOK_PATH, json=annotation_created(), headers=AUTH).json()["triggering"] is True
    assert trigger.calls == ["neu-det"]
    # /health tells nothing but "up".
    assert client.get("/health").json() == {"status": "ok"}


def test_burst_past_the_threshold_triggers_exactly_one_run() -> None:
    client, trigger, clock, app = make(min_new_labels=5, debounce_s=60)
    answers = [client.post(WEBHOOK_PATH, json=annotation_created(annotation_id=i), headers=AUTH) for i in range(50)]
    assert all(r.status_code == 200 for r in answers)
    assert [r.json()["triggering"] for r in answers].count(True) == 1
    assert answers[4].json()["triggering"] is True  # the 5th label reaches the threshold
    assert trigger.calls == ["neu-det"]
    # The counter reset when the run started: the 45 later labels wait for the debounce to pass.
    assert app.state.counter.snapshot()["neu-det"]["pending"] == 45
    assert app.state.counter.snapshot()["neu-det"]["runs_started"] == 1

    clock.now += 61
    client.post(WEBHOOK_PATH, json=annotation_created(annotation_id=99), headers=AUTH)
    assert trigger.calls == ["neu-det", "neu-det"]
    assert app.state.counter.snapshot()["neu-det"]["pending"] == 0


def test_trigger_returning_none_does_not_reset_and_waits_for_the_debounce() -> None:
    trigger = Recorder(answer=None)  # a cycle of the project is already scheduled or running
    client, trigger, clock, app = make(min_new_labels=3, debounce_s=30, trigger=trigger)
    for i in range(10):
        client.post(WEBHOOK_PATH, json=annotation_created(annotation_id=i), headers=AUTH)
    assert trigger.calls == ["neu-det"]
    assert app.state.counter.snapshot()["neu-det"]["pending"] == 10  # nothing dropped
    clock.now += 29
    client.post(WEBHOOK_PATH, json=annotation_created(annotation_id=11), headers=AUTH)
    assert trigger.calls == ["neu-det"]  # still inside the debounce window
    clock.now += 2
    trigger.answer = "run-2"
    client.post(WEBHOOK_PATH, json=annotation_created(annotation_id=12), headers=AUTH)
    assert trigger.calls == ["neu-det", "neu-det"]
    assert app.state.counter.snapshot()["neu-det"]["pending"] == 0
    assert app.state.counter.snapshot()["neu-det"]["last_run_id"] == "run-2"


def test_a_failing_trigger_is_treated_like_none() -> None:
    def broken(project: str) -> str | None:
        raise RuntimeError("Prefect API unreachable")

    client, _, _, app = make(min_new_labels=1, trigger=broken)
    assert client.post(WEBHOOK_PATH, json=annotation_created(), headers=AUTH).status_code == 200
    state = app.state.counter.snapshot()["neu-det"]
    assert state == {"pending": 1, "in_flight": False, "runs_started": 0, "last_run_id": None}


def test_unknown_project_ids_are_ignored_and_refresh_the_map_at_most_every_refresh_s() -> None:
    calls = []

    def resolver():
        calls.append(1)
        return PROJECTS

    client, trigger, clock, app = make(min_new_labels=1, projects=resolver)
    assert len(calls) == 1  # read at start
    body = client.post(WEBHOOK_PATH, json=annotation_created(project_id=999), headers=AUTH).json()
    assert body["ignored"] is True
    assert trigger.calls == [] and app.state.counter.snapshot() == {}
    # Map read at start: an unknown id refreshes it only once refresh_s (30 s) has passed, then not again soon.
    assert len(calls) == 1
    clock.now += 31
    client.post(WEBHOOK_PATH, json=annotation_created(project_id=999), headers=AUTH)
    client.post(WEBHOOK_PATH, json=annotation_created(project_id=999), headers=AUTH)
    assert len(calls) == 2
    assert trigger.calls == []


def test_a_project_created_after_start_is_found_by_the_refresh() -> None:
    known = dict(PROJECTS)
    client, trigger, clock, _ = make(min_new_labels=1, projects=lambda: dict(known))
    known[42] = "new-line"
    clock.now += 31
    assert (
        client.post(WEBHOOK_PATH, json=annotation_created(project_id=42), headers=AUTH).json()["project"] == "new-line"
    )
    assert trigger.calls == ["new-line"]


def test_projects_count_separately() -> None:
    client, trigger, _, _ = make(min_new_labels=2)
    client.post(WEBHOOK_PATH, json=annotation_created(project_id=7), headers=AUTH)
    client.post(WEBHOOK_PATH, json=annotation_created(project_id=8), headers=AUTH)
    assert trigger.calls == []
    client.post(WEBHOOK_PATH, json=annotation_created(project_id=8), headers=AUTH)
    assert trigger.calls == ["magnetic-tile"]


def test_concurrent_calls_from_threads_trigger_once() -> None:
    trigger = Recorder(delay=0.05)  # a slow Prefect API: calls pile up while the trigger is in flight
    client, trigger, _, app = make(min_new_labels=10, debounce_s=3600, trigger=trigger)
    with client, ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(
            pool.map(
                lambda i: client.post(WEBHOOK_PATH, json=annotation_created(annotation_id=i), headers=AUTH).status_code,
                range(200),
            )
        )
    assert codes == [200] * 200
    assert trigger.calls == ["neu-det"]
    snapshot = app.state.counter.snapshot()["neu-det"]
    assert snapshot["runs_started"] == 1 and snapshot["pending"] == 190


def test_counter_is_thread_safe_without_http() -> None:
    trigger = Recorder(delay=0.01)
    counter = LabelCounter(TriggerConfig(min_new_labels=1, debounce_s=1e9), trigger, FakeClock())

    def hit(_: int) -> None:
        claim = counter.add("neu-det", 1)
        if claim is not None:
            counter.fire("neu-det", claim)

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(hit, range(2000)))
    assert trigger.calls == ["neu-det"]
    assert counter.snapshot()["neu-det"]["runs_started"] == 1


def test_leftover_labels_fire_on_the_recheck_once_the_debounce_passed() -> None:
    clock = FakeClock()
    trigger = Recorder()
    counter = LabelCounter(TriggerConfig(min_new_labels=2, debounce_s=10), trigger, clock)
    counter.fire("neu-det", counter.add("neu-det", 2))
    assert counter.add("neu-det", 5) is None  # inside the debounce window
    assert counter.due() == []
    clock.now += 10
    assert counter.due() == [("neu-det", 5)]
    assert counter.due() == []  # claimed: in flight until fired
    counter.fire("neu-det", 5)
    assert trigger.calls == ["neu-det", "neu-det"]


def test_malformed_bodies_are_refused_after_the_secret() -> None:
    client, trigger, _, _ = make(min_new_labels=1)
    assert client.post(WEBHOOK_PATH, content=b"not json", headers=AUTH).status_code == 400
    assert client.post(WEBHOOK_PATH, json=[1, 2], headers=AUTH).status_code == 400
    assert client.post(WEBHOOK_PATH, content=b"not json", headers={}).status_code == 401
    # Another action, or a webhook sent without payload: acknowledged, nothing counted.
    assert client.post(WEBHOOK_PATH, json={"action": "PROJECT_UPDATED"}, headers=AUTH).json()["ignored"] is True
    assert trigger.calls == []


@pytest.mark.parametrize(
    ("payload", "labels"),
    [
        (annotation_created(), 1),
        (annotation_created(cancelled=True), 0),  # a skipped task carries no label
        ({"action": "ANNOTATION_UPDATED", "annotation": {"id": 1, "project": 7}, "project": {"id": 7}}, 1),
        (
            {
                "action": "ANNOTATIONS_CREATED",
                "annotation": [{"id": 1, "project": 7}, {"id": 2, "project": 7, "was_cancelled": True}, {"id": 3}],
                "task": [{"id": 1}],
                "project": {"id": 7},
            },
            2,
        ),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}, {"id": 2}], "project": {"id": 7}}, 2),
        (
            {
                "action": "TASKS_CREATED",
                "tasks": [
                    {"id": 1, "project": 7, "total_annotations": 0},
                    {"id": 2, "project": 7, "total_annotations": 2},
                ],
                "project": {"id": 7},
            },
            2,
        ),
        ({"action": "TASKS_DELETED", "tasks": [{"id": 1}], "project": {"id": 7}}, 0),
    ],
)
def test_label_changes_per_action(payload: dict, labels: int) -> None:
    assert label_changes(payload) == labels
    assert project_id_of(payload) == 7


def test_project_id_falls_back_to_the_annotation() -> None:
    assert project_id_of({"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "project": 8}}) == 8
    assert project_id_of({"action": "TASKS_CREATED", "tasks": [{"id": 1, "project": 8}]}) == 8
    assert project_id_of({"action": "ANNOTATION_CREATED"}) is None


def test_settings_and_config() -> None:
    with pytest.raises(WebhookError, match="at least 16"):
        ReceiverSettings(secret="short")
    assert SECRET not in repr(ReceiverSettings(secret=SECRET))
    with pytest.raises(ConfigError, match="min_new_labels"):
        from_mapping(TriggerConfig, {"min_new_labels": 0}, "trigger")
    with pytest.raises(ConfigError, match="unknown key"):
        from_mapping(TriggerConfig, {"min_labels": 3}, "trigger")
    cfg = from_mapping(WebhooksConfig, {"port": 9001}, "webhooks")
    assert cfg.url == f"http://127.0.0.1:9001{WEBHOOK_PATH}"
    assert from_mapping(WebhooksConfig, {"public_url": "https://crux.example/hook"}, "webhooks").url.startswith("https")
    with pytest.raises(ConfigError, match="public_url"):
        from_mapping(WebhooksConfig, {"public_url": "ftp://x"}, "webhooks")


def test_secret_file_is_created_once_with_mode_0600(tmp_path) -> None:
    path = tmp_path / "webhooks" / "secret"
    first = load_or_create_secret(path)
    assert len(first) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(path) == first
    path.write_text("short\n")
    with pytest.raises(WebhookError, match="shorter"):
        load_or_create_secret(path)

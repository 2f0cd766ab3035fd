"""A real Label Studio posts webhooks to a real uvicorn receiver; annotations made through the SDK start
exactly one cycle. The session Label Studio runs with SSRF_PROTECTION_ENABLED=false (see conftest), which
is what lets it post to a loopback receiver."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import free_port

from crux.config import ProjectSpec
from crux.label.projects import sync_project
from crux.label.webhook_registration import ensure_webhook, project_names, remove_webhooks
from crux.loop.trigger import WEBHOOK_PATH, ReceiverSettings, TriggerConfig, create_receiver

pytestmark = pytest.mark.integration

SECRET = "integration-secret-0123456789abcdef"
SPEC = ProjectSpec(title="tmp-webhooks", kind="classify", classes={"OK": "#3cb44b", "NG": "#e6194b"}, ok_class="OK")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, project: str) -> str | None:
        self.calls.append(project)
        return f"run-{len(self.calls)}"


@pytest.fixture()
def receiver(ls_client) -> Iterator[tuple[str, Recorder, object]]:
    import uvicorn

    trigger = Recorder()
    settings = ReceiverSettings(
        secret=SECRET, trigger=TriggerConfig(min_new_labels=3, debounce_s=3600), refresh_s=0, recheck_s=0
    )
    app = create_receiver(settings, trigger, lambda: project_names(ls_client))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20)
    yield f"http://127.0.0.1:{port}{WEBHOOK_PATH}", trigger, app
    server.should_exit = True
    thread.join(10)


def wait_for(condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def choice(value: str) -> list[dict]:
    return [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [value]}}]


def test_annotations_through_label_studio_trigger_one_cycle(ls_client, receiver) -> None:
    url, trigger, app = receiver
    # The app was built before the projects existed: the receiver finds them by refreshing its map.
    project_id = sync_project(ls_client, "tmp-webhooks", SPEC).project_id
    other_id = sync_project(ls_client, "tmp-webhooks-b", SPEC).project_id
    try:
        # Idempotent: the same call twice keeps one webhook; a new secret updates it in place.
        first = ensure_webhook(ls_client, project_id, url, "an-old-secret-that-was-rotated")
        assert ensure_webhook(ls_client, project_id, url, SECRET) == first
        assert ensure_webhook(ls_client, project_id, url, SECRET) == first
        hooks = [h for h in ls_client.webhooks.list(project=str(project_id)) if h.project == project_id]
        assert [(h.url, h.headers) for h in hooks] == [(url, {"Authorization": f"Bearer {SECRET}"})]
        # A CRUX project whose webhook carries a wrong secret: refused (401) on every call, never counted.
        ensure_webhook(ls_client, other_id, url, "a-wrong-secret-of-enough-length")

        ids = ls_client.projects.import_tasks(
            id=project_id, request=[{"data": {"image": f"/img/{i}.jpg"}} for i in range(6)], return_task_ids=True
        ).task_ids
        other_task = ls_client.projects.import_tasks(
            id=other_id, request=[{"data": {"image": "/img/x.jpg"}}], return_task_ids=True
        ).task_ids[0]
        for _ in range(3):
            ls_client.annotations.create(id=other_task, result=choice("NG"))
        for task_id in ids[:5]:
            ls_client.annotations.create(id=task_id, result=choice("NG"))

        wait_for(lambda: trigger.calls, 10)
        time.sleep(0.5)  # any second trigger would have happened by now
        assert trigger.calls == ["tmp-webhooks"]
        state = app.state.counter.snapshot()
        assert set(state) == {"tmp-webhooks"}
        # 5 labels: 3 reached the threshold and started the run, 2 arrived later and wait for the debounce.
        assert state["tmp-webhooks"]["pending"] == 2 and state["tmp-webhooks"]["runs_started"] == 1

        # An import with annotations (the bulk path) arrives as TASKS_CREATED and is counted too.
        ls_client.projects.import_tasks(
            id=project_id,
            request=[{"data": {"image": "/img/a.jpg"}, "annotations": [{"result": choice("OK")}]}],
            return_task_ids=True,
        )
        wait_for(lambda: app.state.counter.snapshot()["tmp-webhooks"]["pending"] == 3, 10)
        assert trigger.calls == ["tmp-webhooks"]  # still debounced

        assert remove_webhooks(ls_client, project_id, url) == 1
        assert [h for h in ls_client.webhooks.list(project=str(project_id)) if h.project == project_id] == []
    finally:
        ls_client.projects.delete(id=project_id)
        ls_client.projects.delete(id=other_id)

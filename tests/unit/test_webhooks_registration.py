"""ensure_webhook against a fake `client.webhooks`: idempotent, updates drift, removes duplicates, explains SSRF."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest

from crux.label.webhook_registration import WebhookRegistrationError, ensure_webhook, project_names
from crux.loop.trigger import ACTIONS

URL = "http://127.0.0.1:8790/webhooks/labelstudio"
SECRET = "x" * 32


@dataclass(frozen=True)
class Hook:
    id: int
    url: str
    project: int | None
    actions: list[str]
    headers: dict
    is_active: bool = True
    send_payload: bool = True
    send_for_all_actions: bool = False


class FakeWebhooks:
    def __init__(self, hooks: list[Hook] | None = None, refuse: Exception | None = None) -> None:
        self.hooks = {h.id: h for h in hooks or []}
        self.refuse = refuse
        self.log: list[str] = []

    def list(self, project: str | None = None) -> list[Hook]:
        # Label Studio also returns organization-wide hooks (project None) for a project filter.
        return [h for h in self.hooks.values() if project is None or h.project in (int(project), None)]

    def create(self, *, url: str, project: int, **fields) -> Hook:
        if self.refuse:
            raise self.refuse
        hook = Hook(id=max(self.hooks, default=0) + 1, url=url, project=project, **fields)
        self.hooks[hook.id] = hook
        self.log.append(f"create {hook.id}")
        return hook

    def update(self, id: int, **fields) -> Hook:
        self.hooks[id] = replace(self.hooks[id], **fields)
        self.log.append(f"update {id}")
        return self.hooks[id]

    def delete(self, id: int) -> None:
        del self.hooks[id]
        self.log.append(f"delete {id}")


def client(webhooks: FakeWebhooks) -> SimpleNamespace:
    return SimpleNamespace(webhooks=webhooks)


def test_created_once_then_left_alone() -> None:
    fake = FakeWebhooks()
    hook_id = ensure_webhook(client(fake), 3, URL, SECRET)
    assert ensure_webhook(client(fake), 3, URL, SECRET) == hook_id
    assert fake.log == [f"create {hook_id}"]
    hook = fake.hooks[hook_id]
    assert sorted(hook.actions) == sorted(ACTIONS)
    assert hook.headers == {"Authorization": f"Bearer {SECRET}"}
    assert hook.send_payload and not hook.send_for_all_actions


def test_drift_is_updated_in_place_and_duplicates_removed() -> None:
    old = Hook(1, URL, 3, ["ANNOTATION_CREATED"], {"Authorization": "Bearer old"}, is_active=False)
    duplicate = Hook(2, URL, 3, list(ACTIONS), {"Authorization": f"Bearer {SECRET}"})
    other_url = Hook(3, "http://elsewhere/hook", 3, [], {})
    org_wide = Hook(4, URL, None, [], {})
    fake = FakeWebhooks([old, duplicate, other_url, org_wide])
    assert ensure_webhook(client(fake), 3, URL, SECRET) == 1
    assert fake.log == ["delete 2", "update 1"]
    assert fake.hooks[1].headers == {"Authorization": f"Bearer {SECRET}"} and fake.hooks[1].is_active
    assert set(fake.hooks) == {1, 3, 4}  # other URLs and organization hooks are not ours to touch


def test_ssrf_refusal_names_the_setting() -> None:
    error = Exception("status_code: 403")
    error.body = {"detail": "URL resolves to a reserved network address (block: 127.0.0.0/8)"}  # type: ignore[attr-defined]
    with pytest.raises(WebhookRegistrationError, match="SSRF_PROTECTION_ENABLED=false"):
        ensure_webhook(client(FakeWebhooks(refuse=error)), 3, URL, SECRET)


def test_project_names_read_the_marker_line() -> None:
    projects = [
        SimpleNamespace(id=1, description="Managed by CRUX\ncrux-project: neu-det"),
        SimpleNamespace(id=2, description="someone else's project"),
        SimpleNamespace(id=3, description=None),
    ]
    fake = SimpleNamespace(projects=SimpleNamespace(list=lambda page_size: projects))
    assert project_names(fake) == {1: "neu-det"}

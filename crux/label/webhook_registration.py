"""The Label Studio side of label-triggered cycles: one webhook per CRUX project, registered idempotently.

Label Studio refuses webhook URLs that resolve to loopback or private networks while its SSRF protection is
on (403 "URL resolves to a reserved network address"): a receiver on the same host needs the server
started with `SSRF_PROTECTION_ENABLED=false`; otherwise give the receiver a URL Label Studio may reach.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from crux.errors import CruxError
from crux.label.projects import MARKER

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.types import AllRolesProjectList

# The Label Studio actions that change what a snapshot exports. TASKS_CREATED counts too: an import of
# tasks with annotations (the bulk path) emits only that action, with `total_annotations` per task.
ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "TASKS_CREATED")


def authorization_header(secret: str) -> str:
    """The header value Label Studio is told to send (`headers` of its webhook) and the receiver expects."""
    return f"Bearer {secret}"


class WebhookRegistrationError(CruxError, RuntimeError):
    """Label Studio refused the webhook (most often: its SSRF guard blocks the receiver URL)."""


def project_names(client: LabelStudio) -> dict[int, str]:
    """Label Studio project id -> CRUX project name, from the `crux-project: <name>` description line."""
    names: dict[int, str] = {}
    # The SDK's pager is generic in its item type but `list` leaves it unbound (mypy infers Never): name it here.
    projects: Iterable[AllRolesProjectList] = client.projects.list(page_size=100)
    for project in projects:
        if project.id is None:  # a listed project has its id; the SDK's model leaves every field optional
            continue
        for line in (project.description or "").splitlines():
            if line.startswith(MARKER):
                names[project.id] = line[len(MARKER) :].strip()
                break
    return names


def _wanted(secret: str) -> dict[str, Any]:
    return {
        "actions": sorted(ACTIONS),
        "headers": {"Authorization": authorization_header(secret)},
        "is_active": True,
        # The receiver needs the payload: the project id and how many annotations changed.
        "send_payload": True,
        "send_for_all_actions": False,
    }


def _differs(hook: Any, wanted: dict[str, Any]) -> bool:
    return (
        sorted(hook.actions or []) != wanted["actions"]
        or (hook.headers or {}) != wanted["headers"]
        or hook.is_active is not True
        or hook.send_payload is not True
        or bool(hook.send_for_all_actions)
    )


def _refused(exc: Exception, url: str) -> WebhookRegistrationError:
    body = getattr(exc, "body", None)
    detail = body.get("detail") if isinstance(body, dict) else None
    message = f"Label Studio refused the webhook to {url}: {detail or exc}"
    if "reserved network address" in str(detail or exc):
        message += (
            ". Its SSRF protection blocks loopback and private addresses: start Label Studio with "
            "SSRF_PROTECTION_ENABLED=false for a receiver on the same host, or set webhooks.public_url "
            "to an address Label Studio may reach."
        )
    return WebhookRegistrationError(message)


def ensure_webhook(client: LabelStudio, project_id: int, url: str, secret: str) -> int:
    """Exactly one webhook of `project_id` posts to `url` with our actions and secret; returns its id.

    Found by URL: created when missing, updated when its actions, headers or flags differ (a rotated
    secret), duplicates to the same URL deleted (a second webhook would double every count).
    """
    wanted = _wanted(secret)
    hooks = [h for h in client.webhooks.list(project=str(project_id)) if h.project == project_id and h.url == url]
    try:
        if not hooks:
            return int(client.webhooks.create(url=url, project=project_id, **wanted).id)
        keep, extra = hooks[0], hooks[1:]
        for hook in extra:
            client.webhooks.delete(id=hook.id)
        if _differs(keep, wanted):
            client.webhooks.update(id=keep.id, url=url, **wanted)
        return int(keep.id)
    except Exception as exc:  # the SDK raises ApiError subclasses per status code
        raise _refused(exc, url) from exc


def remove_webhooks(client: LabelStudio, project_id: int, url: str) -> int:
    """Delete the project's webhooks to `url` (the receiver moved or is retired); returns how many."""
    hooks = [h for h in client.webhooks.list(project=str(project_id)) if h.project == project_id and h.url == url]
    for hook in hooks:
        client.webhooks.delete(id=hook.id)
    return len(hooks)

"""A connected label-studio-sdk client with the checks CRUX needs before it writes anything."""

from __future__ import annotations

from typing import TYPE_CHECKING

from crux.label.server import LabelStudioError, health

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio


def connect(url: str, token: str, timeout: float = 120.0) -> LabelStudio:
    from label_studio_sdk import LabelStudio

    if not health(url):
        raise LabelStudioError(f"Label Studio is not reachable at {url}; start it with `crux labelstudio up`")
    # The SDK's LabelStudio re-declares __init__(*args, **kwargs) without annotations (its base is typed).
    client = LabelStudio(base_url=url, api_key=token, timeout=timeout)  # type: ignore[no-untyped-call]
    try:
        client.users.whoami()
    except Exception as exc:  # the SDK raises ApiError subclasses per status code
        raise LabelStudioError(f"Label Studio at {url} refused the API token: {exc}") from exc
    return client

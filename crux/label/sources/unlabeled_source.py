"""`--labels none`: images only; they arrive in Label Studio unlabelled."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from crux.label.sources.source_files import constant_labels, list_images
from crux.label.sources.source_items import Reader

if TYPE_CHECKING:
    from crux.config import ProjectSpec


def scan_unlabeled(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Reader]:
    return {path: partial(constant_labels, None) for path in list_images(fs, root, problems)}

"""`--labels folders`: one folder per class (or alias), the whole-image class of the images in it."""

from __future__ import annotations

import posixpath
from functools import partial
from typing import TYPE_CHECKING, Any

from crux.kinds import Label, get_kind
from crux.label.sources.source_files import class_for, constant_labels, list_images
from crux.label.sources.source_items import Reader

if TYPE_CHECKING:
    from crux.config import ProjectSpec


def scan_folders(fs: Any, root: str, spec: ProjectSpec, problems: list[str]) -> dict[str, Reader]:
    if get_kind(spec.kind).geometry != "image":  # classify, and anomaly (OK / NG) lines
        problems.append(f"{root}: --labels folders gives whole-image classes; project {spec.title!r} is {spec.kind!r}")
        return {}
    readers: dict[str, Reader] = {}
    for path in list_images(fs, root, problems):
        parts = posixpath.relpath(path, root).split("/")
        cls = class_for(parts[0], spec) if len(parts) > 1 else None
        if len(parts) < 2:
            problems.append(f"{path}: images must sit in a folder named after their class")
        elif cls is None:
            problems.append(f"{path}: folder {parts[0]!r} is not a class (or alias) of project {spec.title!r}")
        else:
            readers[path] = partial(constant_labels, (Label(cls=cls),))
    return readers

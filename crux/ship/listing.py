"""What a model remote holds: the lines with a production release, and a line's history (versions, events)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from crux.ship.releases import (
    CURRENT,
    LINE_NAME,
    MANIFEST,
    join_path,
    list_versions,
    parse_pointer,
    read_events,
    read_object,
    remote_fs,
    version_dir,
)
from crux.ship.signing import SignatureError, verify

log = logging.getLogger(__name__)


def published_lines(root: str, storage_options: Mapping[str, Any] | None = None) -> list[str] | None:
    """The lines with a production pointer under the remote `root`, or None when the remote cannot be listed now
    (offline: an edge keeps running its installed model, so only a successful listing may say a line is absent)."""
    try:
        fs, path = remote_fs(root, storage_options)
        if not fs.exists(path):
            return []
        folders = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p)]
        return sorted(f for f in folders if LINE_NAME.match(f) and fs.exists(join_path(path, f, CURRENT)))
    except Exception:  # fsspec backends raise their own types for an unreachable remote
        log.debug("cannot list %s", root, exc_info=True)
        return None


def list_models(
    root_url: str, line: str, public_keys: Sequence[Any] = (), storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """History of a line: every version (metrics, lineage, gate, forced reason, verified?) and every event."""
    fs, line_path = remote_fs(join_path(root_url, line), storage_options)
    verify_sig = bool(public_keys)
    current_raw = read_object(fs, join_path(line_path, CURRENT))
    current = parse_pointer(current_raw, public_keys, verify_sig) if current_raw is not None else None
    versions: list[dict[str, Any]] = []
    for v in list_versions(fs, line_path):
        raw = read_object(fs, join_path(line_path, version_dir(v), MANIFEST))
        if raw is None:
            versions.append({"version": v, "complete": False})
            continue
        doc = json.loads(raw)
        verified: bool | None = None
        if verify_sig:
            try:
                verify(doc, public_keys)
                verified = doc.get("line") == line and doc.get("version") == v  # another line's copy is not ours
            except SignatureError:
                verified = False
        versions.append(
            {
                "version": v,
                "complete": True,
                "verified": verified,
                "current": current is not None and int(current["version"]) == v,
                "published_at": doc.get("published_at"),
                "kind": doc.get("kind"),
                "metrics": doc.get("metrics"),
                "gate": doc.get("gate"),
                "forced": doc.get("forced"),
                "reason": doc.get("reason"),
                "parent_version": doc.get("parent_version"),
                "lineage": doc.get("lineage"),
                "classes": doc.get("classes"),
                "signed_by": (doc.get("signature") or {}).get("key_id"),
            }
        )
    return {
        "line": line,
        "current": current,
        "versions": versions,
        "events": read_events(fs, line_path, public_keys, verify_sig),
    }

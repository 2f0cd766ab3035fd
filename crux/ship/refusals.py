"""Candidates the gate refused, kept beside the releases so the console can list them with the criterion that
refused each: ROOT/LINE/refused/<UTC time>-<card sha256[:12]>.json.

A refusal publishes nothing (no version folder, no event, no pointer) and edges never read this folder; the record
is informational and unsigned: the card's metrics and lineage and the full gate decision. Writing it may fail
(a read-only remote) without changing the refusal itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from crux.ship.releases import join_path, remote_fs, write_object

log = logging.getLogger(__name__)

REFUSED = "refused"
RECORD_FORMAT = "crux-refusal/1"
_NAME = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{12}\.json\Z")
MAX_LISTED = 50  # the newest refusals a listing reads (a line retrained nightly refuses at most a few a week)


def refusal_record(card: Mapping[str, Any], gate: Mapping[str, Any], at: dt.datetime) -> dict[str, Any]:
    failed = [c for c in gate.get("criteria", []) if not c.get("passed")]
    return {
        "format": RECORD_FORMAT,
        "at": at.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "kind": card.get("kind"),
        "classes": card.get("classes"),
        "metrics": card.get("metrics"),
        "lineage": card.get("lineage"),
        "gate": dict(gate),
        "failed": failed,
    }


def record_refusal(
    root_url: str,
    line: str,
    card: Mapping[str, Any],
    gate: Mapping[str, Any],
    at: dt.datetime | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> str | None:
    """Write the refusal record; its remote path, or None when the remote would not take it (logged)."""
    at = at or dt.datetime.now(dt.UTC)
    record = refusal_record(card, gate, at)
    data = json.dumps(record, indent=2, sort_keys=True).encode()
    digest = hashlib.sha256(json.dumps(dict(card), sort_keys=True, default=str).encode()).hexdigest()[:12]
    try:
        fs, line_path = remote_fs(join_path(root_url, line), storage_options)
        path = join_path(line_path, REFUSED, f"{at.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{digest}.json")
        write_object(fs, path, data)
        return path
    except Exception:  # fsspec backends raise their own types; the refusal stands either way
        log.warning("%s: could not record the gate refusal on %s", line, root_url, exc_info=True)
        return None


def read_refusals(
    root_url: str, line: str, storage_options: Mapping[str, Any] | None = None, limit: int = MAX_LISTED
) -> list[dict[str, Any]]:
    """The line's refusal records, newest first (files not named as `record_refusal` names them are skipped)."""
    fs, line_path = remote_fs(join_path(root_url, line, REFUSED), storage_options)
    try:
        names = sorted((str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(line_path, detail=False)), reverse=True)
    except FileNotFoundError:
        return []
    out = []
    for name in [n for n in names if _NAME.match(n)][:limit]:
        try:
            doc = json.loads(fs.cat_file(join_path(line_path, name)))
        except (OSError, ValueError):
            log.warning("%s: refusal record %s unreadable", line, name)
            continue
        if isinstance(doc, dict) and doc.get("format") == RECORD_FORMAT:
            out.append({**doc, "name": name})
    return out

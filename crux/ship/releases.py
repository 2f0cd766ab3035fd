"""The release store: how releases of a line lie on an fsspec remote, written so a reader never sees half of one.

Remote layout (ROOT is any fsspec URL: a local folder, `s3://bucket/prefix`, …):

  ROOT/LINE/000007/model.onnx          immutable version folder: written once, never modified
  ROOT/LINE/000007/card.json           the model card from `crux export`
  ROOT/LINE/000007/manifest.json       signed: version, sha256 + size of every file, metrics, lineage, gate
  ROOT/LINE/events/00000012.json       signed pointer records, one per publish or rollback (the history)
  ROOT/LINE/current.json               signed pointer to the production version, written LAST

A reader follows current.json → manifest.json (sha256 in the pointer) → files (sha256 in the manifest), so it
either sees the previous complete release or the new complete one, never a mix: current.json is written after
everything it points to, as one object (S3 PUT) or a rename (local folders).

Pointer: {"format", "line", "version", "sequence", "action": "publish"|"rollback", "manifest_sha256",
"previous_version", "reason", "at"}. `sequence` grows by one with every event; an edge accepts a pointer only
when its sequence is higher than the one it runs, and a lower version only when the action is an explicit,
signed rollback — so replaying an old, genuinely signed pointer cannot downgrade an edge (crux.ship.verify).

Needs only fsspec and cryptography (edge-safe).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from crux.errors import CruxError
from crux.ship.signing import SignatureError, canonical_json, verify

log = logging.getLogger(__name__)

POINTER_FORMAT = "crux-pointer/1"
MANIFEST_FORMAT = "crux-release/1"
CURRENT = "current.json"
MANIFEST = "manifest.json"
EVENTS = "events"
# The ingest service's name rule (crux.collect.names), repeated so the edge need not import the ingest package.
LINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class PublishError(CruxError, RuntimeError):
    """The remote is inconsistent or a publish/rollback request is impossible."""


class ReleaseError(CruxError, ValueError):
    """A release on the remote was rejected by a reader (bad signature or hash, older version, …)."""


def remote_fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url, **dict(storage_options or {}))
    return fs, str(path)


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def join_path(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))


def write_object(fs: Any, path: str, data: bytes) -> None:
    """Write one object so no reader ever sees part of it: a PUT on object stores, write + rename locally."""
    if _is_local(fs):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def put_file(fs: Any, local: Path, path: str) -> None:
    if _is_local(fs):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        fs.put_file(str(local), tmp)
        fs.mv(tmp, path)
    else:
        fs.put_file(str(local), path)


def read_object(fs: Any, path: str) -> bytes | None:
    try:
        data: bytes = fs.cat_file(path)
    except FileNotFoundError:
        return None
    return data


def version_dir(version: int) -> str:
    return f"{version:06d}"


def list_versions(fs: Any, line_path: str) -> list[int]:
    fs.invalidate_cache(line_path)  # s3fs caches listings per instance: a stale one would reuse a version number
    try:
        entries = fs.ls(line_path, detail=False)
    except FileNotFoundError:
        return []
    versions = []
    for entry in entries:
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.isdigit():
            versions.append(int(name))
    return sorted(versions)


def list_events(fs: Any, line_path: str) -> list[int]:
    fs.invalidate_cache(join_path(line_path, EVENTS))
    try:
        entries = fs.ls(join_path(line_path, EVENTS), detail=False)
    except FileNotFoundError:
        return []
    seqs = []
    for entry in entries:
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.endswith(".json") and name[:-5].isdigit():
            seqs.append(int(name[:-5]))
    return sorted(seqs)


def read_pointer(
    line_url: str, public_keys: Sequence[Any], storage_options: Mapping[str, Any] | None = None, verify_sig: bool = True
) -> dict[str, Any] | None:
    """The verified production pointer of a line, or None when nothing was published yet."""
    fs, line_path = remote_fs(line_url, storage_options)
    raw = read_object(fs, join_path(line_path, CURRENT))
    if raw is None:
        return None
    return parse_pointer(raw, public_keys, verify_sig)


def parse_pointer(raw: bytes, public_keys: Sequence[Any], verify_sig: bool) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ReleaseError(f"current.json is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != POINTER_FORMAT:
        raise ReleaseError("current.json is not a crux pointer")
    if verify_sig:
        try:
            doc = verify(doc, public_keys)
        except SignatureError as exc:
            raise ReleaseError(f"pointer: {exc}") from exc
    return {k: v for k, v in doc.items() if k != "signature"}


def write_pointer(fs: Any, line_path: str, pointer: Mapping[str, Any]) -> None:
    data = canonical_json(pointer)
    write_object(fs, join_path(line_path, EVENTS, f"{int(pointer['sequence']):08d}.json"), data)  # history first
    write_object(fs, join_path(line_path, CURRENT), data)  # then the switch, as one object


def read_manifest(
    fs: Any, line_path: str, version: int, public_keys: Sequence[Any], expected_sha256: str | None
) -> dict[str, Any]:
    raw = read_object(fs, join_path(line_path, version_dir(version), MANIFEST))
    if raw is None:
        raise ReleaseError(f"version {version} has no manifest (incomplete or deleted)")
    if expected_sha256 is not None and hashlib.sha256(raw).hexdigest() != expected_sha256:
        raise ReleaseError(f"manifest of version {version} does not match the sha256 in the pointer (tampered)")
    try:
        doc = verify(json.loads(raw), public_keys)
    except (SignatureError, ValueError) as exc:
        raise ReleaseError(f"manifest of version {version}: {exc}") from exc
    if int(doc.get("version", -1)) != version:
        raise ReleaseError(f"manifest of version {version} names version {doc.get('version')}")
    return doc


def read_events(fs: Any, line_path: str, public_keys: Sequence[Any], verify_sig: bool) -> list[dict[str, Any]]:
    events = []
    for seq in list_events(fs, line_path):
        raw = read_object(fs, join_path(line_path, EVENTS, f"{seq:08d}.json"))
        if raw is None:
            continue
        try:
            events.append(parse_pointer(raw, public_keys, verify_sig))
        except ReleaseError as exc:
            log.warning("%s: event %d ignored: %s", line_path, seq, exc)
    return events

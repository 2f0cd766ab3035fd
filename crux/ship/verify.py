"""Release identity and integrity: the one check every reader of a release uses (signatures, the manifest's sha256,
the line and version named), the remote's files against their manifest, and the rule that stops replayed pointers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from crux.ship.releases import (
    CURRENT,
    MANIFEST,
    PublishError,
    ReleaseError,
    join_path,
    parse_pointer,
    read_object,
    version_dir,
)
from crux.ship.signing import SignatureError, verify


def verify_release(
    pointer_raw: bytes,
    manifest_raw: bytes | None,
    public_keys: Sequence[Any],
    line: str,
    *,
    require_signature: bool = True,
    where: str = "",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """THE release-identity check (publish, rollback, the edge and `crux predict` all use it).

    A release is accepted only when the pointer and the manifest are each signed by a trusted key, the manifest's
    sha256 is the one in the pointer, and both name the expected `line` and the same version. A validly signed
    release of another line copied under this line's folder is refused. Returns (pointer, manifest) without
    their signatures.
    """
    where = where or line
    pointer = parse_pointer(pointer_raw, public_keys, require_signature)
    if pointer.get("line") != line:
        raise ReleaseError(f"{where}: current.json is a release of line {pointer.get('line')!r}, not {line!r}")
    version = pointer.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ReleaseError(f"{where}: current.json names version {version!r}, not a version number >= 1")
    if manifest_raw is None:
        raise ReleaseError(f"{where}: version {version} has no manifest (incomplete or deleted)")
    if hashlib.sha256(manifest_raw).hexdigest() != pointer.get("manifest_sha256"):
        raise ReleaseError(f"{where}: manifest of version {version} does not match the pointer's sha256 (tampered)")
    try:
        doc = json.loads(manifest_raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        manifest = verify(doc, public_keys) if require_signature else {k: v for k, v in doc.items() if k != "signature"}
    except (SignatureError, ValueError) as exc:
        raise ReleaseError(f"{where}: manifest of version {version}: {exc}") from exc
    if manifest.get("line") != line:
        raise ReleaseError(f"{where}: manifest of version {version} is for line {manifest.get('line')!r}, not {line!r}")
    if manifest.get("version") != version or isinstance(manifest.get("version"), bool):
        raise ReleaseError(f"{where}: manifest of version {version} names version {manifest.get('version')}")
    return pointer, manifest


def read_production(
    fs: Any, line_path: str, line: str, public_keys: Sequence[Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The verified production (pointer, manifest) of a line, or None when nothing was published."""
    raw = read_object(fs, join_path(line_path, CURRENT))
    if raw is None:
        return None
    try:
        version = int(json.loads(raw)["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"{line}: current.json is not a crux pointer") from exc
    return verify_release(raw, read_object(fs, join_path(line_path, version_dir(version), MANIFEST)), public_keys, line)


def verify_files(fs: Any, line_path: str, line: str, manifest: Mapping[str, Any]) -> None:
    """Every file of a release on the remote matches the size and sha256 its signed manifest lists."""
    version = int(manifest["version"])
    for name, entry in sorted(dict(manifest.get("files") or {}).items()):
        path = join_path(line_path, version_dir(version), name)
        digest = hashlib.sha256()
        size = 0
        try:
            with fs.open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            raise PublishError(f"{line}: v{version}'s {name} is missing on the remote") from None
        if size != int(entry.get("bytes", -1)) or digest.hexdigest() != entry.get("sha256"):
            raise PublishError(
                f"{line}: v{version}'s {name} does not match the sha256 in its signed manifest (damaged or tampered); "
                f"restore it or roll production back (`crux rollback {line} --to VERSION --reason ...`) first"
            )


def check_monotonic(new: Mapping[str, Any], installed: Mapping[str, Any] | None) -> bool:
    """True when `new` should replace `installed`; False when it is the same release; ReleaseError when older.

    Sequence must grow; the version may only go down through a signed rollback record.
    """
    if installed is None:
        return True
    new_seq, old_seq = int(new["sequence"]), int(installed["sequence"])
    new_v, old_v = int(new["version"]), int(installed["version"])
    if new_seq == old_seq and new_v == old_v:
        return False
    if new_seq <= old_seq:
        raise ReleaseError(f"pointer sequence {new_seq} is not newer than the running {old_seq} (replayed or stale)")
    if new_v < old_v and new.get("action") != "rollback":
        raise ReleaseError(f"version {new_v} is older than the running {old_v} and not a signed rollback")
    return True

"""The edge's read side: download the line's production release to a local folder, verified, or nothing at all."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crux.data.store import sha256_file
from crux.ship.releases import (
    CURRENT,
    MANIFEST,
    ReleaseError,
    join_path,
    parse_pointer,
    read_object,
    remote_fs,
    version_dir,
)
from crux.ship.verify import check_monotonic, verify_release


@dataclass(frozen=True)
class Release:
    """A verified release downloaded to `path`."""

    line: str
    version: int
    sequence: int
    action: str
    model_file: str
    path: Path
    pointer: dict[str, Any]
    manifest: dict[str, Any]


def fetch_release(
    line_url: str,
    dest_root: Path,
    public_keys: Sequence[Any],
    *,
    installed: Mapping[str, Any] | None,
    storage_options: Mapping[str, Any] | None = None,
    require_signature: bool = True,
    line: str | None = None,
) -> Release | None:
    """Download and verify the line's production release into `dest_root/<version>-<sequence>/`.

    `line` is the line the caller runs (default: the last part of `line_url`); a release of any other line is
    refused (`verify_release`). Returns None when `installed` (the pointer the caller runs) is already current;
    raises ReleaseError when the release is not acceptable (line, signature, hash, size, older version); nothing
    partial is left behind.
    """
    expected_line = line or line_url.rstrip("/").rsplit("/", 1)[-1]
    fs, line_path = remote_fs(line_url, storage_options)
    raw = read_object(fs, join_path(line_path, CURRENT))
    if raw is None:
        raise ReleaseError(f"{line_url}: nothing published yet")
    pointer = parse_pointer(raw, public_keys, require_signature)
    if pointer.get("line") != expected_line:
        raise ReleaseError(
            f"{line_url}: current.json is a release of line {pointer.get('line')!r}, not {expected_line!r}"
        )
    if not check_monotonic(pointer, installed):
        return None
    version, sequence = int(pointer["version"]), int(pointer["sequence"])
    mraw = read_object(fs, join_path(line_path, version_dir(version), MANIFEST))
    pointer, manifest = verify_release(
        raw, mraw, public_keys, expected_line, require_signature=require_signature, where=line_url
    )
    assert mraw is not None  # verify_release refuses a release without its manifest

    dest_root = Path(dest_root)
    dest_root.mkdir(parents=True, exist_ok=True)
    final = dest_root / f"{version:06d}-{sequence:08d}"
    tmp = dest_root / f".incoming-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for name, entry in sorted(manifest["files"].items()):
            if "/" in name or "\\" in name or name.startswith("."):
                raise ReleaseError(f"manifest file name {name!r} is not a plain file name")
            local = tmp / name
            fs.get_file(join_path(line_path, version_dir(version), name), str(local))
            if local.stat().st_size != int(entry["bytes"]) or sha256_file(local) != entry["sha256"]:
                raise ReleaseError(f"{name} of version {version} does not match its sha256 in the manifest (tampered)")
        (tmp / MANIFEST).write_bytes(mraw)
        (tmp / "pointer.json").write_bytes(raw)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except FileNotFoundError as exc:
        raise ReleaseError(f"version {version}: file missing on the remote: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Release(
        line=str(pointer["line"]),
        version=version,
        sequence=sequence,
        action=str(pointer["action"]),
        model_file=str(manifest.get("model_file", "model.onnx")),
        path=final,
        pointer=pointer,
        manifest=manifest,
    )

"""Publish an exported model as the next release of a line, after the gate; roll production back.

The release store (layout, atomic writes) is crux.ship.releases, the gate crux.ship.gate, the checks crux.ship.candidate
(the model) and crux.ship.verify (production); the edge's read side is crux.ship.fetch, the history crux.ship.listing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crux.data.store import sha256_file
from crux.ship.candidate import candidate_card, check_model_runs
from crux.ship.gate import GateConfig, GateResult, gate_check
from crux.ship.releases import (
    LINE_NAME,
    MANIFEST,
    MANIFEST_FORMAT,
    POINTER_FORMAT,
    PublishError,
    join_path,
    list_events,
    list_versions,
    put_file,
    read_events,
    read_manifest,
    read_object,
    remote_fs,
    version_dir,
    write_object,
    write_pointer,
)
from crux.ship.signing import canonical_json, sign
from crux.ship.verify import read_production, verify_files

log = logging.getLogger(__name__)


class GateRefused(PublishError):
    def __init__(self, result: GateResult) -> None:
        super().__init__(result.report())
        self.result = result


@dataclass(frozen=True)
class PublishResult:
    line: str
    version: int
    sequence: int
    url: str
    gate: GateResult
    forced: bool


def publish(
    root_url: str,
    line: str,
    export_dir: Path,
    private_key: Any,
    gate_cfg: GateConfig,
    *,
    force: bool = False,
    reason: str | None = None,
    production_metrics: Mapping[str, Any] | None = None,
    model_file: str = "model.onnx",
    storage_options: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
    trusted_keys: Sequence[Any] = (),
    check_images: Sequence[Path] = (),
) -> PublishResult:
    """Publish `export_dir` (model + card.json from `crux export`) as the next version of `line`.

    The gate compares the card's metrics with production's (the production manifest's metrics, or
    `production_metrics` when the caller re-evaluated production on the current test split). A refused gate
    raises GateRefused unless `force`, which needs a `reason`; both are recorded in the manifest and the event.
    Production is verified against `trusted_keys` (the edges' `edge.public_keys`) plus the signing key's own public
    key, so the first publish after a key rotation accepts production signed by the previous key, and its files
    against their sha256 in its manifest. Before anything is compared, the candidate must run as the edge runs it
    (`check_model_runs`, on a synthetic frame and the `check_images`); neither check can be forced.
    """
    if not LINE_NAME.match(line) or ".." in line:
        raise PublishError(f"line {line!r}: use 1-64 letters, digits, '_', '.', '-' (it becomes a folder name)")
    if force and not (reason and reason.strip()):
        raise PublishError("--force needs --reason: the override is recorded in the model history")
    export_dir = Path(export_dir)
    card_path = export_dir / "card.json"
    if not card_path.is_file() or not (export_dir / model_file).is_file():
        raise PublishError(f"{export_dir} has no card.json and {model_file}: run `crux export` first")
    card = candidate_card(card_path)
    check_model_runs(export_dir, card, model_file, check_images)
    keys = _trusted(private_key, trusted_keys)
    fs, line_path = remote_fs(join_path(root_url, line), storage_options)

    production = read_production(fs, line_path, line, keys)
    if production is not None:
        # The release the gate compares with must be intact: a damaged production model is news, not a baseline.
        verify_files(fs, line_path, line, production[1])
    pointer = production[0] if production else None
    prod_version = int(pointer["version"]) if pointer else None
    prod_metrics = production_metrics
    if production is not None and prod_metrics is None:
        prod_metrics = production[1].get("metrics")
    gate = gate_check(
        card.data.get("metrics"),
        prod_metrics,
        gate_cfg,
        card.kind,
        prod_version,
        line=line,
        ok_line=bool(card.ok_class),
    )
    if not gate.passed and not force:
        from crux.ship.refusals import record_refusal

        record_refusal(root_url, line, card.data, gate.to_dict(), at=now, storage_options=storage_options)
        raise GateRefused(gate)
    if gate.passed and force:
        log.info("publish --force given but the gate passed anyway")

    version = max([*list_versions(fs, line_path), prod_version or 0]) + 1
    sequence = max([*list_events(fs, line_path), int(pointer["sequence"]) if pointer else 0]) + 1
    vpath = join_path(line_path, version_dir(version))
    if fs.exists(join_path(vpath, MANIFEST)):
        raise PublishError(f"{vpath} already exists: versions are immutable")

    # The card and the model files it vouches for (float32 and INT8), each checked like the one that ran above.
    from crux.inference import model_file_in

    present = {name for name in card.files if (export_dir / name).exists()}
    files = sorted({"card.json"} | {model_file_in(export_dir, card, name).name for name in present | {model_file}})
    entries: dict[str, dict[str, Any]] = {}
    for name in files:
        local = export_dir / name
        entries[name] = {"sha256": sha256_file(local), "bytes": local.stat().st_size}
        put_file(fs, local, join_path(vpath, name))
    at = _now(now)
    manifest = sign(
        {
            "format": MANIFEST_FORMAT,
            "line": line,
            "version": version,
            "model_file": model_file,
            "files": entries,
            "kind": card.kind,
            "classes": list(card.classes),
            "metrics": card.data.get("metrics"),
            "lineage": card.data.get("lineage"),
            "gate": gate.to_dict(),
            "forced": bool(force and not gate.passed),
            "reason": reason,
            "parent_version": prod_version,
            "published_at": at,
        },
        private_key,
    )
    manifest_bytes = canonical_json(manifest)
    write_object(fs, join_path(vpath, MANIFEST), manifest_bytes)  # last in the version folder: marks it complete
    new_pointer = sign(
        {
            "format": POINTER_FORMAT,
            "line": line,
            "version": version,
            "sequence": sequence,
            "action": "publish",
            "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
            "previous_version": prod_version,
            "reason": reason,
            "at": at,
        },
        private_key,
    )
    write_pointer(fs, line_path, new_pointer)
    return PublishResult(line, version, sequence, vpath, gate, bool(force and not gate.passed))


def _trusted(private_key: Any, trusted_keys: Sequence[Any]) -> list[Any]:
    """The keys production may be signed by: the trusted set and the signing key itself (deduplicated)."""
    from crux.ship.signing import key_id

    keys = {key_id(k): k for k in trusted_keys}
    keys.setdefault(key_id(private_key), private_key.public_key())
    return list(keys.values())


def _now(now: dt.datetime | None) -> str:
    return (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")


def rollback(
    root_url: str,
    line: str,
    private_key: Any,
    *,
    to_version: int | None = None,
    reason: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
    trusted_keys: Sequence[Any] = (),
) -> dict[str, Any]:
    """Point production at an earlier (or any existing) version with a signed rollback record.

    Default target: the version that was in production before the current one; `reason` is required (recorded).
    Returns the new pointer.
    Releases are verified against `trusted_keys` plus the signing key's own public key (see `publish`).
    """
    if not LINE_NAME.match(line) or ".." in line:
        raise PublishError(f"line {line!r}: use 1-64 letters, digits, '_', '.', '-' (it becomes a folder name)")
    if not (reason and reason.strip()):
        raise PublishError("rollback needs --reason: like --force, it is recorded in the model history")
    keys = _trusted(private_key, trusted_keys)
    fs, line_path = remote_fs(join_path(root_url, line), storage_options)
    production = read_production(fs, line_path, line, keys)
    if production is None:
        raise PublishError(f"{line}: nothing published, nothing to roll back")
    pointer = production[0]
    cur_version = int(pointer["version"])
    if to_version is None:
        to_version = _previous_production(fs, line_path, keys, cur_version)
        if to_version is None:
            raise PublishError(f"{line}: no earlier production version to roll back to (pass --to VERSION)")
    if to_version == cur_version:
        raise PublishError(f"{line}: version {to_version} is already in production")
    manifest_raw = read_object(fs, join_path(line_path, version_dir(to_version), MANIFEST))
    if manifest_raw is None:
        raise PublishError(f"{line}: version {to_version} does not exist")
    target = read_manifest(fs, line_path, to_version, keys, None)  # exists and is genuinely ours
    if target.get("line") != line:
        raise PublishError(f"{line}: version {to_version} is a release of line {target.get('line')!r}")
    verify_files(fs, line_path, line, target)  # edges would refuse a damaged target: refuse it here first
    sequence = max([*list_events(fs, line_path), int(pointer["sequence"])]) + 1
    new_pointer = sign(
        {
            "format": POINTER_FORMAT,
            "line": line,
            "version": to_version,
            "sequence": sequence,
            "action": "rollback",
            "manifest_sha256": hashlib.sha256(manifest_raw).hexdigest(),
            "previous_version": cur_version,
            "reason": reason,
            "at": _now(now),
        },
        private_key,
    )
    write_pointer(fs, line_path, new_pointer)
    return {k: v for k, v in new_pointer.items() if k != "signature"}


def _previous_production(fs: Any, line_path: str, public_keys: Sequence[Any], current: int) -> int | None:
    versions = [int(e["version"]) for e in read_events(fs, line_path, public_keys, True)]
    # Walk back from the latest event to the first production version that is not the current one.
    for v in reversed(versions):
        if v != current:
            return v
    return None

"""Publish exported models to an fsspec remote, gate them against production, roll back; read side for the edge.

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
signed rollback — so replaying an old, genuinely signed pointer cannot downgrade an edge.

The read side (`read_pointer`, `fetch_release`, `list_models`) needs only fsspec and cryptography (edge-safe).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
import shutil
import types
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crux.config import ConfigError
from crux.data.store import sha256_file
from crux.errors import CruxError
from crux.ship.signing import SignatureError, canonical_json, sign, verify

if TYPE_CHECKING:
    from crux.inference import ModelCard

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


class GateRefused(PublishError):
    def __init__(self, result: GateResult) -> None:
        super().__init__(result.report())
        self.result = result


# ----------------------------------------------------------------------------------------------------------------
# Gate


INSPECTION_PREFIX = "inspection."  # the OK/NG view of lines with an OK class (crux.evaluation.inspection_metrics)
# Dotted keys into a model card's test metrics: `map50`, `inspection.ng_recall`, `per_class.rolled-in_scale.ap50`.
METRIC_KEY = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_+-]+)*\Z")


def _check_limits(limits: Mapping[str, float | None], where: str) -> None:
    for key, value in limits.items():
        if not METRIC_KEY.match(key):
            raise ConfigError(f"{where}.{key}: not a dotted metric key of the model card (e.g. inspection.ng_recall)")
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{where}.{key}: {value} is not a finite number")


@dataclass(frozen=True)
class GateLineConfig:
    """params.yaml `gate.lines.LINE`: this line's floors and ceilings, over the kind's and `gate.min/max`'s."""

    # Metric >= value; null removes a floor inherited from the kind or from gate.min.
    min: Mapping[str, float | None] = field(default_factory=lambda: types.MappingProxyType({}))
    # Metric <= value (false-reject rate, say); null removes an inherited ceiling.
    max: Mapping[str, float | None] = field(default_factory=lambda: types.MappingProxyType({}))

    def __post_init__(self) -> None:
        _check_limits(self.min, "min")
        _check_limits(self.max, "max")


@dataclass(frozen=True)
class GateConfig:
    """params.yaml `gate`: absolute floors (every candidate, the first one included) and the check vs production.

    Limits merge in this order, later winning, a null value removing the limit: the kind's defaults
    (crux.kinds `gate_floors`, `gate_ceilings`, and `gate_ok_*` on lines with an OK class) → `min`/`max`
    for the kind (`gate.min.detect.map50`) → the line's own (`gate.lines.LINE.min.map50`). The OK/NG view
    (`inspection.*` metrics) exists only on lines with an OK class: kind-level `inspection.*` limits apply to
    those lines; a line-level limit always applies (a candidate without the metric fails it).
    """

    # Dotted key of the model card's test metrics compared with production; null: the kind's monitor metric.
    metric: str | None = None
    # How much worse than production the candidate may be and still ship (absolute, in metric units).
    tolerance: float = 0.0
    higher_is_better: bool = True
    # Per task kind: {metric: floor}; e.g. {"detect": {"map50": 0.5}, "classify": {"accuracy": 0.95}}.
    min: Mapping[str, Mapping[str, float | None]] = field(default_factory=lambda: types.MappingProxyType({}))
    # Per task kind: {metric: ceiling}; e.g. {"classify": {"inspection.false_reject_rate": 0.02}}.
    max: Mapping[str, Mapping[str, float | None]] = field(default_factory=lambda: types.MappingProxyType({}))
    # Per line (the project name): its own floors and ceilings.
    lines: Mapping[str, GateLineConfig] = field(default_factory=lambda: types.MappingProxyType({}))
    # true: this plant sets no floors of its own, only the kinds' defaults apply. Required for an empty `gate:` in
    # params.yaml, which would otherwise drop every floor without a word (crux.settings refuses it).
    defaults_only: bool = False

    def __post_init__(self) -> None:
        from crux.kinds import KINDS

        if self.defaults_only and (self.min or self.max or self.lines):
            raise ConfigError("gate.defaults_only: true contradicts the floors set in gate.min, gate.max or gate.lines")

        if not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ConfigError(f"gate.tolerance: {self.tolerance} must be a finite number >= 0")
        if self.metric is not None and not METRIC_KEY.match(self.metric):
            raise ConfigError(f"gate.metric: {self.metric!r} is not a dotted metric key")
        for section in ("min", "max"):
            for kind, limits in getattr(self, section).items():
                if kind not in KINDS:
                    raise ConfigError(
                        f"gate.{section}.{kind}: not a task kind; limits are per kind ({', '.join(sorted(KINDS))})"
                    )
                if not isinstance(limits, Mapping):
                    raise ConfigError(f"gate.{section}.{kind}: expected a mapping of metric: value")
                _check_limits(limits, f"gate.{section}.{kind}")
        for line, line_cfg in self.lines.items():
            if not LINE_NAME.match(line):
                raise ConfigError(f"gate.lines.{line}: not a line name")
            if not isinstance(line_cfg, GateLineConfig):
                raise ConfigError(f"gate.lines.{line}: expected min/max mappings")

    def limits(self, kind: str, line: str | None, ok_line: bool) -> list[tuple[str, str, float, str]]:
        """The absolute criteria for a candidate: (rule "min"|"max", metric, value, where it was set)."""
        from crux.kinds import get_kind

        task_kind = get_kind(kind)
        merged: dict[tuple[str, str], tuple[float | None, str]] = {}
        # A kind without defaults (getattr: kinds registered elsewhere) has only what params.yaml sets.
        names = ["gate_floors", "gate_ceilings"] + (["gate_ok_floors", "gate_ok_ceilings"] if ok_line else [])
        defaults = [("max" if "ceilings" in n else "min", getattr(task_kind, n, None) or {}) for n in names]
        for rule, limits in defaults:
            merged.update({(rule, k): (v, f"kind {kind} default") for k, v in limits.items()})
        for rule in ("min", "max"):
            for k, v in getattr(self, rule).get(kind, {}).items():
                if ok_line or not k.startswith(INSPECTION_PREFIX):
                    merged[(rule, k)] = (v, f"gate.{rule}.{kind}")
        line_cfg = self.lines.get(line) if line else None
        if line_cfg is not None:
            for rule in ("min", "max"):
                for k, v in getattr(line_cfg, rule).items():
                    merged[(rule, k)] = (v, f"gate.lines.{line}.{rule}")
        return [(rule, k, v, src) for (rule, k), (v, src) in merged.items() if v is not None]


@dataclass(frozen=True)
class Criterion:
    """One check of the gate, as it appears in the decision: manifest, `crux models list`, `crux publish --json`."""

    # "min" (candidate >= threshold), "max" (candidate <= threshold) or "vs_production".
    rule: str
    metric: str
    candidate: float | None
    # The floor / ceiling, or for vs_production the lowest (highest) value that still passes.
    threshold: float | None
    production: float | None
    passed: bool
    # Where the limit comes from (kind default, gate.min.detect, gate.lines.LINE.max, production vN).
    source: str
    note: str = ""

    def describe(self) -> str:
        cand = "missing" if self.candidate is None else f"{self.candidate:.4f}"
        mark = "pass" if self.passed else "FAIL"
        if self.rule == "vs_production":
            if self.production is None:
                return f"{mark}  {self.metric} {cand} vs production: {self.note}"
            return f"{mark}  {self.metric} {cand} vs {self.source} {self.production:.4f} ({self.note})"
        op = ">=" if self.rule == "min" else "<="
        extra = f" ({self.note})" if self.note else ""
        return f"{mark}  {self.metric} {cand} {op} {self.threshold:.4f} [{self.source}]{extra}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    metric: str
    candidate: float | None
    production: float | None
    production_version: int | None
    tolerance: float
    reason: str
    criteria: tuple[Criterion, ...] = ()

    def report(self) -> str:
        return f"gate {'passed' if self.passed else 'REFUSED'}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["criteria"] = [c.to_dict() for c in self.criteria]
        return out

    def markdown(self) -> str:
        """The decision as a Markdown table (Prefect artifact, release notes)."""
        rows = [
            f"**Gate {'passed' if self.passed else 'REFUSED'}**: {self.reason}",
            "",
            "| criterion | metric | candidate | threshold | production | result |",
            "|---|---|---|---|---|---|",
        ]
        for c in self.criteria:
            rows.append(
                f"| {c.rule} ({c.source}) | {c.metric} | {_fmt(c.candidate)} | {_fmt(c.threshold)} | "
                f"{_fmt(c.production)} | {'pass' if c.passed else '**FAIL**'}{f': {c.note}' if c.note else ''} |"
            )
        return "\n".join(rows) + "\n"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def criteria_lines(gate: Mapping[str, Any] | None) -> list[str]:
    """A stored gate decision (manifest `gate`) as one line per criterion; older releases had one metric."""
    if not gate:
        return []
    if gate.get("criteria"):
        return [Criterion(**c).describe() for c in gate["criteria"]]
    return [f"{'pass' if gate.get('passed') else 'FAIL'}  {gate.get('metric')} {gate.get('reason', '')}"]


def metric_value(metrics: Mapping[str, Any] | None, path: str) -> float | None:
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if not isinstance(node, int | float) or isinstance(node, bool) or not math.isfinite(node):
        return None
    return float(node)


def gate_check(
    candidate_metrics: Mapping[str, Any] | None,
    production_metrics: Mapping[str, Any] | None,
    cfg: GateConfig,
    kind: str,
    production_version: int | None = None,
    *,
    line: str | None = None,
    ok_line: bool = False,
) -> GateResult:
    """Every criterion for a candidate (metrics measured on the frozen test split); passed only when all pass.

    Absolute floors and ceilings apply to every candidate, the first one included. The comparison with
    production passes only when both have the metric and the candidate is within tolerance; with no model in
    production it is recorded as not applicable, and a gate with no absolute limit and nothing to compare
    against refuses (nothing vouches for the model).
    """
    criteria: list[Criterion] = []
    # An anomaly line before its first labelled defect: metrics that need NG items do not exist; it is gated on
    # false rejects alone, and every decision says so.
    no_ng = _needs_ng(kind) and metric_value(candidate_metrics, "inspection.n_ng") == 0
    not_applicable = "not applicable: the test split has no NG items, only false rejects are gated"
    for rule, key, threshold, source in cfg.limits(kind, line, ok_line):
        value = metric_value(candidate_metrics, key)
        if value is None and no_ng and key in _needs_ng(kind):
            criteria.append(Criterion(rule, key, None, threshold, None, True, source, not_applicable))
            continue
        if value is None:
            criteria.append(Criterion(rule, key, None, threshold, None, False, source, "candidate has no such metric"))
            continue
        ok = value >= threshold - 1e-12 if rule == "min" else value <= threshold + 1e-12
        criteria.append(Criterion(rule, key, value, threshold, None, ok, source))

    metric = cfg.metric or get_monitor(kind)
    cand = metric_value(candidate_metrics, metric)
    prod = metric_value(production_metrics, metric) if production_version is not None else None
    source = f"production v{production_version}" if production_version is not None else "production"
    if production_version is None:
        rel = Criterion(
            "vs_production", metric, cand, None, None, True, source, "no model in production yet: nothing to compare"
        )
    elif cand is None and no_ng and metric in _needs_ng(kind):
        rel = Criterion("vs_production", metric, None, None, prod, True, source, not_applicable)
    elif cand is None:
        rel = Criterion("vs_production", metric, None, None, prod, False, source, "candidate has no such metric")
    elif prod is None:
        rel = Criterion(
            "vs_production",
            metric,
            cand,
            None,
            None,
            False,
            source,
            f"production v{production_version} has no {metric} to compare with: re-evaluate it on this test split, "
            "or publish with --force --reason",
        )
    else:
        delta = cand - prod if cfg.higher_is_better else prod - cand
        bound = prod - cfg.tolerance if cfg.higher_is_better else prod + cfg.tolerance
        rel = Criterion(
            "vs_production",
            metric,
            cand,
            bound,
            prod,
            delta >= -cfg.tolerance - 1e-12,
            source,
            f"change {delta:+.4f}, tolerance {cfg.tolerance:.4f}",
        )
    criteria.append(rel)

    failed = [c for c in criteria if not c.passed]
    absolute = [c for c in criteria if c.rule != "vs_production"]
    if not absolute and production_version is None:
        reason = f"no absolute floor for kind {kind} (set gate.min.{kind}) and no production model to compare with"
        passed = False
    elif failed:
        passed = False
        reason = "; ".join(f"{c.metric} {_short(c)}" for c in failed)
    else:
        passed = True
        reason = f"{len(criteria)} criteria passed" + (
            "" if production_version is not None else " (first model of the line)"
        )
    return GateResult(passed, metric, cand, prod, production_version, cfg.tolerance, reason, tuple(criteria))


def _needs_ng(kind: str) -> tuple[str, ...]:
    """The metrics of `kind` that only exist when the split has NG items (crux.kinds `ng_metrics`)."""
    from crux.kinds import KINDS

    return tuple(getattr(KINDS.get(kind), "ng_metrics", ()))


def _short(c: Criterion) -> str:
    if c.candidate is None:
        return "missing from the candidate"
    if c.rule == "min":
        return f"{c.candidate:.4f} < floor {c.threshold:.4f}"
    if c.rule == "max":
        return f"{c.candidate:.4f} > ceiling {c.threshold:.4f}"
    return c.note if c.production is None else f"{c.candidate:.4f} vs production {c.production:.4f} ({c.note})"


def get_monitor(kind: str) -> str:
    """The metric candidates are compared on: the kind's monitored metric (`crux.kinds`)."""
    from crux.kinds import get_kind

    return get_kind(kind).monitor


# ----------------------------------------------------------------------------------------------------------------
# Remote helpers


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    return url_to_fs(url, **dict(storage_options or {}))


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))


def _write(fs: Any, path: str, data: bytes) -> None:
    """Write one object so no reader ever sees part of it: a PUT on object stores, write + rename locally."""
    if _is_local(fs):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def _put_file(fs: Any, local: Path, path: str) -> None:
    if _is_local(fs):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        fs.put_file(str(local), tmp)
        fs.mv(tmp, path)
    else:
        fs.put_file(str(local), path)


def _cat(fs: Any, path: str) -> bytes | None:
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def _version_dir(version: int) -> str:
    return f"{version:06d}"


def _now(now: dt.datetime | None) -> str:
    return (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")


def _list_versions(fs: Any, line_path: str) -> list[int]:
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


def _list_events(fs: Any, line_path: str) -> list[int]:
    fs.invalidate_cache(_join(line_path, EVENTS))
    try:
        entries = fs.ls(_join(line_path, EVENTS), detail=False)
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
    fs, line_path = _fs(line_url, storage_options)
    raw = _cat(fs, _join(line_path, CURRENT))
    if raw is None:
        return None
    return _parse_pointer(raw, public_keys, verify_sig)


def published_lines(root: str, storage_options: Mapping[str, Any] | None = None) -> list[str] | None:
    """The lines with a production pointer under the remote `root`, or None when the remote cannot be listed now
    (offline: an edge keeps running its installed model, so only a successful listing may say a line is absent)."""
    try:
        fs, path = _fs(root, storage_options)
        if not fs.exists(path):
            return []
        folders = [str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p)]
        return sorted(f for f in folders if LINE_NAME.match(f) and fs.exists(_join(path, f, CURRENT)))
    except Exception:  # fsspec backends raise their own types for an unreachable remote
        log.debug("cannot list %s", root, exc_info=True)
        return None


def _parse_pointer(raw: bytes, public_keys: Sequence[Any], verify_sig: bool) -> dict[str, Any]:
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


# ----------------------------------------------------------------------------------------------------------------
# Write side


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
    pointer = _parse_pointer(pointer_raw, public_keys, require_signature)
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


def _production(
    fs: Any, line_path: str, line: str, public_keys: Sequence[Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The verified production (pointer, manifest) of a line, or None when nothing was published."""
    raw = _cat(fs, _join(line_path, CURRENT))
    if raw is None:
        return None
    try:
        version = int(json.loads(raw)["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"{line}: current.json is not a crux pointer") from exc
    return verify_release(raw, _cat(fs, _join(line_path, _version_dir(version), MANIFEST)), public_keys, line)


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
    card = _read_card(card_path)
    check_model_runs(export_dir, card, model_file, check_images)
    keys = _trusted(private_key, trusted_keys)
    fs, line_path = _fs(_join(root_url, line), storage_options)

    production = _production(fs, line_path, line, keys)
    if production is not None:
        # The release the gate compares with must be intact: a damaged production model is news, not a baseline.
        _verify_files(fs, line_path, line, production[1])
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
        raise GateRefused(gate)
    if gate.passed and force:
        log.info("publish --force given but the gate passed anyway")

    version = max([*_list_versions(fs, line_path), prod_version or 0]) + 1
    sequence = max([*_list_events(fs, line_path), int(pointer["sequence"]) if pointer else 0]) + 1
    vpath = _join(line_path, _version_dir(version))
    if fs.exists(_join(vpath, MANIFEST)):
        raise PublishError(f"{vpath} already exists: versions are immutable")

    # The card and the model files it vouches for (float32 and INT8), each checked like the one that ran above.
    from crux.inference import model_file_in

    present = {name for name in card.files if (export_dir / name).exists()}
    files = sorted({"card.json"} | {model_file_in(export_dir, card, name).name for name in present | {model_file}})
    entries: dict[str, dict[str, Any]] = {}
    for name in files:
        local = export_dir / name
        entries[name] = {"sha256": sha256_file(local), "bytes": local.stat().st_size}
        _put_file(fs, local, _join(vpath, name))
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
    _write(fs, _join(vpath, MANIFEST), manifest_bytes)  # last in the version folder: marks it complete
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
    _write_pointer(fs, line_path, new_pointer)
    return PublishResult(line, version, sequence, vpath, gate, bool(force and not gate.passed))


def _read_card(card_path: Path) -> ModelCard:
    """The model card `crux export` wrote, checked against the one schema predict and the edge load
    (crux.inference.ModelCard: ranges, classes, format, the model file's name and sha256)."""
    from crux.inference import ModelError, read_card

    try:
        return read_card(card_path)
    except ModelError as exc:
        raise PublishError(str(exc)) from None


# Validation images publish runs a candidate on (besides the synthetic frame): a few prove the path, many cost time.
CHECK_IMAGES = 4


def check_model_runs(export_dir: Path, card: ModelCard, model_file: str, images: Sequence[Path] = ()) -> None:
    """Refuse a model that cannot run as the edge runs it: its file must be a plain name in `export_dir` matching the
    card's sha256, load in ONNX Runtime with the card's input, and give finite outputs of the card's shape through the
    shared preprocessing and decoding, on a synthetic frame and on the given validation images."""
    from crux.inference import OnnxModel, model_file_in

    try:
        model = OnnxModel(model_file_in(export_dir, card, model_file), card)
        model.warm_up()  # the synthetic frame: every model, whether or not validation images are at hand
        for image in list(images)[:CHECK_IMAGES]:
            model.predict_file(Path(image))
    except CruxError as exc:  # ModelError, ModelOutputError, an unreadable validation image
        raise PublishError(f"{export_dir}: refused, the model does not run as the edge runs it: {exc}") from None


def _verify_files(fs: Any, line_path: str, line: str, manifest: Mapping[str, Any]) -> None:
    """Every file of a release on the remote matches the size and sha256 its signed manifest lists."""
    version = int(manifest["version"])
    for name, entry in sorted(dict(manifest.get("files") or {}).items()):
        path = _join(line_path, _version_dir(version), name)
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


def _trusted(private_key: Any, trusted_keys: Sequence[Any]) -> list[Any]:
    """The keys production may be signed by: the trusted set and the signing key itself (deduplicated)."""
    from crux.ship.signing import key_id

    keys = {key_id(k): k for k in trusted_keys}
    keys.setdefault(key_id(private_key), private_key.public_key())
    return list(keys.values())


def _write_pointer(fs: Any, line_path: str, pointer: Mapping[str, Any]) -> None:
    data = canonical_json(pointer)
    _write(fs, _join(line_path, EVENTS, f"{int(pointer['sequence']):08d}.json"), data)  # history first
    _write(fs, _join(line_path, CURRENT), data)  # then the switch, as one object


def _read_manifest(
    fs: Any, line_path: str, version: int, public_keys: Sequence[Any], expected_sha256: str | None
) -> dict[str, Any]:
    raw = _cat(fs, _join(line_path, _version_dir(version), MANIFEST))
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
    fs, line_path = _fs(_join(root_url, line), storage_options)
    production = _production(fs, line_path, line, keys)
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
    manifest_raw = _cat(fs, _join(line_path, _version_dir(to_version), MANIFEST))
    if manifest_raw is None:
        raise PublishError(f"{line}: version {to_version} does not exist")
    target = _read_manifest(fs, line_path, to_version, keys, None)  # exists and is genuinely ours
    if target.get("line") != line:
        raise PublishError(f"{line}: version {to_version} is a release of line {target.get('line')!r}")
    _verify_files(fs, line_path, line, target)  # edges would refuse a damaged target: refuse it here first
    sequence = max([*_list_events(fs, line_path), int(pointer["sequence"])]) + 1
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
    _write_pointer(fs, line_path, new_pointer)
    return {k: v for k, v in new_pointer.items() if k != "signature"}


def _events(fs: Any, line_path: str, public_keys: Sequence[Any], verify_sig: bool) -> list[dict[str, Any]]:
    events = []
    for seq in _list_events(fs, line_path):
        raw = _cat(fs, _join(line_path, EVENTS, f"{seq:08d}.json"))
        if raw is None:
            continue
        try:
            events.append(_parse_pointer(raw, public_keys, verify_sig))
        except ReleaseError as exc:
            log.warning("%s: event %d ignored: %s", line_path, seq, exc)
    return events


def _previous_production(fs: Any, line_path: str, public_keys: Sequence[Any], current: int) -> int | None:
    versions = [int(e["version"]) for e in _events(fs, line_path, public_keys, True)]
    # Walk back from the latest event to the first production version that is not the current one.
    for v in reversed(versions):
        if v != current:
            return v
    return None


def list_models(
    root_url: str, line: str, public_keys: Sequence[Any] = (), storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """History of a line: every version (metrics, lineage, gate, forced reason, verified?) and every event."""
    fs, line_path = _fs(_join(root_url, line), storage_options)
    verify_sig = bool(public_keys)
    current_raw = _cat(fs, _join(line_path, CURRENT))
    current = _parse_pointer(current_raw, public_keys, verify_sig) if current_raw is not None else None
    versions = []
    for v in _list_versions(fs, line_path):
        raw = _cat(fs, _join(line_path, _version_dir(v), MANIFEST))
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
        "events": _events(fs, line_path, public_keys, verify_sig),
    }


# ----------------------------------------------------------------------------------------------------------------
# Read side for the edge


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
    fs, line_path = _fs(line_url, storage_options)
    raw = _cat(fs, _join(line_path, CURRENT))
    if raw is None:
        raise ReleaseError(f"{line_url}: nothing published yet")
    pointer = _parse_pointer(raw, public_keys, require_signature)
    if pointer.get("line") != expected_line:
        raise ReleaseError(
            f"{line_url}: current.json is a release of line {pointer.get('line')!r}, not {expected_line!r}"
        )
    if not check_monotonic(pointer, installed):
        return None
    version, sequence = int(pointer["version"]), int(pointer["sequence"])
    mraw = _cat(fs, _join(line_path, _version_dir(version), MANIFEST))
    pointer, manifest = verify_release(
        raw, mraw, public_keys, expected_line, require_signature=require_signature, where=line_url
    )

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
            fs.get_file(_join(line_path, _version_dir(version), name), str(local))
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

"""The publish gate: which metrics a candidate must reach (floors and ceilings from the kind, params.yaml `gate` and
the line) and how it must compare with production; the decision, criterion by criterion."""

from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from crux.config import ConfigError
from crux.ship.releases import LINE_NAME

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

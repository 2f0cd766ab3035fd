"""How the console shows values: the key metrics per task kind and which apply to a line, gate criteria, live NG
rates, and the template filters (pure functions of their arguments)."""

from __future__ import annotations

import datetime as dt
from typing import Any

# Metrics shown per task kind, the first one is the kind's gate metric (crux.kinds monitor).
KEY_METRICS = {
    "classify": ("macro_f1", "accuracy", "inspection.ng_recall", "inspection.false_reject_rate"),
    "detect": ("map50", "map"),
    "segment": ("miou", "accuracy", "inspection.ng_recall", "inspection.false_reject_rate"),
}


# Metrics that exist only on lines with an OK class (the OK/NG view, crux.evaluation.inspection_metrics).
OK_NG_PREFIX = "inspection."
NOT_APPLICABLE = "not applicable"


def line_metrics(kind: str, ok_class: str | None) -> tuple[str, ...]:
    """The key metrics of a line: its kind's, less the OK/NG ones when the line has no OK class (they do not apply:
    every class is a defect type)."""
    names = KEY_METRICS.get(kind, ())
    return names if ok_class else tuple(n for n in names if not n.startswith(OK_NG_PREFIX))


def key_metrics(prod: dict[str, Any] | None, kind: str, ok_class: str | None = None) -> list[tuple[str, float | None]]:
    from crux.ship.gate import metric_value

    if not prod:
        return []
    return [(name, metric_value(prod.get("metrics"), name)) for name in line_metrics(kind, ok_class)]


def criterion_rows(gate: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A gate's criteria as the console shows them: status (pass / FAIL / not applicable), the candidate's value,
    the limit with its comparison, and where the limit was set (params key, kind default, production vN)."""
    rows = []
    for c in (gate or {}).get("criteria") or []:
        note = str(c.get("note") or "")
        rule = c.get("rule")
        # A criterion that passed because there was nothing to compare with did not vouch for the model.
        skipped = bool(c.get("passed")) and (
            note.startswith(NOT_APPLICABLE) or (rule == "vs_production" and c.get("production") is None)
        )
        status = NOT_APPLICABLE if skipped else ("pass" if c.get("passed") else "FAIL")
        if rule == "vs_production":
            prod = c.get("production")
            limit = f"≥ {metric_fmt(c.get('threshold'))}" if c.get("threshold") is not None else ""
            compare = f"vs production {metric_fmt(prod)}" if prod is not None else "vs production: none yet"
        else:
            limit = f"{'≥' if rule == 'min' else '≤'} {metric_fmt(c.get('threshold'))}"
            compare = ""
        rows.append(
            {
                "status": status,
                "metric": str(c.get("metric")),
                "candidate": c.get("candidate"),
                "limit": limit,
                "compare": compare,
                "source": str(c.get("source") or ""),
                "note": note,
            }
        )
    return rows


def ng_rate_note(kind: str, ok_class: str | None) -> str | None:
    """What a line's NG rate means when it is not a reject rate: a classifier line without an OK class calls every
    frame one of its defect types, so 100% NG is its normal state, not a line stop."""
    if ok_class is None and kind == "classify":
        return "no OK class on this line: every frame is one of its defect types, so 100% NG is normal, not a stop"
    return None


def weighted_ng_rate(beats: list[Any]) -> float | None:
    frames = sum(b.frames for b in beats)
    return sum(b.ng for b in beats) / frames if frames else None


def timestamp(value: dt.datetime | str | None) -> str:
    """The console's one timestamp format, UTC to the minute: `2026-12-06 05:12 UTC` (ISO strings accepted)."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)  # the database and the remote keep naive UTC
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def ago(value: dt.datetime | None, now: dt.datetime | None = None) -> str:
    if value is None:
        return "never"
    seconds = ((now or dt.datetime.now(dt.UTC)) - value).total_seconds()
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def metric_fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"

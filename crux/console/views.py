"""How the console shows values: the key metrics per task kind, live NG rates, Markdown, and the template filters
(pure functions of their arguments)."""

from __future__ import annotations

import datetime as dt
from typing import Any

# Metrics shown per task kind, the first one is the kind's gate metric (crux.kinds monitor).
KEY_METRICS = {
    "classify": ("macro_f1", "accuracy", "inspection.ng_recall", "inspection.false_reject_rate"),
    "detect": ("map50", "map"),
    "segment": ("miou", "accuracy", "inspection.ng_recall", "inspection.false_reject_rate"),
}


def key_metrics(prod: dict[str, Any] | None, kind: str) -> list[tuple[str, float | None]]:
    from crux.ship.gate import metric_value

    if not prod:
        return []
    return [(name, metric_value(prod.get("metrics"), name)) for name in KEY_METRICS.get(kind, ())]


def weighted_ng_rate(beats: list[Any]) -> float | None:
    frames = sum(b.frames for b in beats)
    return sum(b.ng for b in beats) / frames if frames else None


def markdown_html(text: str) -> str:
    """`crux data diff` Markdown → HTML; raw HTML in it is escaped, not rendered (task text is user input)."""
    from markdown_it import MarkdownIt

    html: str = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    return html


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

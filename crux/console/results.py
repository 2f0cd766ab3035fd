"""Results you can drill into, per line and version: the per-class table, a confusion matrix whose cells open their
test images, the worst misses (escapes first, then false rejects) with their overlays, the operating point (NG
recall against false rejects, the shipped threshold marked) and the candidates the gate refused, beside the
published versions, with the criterion that refused each.

Where it comes from: a version's metrics (per-class figures, confusion matrix) from its release manifest (the model
remote, `crux models list`); the per-item records and overlays from the workspace's latest `crux evaluate`
(metrics/LINE/predictions.json and metrics/LINE/results/, crux.evaluation.results_document), shown as that
version's when their metrics are the version's, else labelled as the workspace's; refusals from the remote's
LINE/refused/ (crux.ship.refusals).

Routes: `/lines/{line}/results` (query: version, actual + predicted: one confusion cell) and
`/lines/{line}/results/images/{name}` (an overlay; the name must be one evaluate writes, NNNNNN.png)."""

# No `from __future__ import annotations`: FastAPI evaluates the endpoint annotations.

import functools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any
from xml.sax.saxutils import escape

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from crux.console.deps import ConsoleDep, PageError
from crux.console.sources import Unavailable, production
from crux.console.views import KEY_METRICS

router = APIRouter()

RESULTS_FILE, RESULTS_DIR = "predictions.json", "results"  # what crux.train.pipeline.write_item_results writes
THUMB = re.compile(r"^\d{6}\.png\Z")
# The anomaly kind's card figures (crux.evaluation.anomaly_metrics), where KEY_METRICS names none.
ANOMALY_METRICS = ("auroc", "inspection.ng_recall", "inspection.false_reject_rate")
CELL_PAGE = 60  # items a confusion cell lists at once (?offset= pages on)


# ----------------------------------------------------------------------------------------------------------------
# Reading (pure functions of files and values)


@functools.lru_cache(maxsize=16)  # one predictions.json per line; a changed file is a new key
def _parse(path: str, mtime_ns: int, size: int) -> dict[str, Any] | None:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == 1 and isinstance(doc.get("items"), list) else None


def load_results(workspace: Path | None, line: str) -> dict[str, Any] | None:
    """The workspace's predictions.json of `line` (a configured line name), parsed once per file version."""
    if workspace is None:
        return None
    path = workspace / "metrics" / line / RESULTS_FILE
    try:
        st = path.stat()
    except OSError:
        return None
    return _parse(str(path), st.st_mtime_ns, st.st_size)


def _flat(metrics: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(metrics, Mapping):
        for key, value in metrics.items():
            if isinstance(value, Mapping):
                out.update(_flat(value, f"{prefix}{key}."))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                out[f"{prefix}{key}"] = float(value)
    return out


def same_evaluation(doc_metrics: Mapping[str, Any], version_metrics: Any) -> bool:
    """Whether a version's card metrics are the ones the per-item records were taken with: every scalar both have
    (per-class figures aside) is equal, and they share at least two."""
    ours = {k: v for k, v in _flat(version_metrics).items() if not k.startswith("per_class.")}
    common = set(ours) & set(doc_metrics)
    return len(common) >= 2 and all(abs(ours[k] - float(doc_metrics[k])) < 1e-9 for k in common)


def version_per_class(metrics: Any, kind: str) -> list[dict[str, Any]]:
    """A version's per-class rows from its card: precision/recall/F1/support (classify, segment's image view), AP
    (detect); none for an anomaly model (one score, no classes)."""
    per_class = (metrics or {}).get("per_class") if isinstance(metrics, Mapping) else None
    if not isinstance(per_class, Mapping):
        return []
    rows = []
    for name, row in per_class.items():
        if not isinstance(row, Mapping):
            continue
        rows.append(
            {
                "class": name,
                "precision": row.get("precision"),
                "recall": row.get("recall"),
                "f1": row.get("f1"),
                "support": row.get("support", row.get("n_boxes")),
                "ap50": row.get("ap50"),
                "ap50_95": row.get("ap50_95"),
            }
        )
    return rows


def cell_items(doc: Mapping[str, Any], actual: str, predicted: str) -> list[dict[str, Any]]:
    """Every item of one confusion cell, misses in gallery order (by how wrong), correct ones by item order."""
    items = [r for r in doc["items"] if r.get("actual") == actual and r.get("predicted") == predicted]
    if actual == predicted:
        return sorted(items, key=lambda r: r["index"])
    return sorted(items, key=lambda r: (r.get("outcome") != "escape", -float(r.get("score") or 0.0), r["index"]))


def gallery_items(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    by_index = {r["index"]: r for r in doc["items"]}
    return [by_index[i] for i in doc.get("worst_misses", []) if i in by_index]


def operating_svg(point: Mapping[str, Any], width: int = 520, height: int = 340) -> str:
    """NG recall (y) against the false-reject rate (x) over every threshold, the shipped one marked: an inline SVG
    with fixed 0-1 axes (a curve never zooms into a misleading range)."""
    left, top, right, bottom = 56, 16, 16, 44
    w, h = width - left - right, height - top - bottom

    def xy(frr: float, rec: float) -> tuple[float, float]:
        return left + frr * w, top + (1.0 - rec) * h

    rows = [
        r for r in point.get("curve", []) if r.get("ng_recall") is not None and r.get("false_reject_rate") is not None
    ]
    pts = sorted((float(r["false_reject_rate"]), float(r["ng_recall"]), float(r["threshold"])) for r in rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="operating-point" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="NG recall against false-reject rate">',
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fff" stroke="#999"/>',
    ]
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, _ = xy(t, 0)
        _, y = xy(0, t)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#eee"/>')
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + h + 14}" font-size="11" text-anchor="middle">{t:g}</text>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{t:g}</text>')
    parts.append(
        f'<text x="{left + w / 2}" y="{height - 6}" font-size="12" text-anchor="middle">false-reject rate (OK parts '
        "rejected)</text>"
    )
    parts.append(
        f'<text x="14" y="{top + h / 2}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {top + h / 2})">'
        "NG recall</text>"
    )
    if pts:
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(f, r) for f, r, _ in pts))
        parts.append(f'<polyline class="curve" points="{line}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    frr, rec, thr = point.get("false_reject_rate"), point.get("ng_recall"), point.get("threshold")
    if frr is not None and rec is not None and thr is not None:
        x, y = xy(float(frr), float(rec))
        label = escape(f"shipped threshold {float(thr):.3f}: recall {float(rec):.3f}, false rejects {float(frr):.3f}")
        parts.append(
            f'<circle class="shipped" data-threshold="{float(thr):.6g}" data-ng-recall="{float(rec):.6g}" '
            f'data-false-reject-rate="{float(frr):.6g}" cx="{x:.1f}" cy="{y:.1f}" r="6" fill="#c62828">'
            f"<title>{label}</title></circle>"
        )
        anchor = "end" if x > left + w * 0.6 else "start"
        dx = -10 if anchor == "end" else 10
        parts.append(f'<text x="{x + dx:.1f}" y="{y + 16:.1f}" font-size="11" text-anchor="{anchor}">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def candidates(versions: Sequence[Mapping[str, Any]], refusals: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Published versions and refused candidates in one list, newest first, each refusal with its failed criteria."""
    rows: list[dict[str, Any]] = []
    for v in versions:
        if v.get("complete", True):
            rows.append(
                {
                    "status": "published",
                    "at": v.get("published_at") or "",
                    "version": v.get("version"),
                    "metrics": v.get("metrics"),
                    "gate": v.get("gate"),
                    "forced": v.get("forced"),
                    "failed": [],
                }
            )
    for r in refusals:
        rows.append(
            {
                "status": "refused",
                "at": r.get("at") or "",
                "version": None,
                "metrics": r.get("metrics"),
                "gate": r.get("gate"),
                "forced": False,
                "failed": [c for c in r.get("failed") or [] if isinstance(c, Mapping)],
                "dataset_version": (r.get("lineage") or {}).get("dataset_version"),
            }
        )
    # Newest first; within one second a refusal came after the publish it was compared with.
    return sorted(
        rows,
        key=lambda r: (str(r["at"]).replace("Z", "+00:00")[:19], r["status"] == "refused", r["version"] or 0),
        reverse=True,
    )


def criterion_text(c: Mapping[str, Any]) -> str:
    """`macro_f1 0.412 < min 0.800 (kind default)`: the candidate's value, the limit and where it was set."""
    cand = c.get("candidate")
    value = "missing" if cand is None else f"{float(cand):.3f}"
    if c.get("rule") == "vs_production":
        prod = c.get("production")
        against = "—" if prod is None else f"{float(prod):.3f}"
        return f"{c.get('metric')} {value} vs production {against} ({c.get('source')}) {c.get('note') or ''}".strip()
    op = "<" if c.get("rule") == "min" else ">"
    limit = c.get("threshold")
    limit_text = "—" if limit is None else f"{float(limit):.3f}"
    return f"{c.get('metric')} {value} {op} {c.get('rule')} {limit_text} ({c.get('source')})"


# ----------------------------------------------------------------------------------------------------------------
# Routes


def _metric_value(metrics: Any, name: str) -> float | None:
    from crux.ship.gate import metric_value

    return metric_value(metrics, name)


def _refusals(reader: Any, line: str) -> list[dict[str, Any]]:
    from crux.ship.refusals import read_refusals

    return read_refusals(reader.remote_url, line, reader.storage_options)


@router.get("/lines/{line}/results", response_class=HTMLResponse, summary="Per-class results and drill-down")
def results_page(
    request: Request,
    console: ConsoleDep,
    line: str,
    version: Annotated[int | None, Query(ge=1, le=10**9)] = None,
    actual: Annotated[str | None, Query(max_length=200)] = None,
    predicted: Annotated[str | None, Query(max_length=200)] = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Response:
    cfg, read = console.cfg, console.read
    info = console.known_line(line)
    history = read("model remote", cfg.models, lambda r: r.history(line))
    refusals = read("model remote", cfg.models, lambda r: _refusals(r, line))
    versions = [v for v in (history.get("versions", []) if history else []) if v.get("complete")]
    prod = production(history) if history else None
    chosen = None
    if version is not None:
        chosen = next((v for v in versions if int(v["version"]) == version), None)
        if chosen is None and not isinstance(history, Unavailable):
            raise PageError(404, f"line {line!r} has no published version {version}")
    elif versions:
        chosen = prod or versions[-1]
    doc = load_results(cfg.workspace, line)
    matched = [int(v["version"]) for v in versions if doc and same_evaluation(doc.get("metrics", {}), v.get("metrics"))]
    doc_is_chosen = bool(doc and chosen and int(chosen["version"]) in matched)
    labels = list(doc["labels"]) if doc else []
    cell = None
    if actual is not None or predicted is not None:
        if doc is None or actual is None or predicted is None or actual not in labels or predicted not in labels:
            raise PageError(404, f"no confusion cell {actual!r} → {predicted!r} in line {line!r}'s results")
        items = cell_items(doc, actual, predicted)
        cell = {"actual": actual, "predicted": predicted, "total": len(items), "offset": offset,
                "items": items[offset : offset + CELL_PAGE], "page": CELL_PAGE}  # fmt: skip
    point = doc.get("operating_point") if doc and doc.get("ok_class") else None
    return console.page(
        request,
        "results.html",
        line=info,
        history=history,
        versions=versions,
        production=prod,
        chosen=chosen,
        version_rows=version_per_class(chosen.get("metrics") if chosen else None, info.kind),
        doc=doc,
        matched=matched,
        doc_is_chosen=doc_is_chosen,
        labels=labels,
        cell=cell,
        gallery=gallery_items(doc) if doc else [],
        operating=operating_svg(point) if point else None,
        point=point,
        refusals=refusals,
        candidates=candidates(versions, refusals if isinstance(refusals, list) else []),
        criterion_text=criterion_text,
        metric_names=KEY_METRICS.get(info.kind, ANOMALY_METRICS),
        metric_value=_metric_value,
        title=f"{info.name} results",
    )


@router.get("/lines/{line}/results/images/{name}", summary="An overlay of one test item (PNG)")
def result_image(console: ConsoleDep, line: str, name: str) -> Response:
    console.known_line(line)
    workspace = console.cfg.workspace
    # A configured line and a name of a fixed pattern: nothing a request sends becomes a path of its own.
    if workspace is None or not THUMB.match(name):
        raise PageError(404, f"no result image {name!r} for line {line!r}")
    path = workspace / "metrics" / line / RESULTS_DIR / name
    if not path.is_file():
        raise PageError(404, f"no result image {name!r} for line {line!r}")
    return Response(path.read_bytes(), media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

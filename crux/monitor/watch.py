"""The drift check: each station's and each line's recent frames (the score histograms of their heartbeats) against
the reference recorded in the card of the model they run, with alarms raised, kept and cleared in the ingest DB and
the frames of a new alarm queued for labelling first.

One check per scope (a station; a line = its stations on the production version together). An alarm stays open
while later checks still find the shift and is cleared by the first that finds none; a check with too few frames or
without a reference leaves the scope as it was.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from crux.collect.heartbeats import (
    DriftAlarm,
    DriftCheck,
    StationWindow,
    clear_alarm,
    open_alarm,
    queue_shifted,
    raise_alarm,
    record_check,
    windows,
)
from crux.monitor.drift import Assessment, MonitorConfig, Reference, Window, assess

# version → its card's reference (None: a card without one, or a version the remote does not hold)
References = Callable[[int | None], Reference | None]


@dataclass(frozen=True)
class Check:
    """One scope's check: what was measured, and the alarm open after it (raised by this check or earlier)."""

    line: str
    station: str | None
    model_version: int | None
    assessment: Assessment
    alarm: DriftAlarm | None
    raised: bool
    queued: tuple[int, ...]

    @property
    def scope(self) -> str:
        return f"station {self.station}" if self.station else f"line {self.line}"


def check_line(
    engine: Engine,
    line: str,
    references: References,
    production_version: int | None,
    cfg: MonitorConfig,
    now: dt.datetime,
) -> list[Check]:
    """Check every station of `line` that sent score histograms within `cfg.window_s`, then the line as a whole (its
    stations on the production version; each station's own version's reference)."""
    start = now - dt.timedelta(seconds=cfg.window_s)
    found = windows(engine, start, line)
    checks = [
        _apply(engine, line, w.station, w.model_version, w.window, references(w.model_version), cfg, start, now)
        for w in found
    ]
    on_production = [w for w in found if production_version is not None and w.model_version == production_version]
    line_window = Window.total([w.window for w in on_production])
    # A line alarm that station alarms explain queues nothing more: their own queues hold the shifted frames, and
    # the line's newest frames would mix in those of its steady stations. Unexplained (a shift spread thinly over
    # the stations), it queues the line's newest frames.
    explained = any(c.assessment.alarm for c in checks)
    reference = references(production_version)
    checks.append(
        _apply(engine, line, None, production_version, line_window, reference, cfg, start, now, queue=not explained)
    )
    return checks


def _apply(
    engine: Engine,
    line: str,
    station: str | None,
    version: int | None,
    window: Window,
    reference: Reference | None,
    cfg: MonitorConfig,
    start: dt.datetime,
    now: dt.datetime,
    queue: bool = True,
) -> Check:
    result = assess(reference, window, cfg)
    record_check(
        engine,
        DriftCheck(line, station, now, version, result.status, result.frames, result.psi, result.ks_p,
                   result.ng_rate, result.ref_ng_rate),
    )  # fmt: skip
    current = open_alarm(engine, line, station)
    raised = False
    queued: list[int] = []
    if result.alarm:
        if current is None:
            current = raise_alarm(
                engine,
                line=line,
                station=station,
                model_version=version,
                window_start=start,
                window_end=now,
                frames=result.frames,
                psi=result.psi,
                ks_p=result.ks_p,
                ng_rate=result.ng_rate,
                ref_ng_rate=result.ref_ng_rate,
                reasons=result.reasons,
                now=now,
            )
            raised = True
        # Frames of this window not queued yet, up to queue_max per alarm: the newest shifted frames go ahead.
        room = max(cfg.queue_max - current.queued, 0) if queue else 0
        if room:
            queued = queue_shifted(engine, dataclasses.replace(current, window_start=start, window_end=now), room, now)
            current = open_alarm(engine, line, station)
    elif result.status == "ok" and current is not None:
        clear_alarm(engine, current.id, now)
        current = None
    return Check(line, station, version, result, current, raised, tuple(queued))


def release_reference(
    remote: str, line: str, version: int, public_keys: Sequence[Any], storage_options: Mapping[str, Any] | None = None
) -> Reference | None:
    """The reference in the card of published `version` of `line`, read from the model remote: the card must match
    the sha256 its signed manifest vouches for (a doctored card must not silence the monitor). None when the card
    has no reference."""
    from crux.ship.releases import ReleaseError, join_path, read_manifest, read_object, remote_fs, version_dir

    fs, line_path = remote_fs(join_path(remote, line), storage_options)
    manifest = read_manifest(fs, line_path, version, public_keys, None)
    entry = (manifest.get("files") or {}).get("card.json")
    raw = read_object(fs, join_path(line_path, version_dir(version), "card.json"))
    if entry is None or raw is None or hashlib.sha256(raw).hexdigest() != entry.get("sha256"):
        raise ReleaseError(f"{line} version {version}: card.json is missing or does not match its manifest")
    return Reference.from_card(json.loads(raw))


def markdown_report(checks: Sequence[Check]) -> str:
    """The checks as the Prefect artifact's markdown: alarms first."""
    lines = [
        "| scope | model | status | frames | PSI | KS p | NG rate (val) | queued |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(checks, key=lambda c: (not c.assessment.alarm, c.line, c.station or "")):
        a = c.assessment
        model = "—" if c.model_version is None else f"v{c.model_version}"
        lines.append(
            f"| {c.scope} | {model} | "
            f"{'**ALARM**' if a.alarm else a.status} | {a.frames} | {_num(a.psi, '.3f')} | {_num(a.ks_p, '.2g')} | "
            f"{_num(a.ng_rate, '.1%')} ({_num(a.ref_ng_rate, '.1%')}) | {len(c.queued)} |"
        )
    alarms = [c for c in checks if c.assessment.alarm]
    head = f"# Drift: {len(alarms)} alarm(s)\n\n" + "".join(
        f"- **{c.scope}**: {'; '.join(c.assessment.reasons)}\n" for c in alarms
    )
    return head + "\n" + "\n".join(lines) + "\n"


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


__all__ = ["Check", "StationWindow", "check_line", "markdown_report", "release_reference"]

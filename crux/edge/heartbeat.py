"""The edge's heartbeat: every `interval_s` a small JSON status to the ingest service's POST /v1/heartbeat,
signed in with the station token (the console's stations page reads it).

Best-effort by design: it runs in its own thread, reads the runtime's counters without a lock, and a failed
or slow post (short timeout) is logged and forgotten; the next beat carries the fresh figures. Nothing here
can block or stop a frame.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from crux.errors import CruxError

if TYPE_CHECKING:
    from crux.edge.outbox import Outbox
    from crux.edge.runtime import EdgeRuntime

log = logging.getLogger(__name__)

# Frames/s is measured over this window; latency and NG rate over the runtime's recent frames.
FPS_WINDOW_S = 60.0


def heartbeat_payload(
    runtime: EdgeRuntime,
    outbox: Outbox | None,
    interval_s: float,
    delivered: ScoreSnapshot | None = None,
    scores: ScoreSnapshot | None = None,
) -> dict[str, Any]:
    """The status of `runtime` now, in the shape of crux.collect.heartbeats.HeartbeatIn; `score_hist`/`window_ng`
    count the frames judged from `delivered` (the figures of the last beat that arrived; None: since start) to
    `scores` (taken now when None)."""
    recent = list(runtime.recent)  # a copy: the frame loop keeps appending
    now = time.monotonic()
    window = [r for r in recent if now - r[0] <= FPS_WINDOW_S]
    running = runtime.running
    payload: dict[str, Any] = {
        "started_at": runtime.started_at.isoformat(),
        "model_version": running.version if running is not None else None,
        "frames": runtime.frames,
        "ng": runtime.ng,
        "errors": runtime.errors,
        "model_errors": runtime.model_errors,  # of `errors`: the model's, not the frame's (the edge rejected them)
        "fps": round(len(window) / FPS_WINDOW_S, 3),
        "latency_p50_ms": round(statistics.median(r[1] for r in recent), 3) if recent else None,
        "ng_rate": round(sum(r[2] for r in recent) / len(recent), 4) if recent else None,
        "interval_s": interval_s,
    }
    payload["score_hist"], payload["window_ng"] = (scores or ScoreSnapshot.of(runtime)).minus(delivered)
    if outbox is not None:
        payload["outbox_pending"] = len(outbox.pending())
        payload["outbox_bytes"] = outbox.pending_bytes
    return payload


@dataclass(frozen=True)
class ScoreSnapshot:
    """The runtime's binned frame scores and NG count since start (crux.monitor.drift), at one moment."""

    counts: tuple[int, ...]
    ng: int

    @classmethod
    def of(cls, runtime: EdgeRuntime) -> ScoreSnapshot:
        # The NG count first: the frame loop bumps a frame's bin before its NG count, so a window never holds more NG
        # frames than frames. tuple() copies the list in one step; the loop only ever increments its items. Frames
        # the model could not judge are in neither count.
        ng = runtime.ng
        return cls(tuple(runtime.score_counts), ng)

    def minus(self, earlier: ScoreSnapshot | None) -> tuple[list[int], int]:
        """What was judged between `earlier` and this snapshot (the window a heartbeat reports)."""
        if earlier is None:
            return list(self.counts), self.ng
        return [a - b for a, b in zip(self.counts, earlier.counts, strict=True)], self.ng - earlier.ng


class HeartbeatSender:
    """A daemon thread posting `heartbeat_payload` to `ingest_url`/v1/heartbeat every `interval_s`."""

    def __init__(
        self,
        ingest_url: str,
        token: str,
        runtime: EdgeRuntime,
        outbox: Outbox | None,
        interval_s: float,
        *,
        timeout_s: float = 2.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = ingest_url.rstrip("/") + "/v1/heartbeat"
        self.token = token
        self.runtime = runtime
        self.outbox = outbox
        self.interval_s = interval_s
        self._client = client or httpx.Client(timeout=timeout_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0
        # The score counts of the last beat that arrived: a lost beat's frames are carried by the next one, so the
        # ingest's histograms add up to every judged frame.
        self._delivered: ScoreSnapshot | None = None

    def beat(self) -> bool:
        """One heartbeat; False (logged) when it did not arrive. Never raises."""
        try:
            snapshot = ScoreSnapshot.of(self.runtime)
            payload = heartbeat_payload(self.runtime, self.outbox, self.interval_s, self._delivered, snapshot)
            response = self._client.post(self.url, json=payload, headers={"Authorization": f"Bearer {self.token}"})
        except Exception as exc:  # the ingest service down, DNS, a timeout: the line keeps inspecting
            self.failed += 1
            log.debug("heartbeat not sent: %s", exc)
            return False
        if response.status_code >= 300:
            self.failed += 1
            log.warning("heartbeat refused: HTTP %s %s", response.status_code, response.text[:200])
            return False
        self.sent += 1
        self._delivered = snapshot
        return True

    def start(self) -> None:
        def loop() -> None:
            while True:
                self.beat()
                if self._stop.wait(self.interval_s):
                    return

        self._thread = threading.Thread(target=loop, name="crux-edge-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, final: bool = True) -> None:
        """Stop beating; `final` sends the last figures first (the frames of a short run would otherwise be lost)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if final:
            self.beat()
        self._client.close()


def start_heartbeat(cfg: Any, token: str | None, runtime: EdgeRuntime, outbox: Outbox | None) -> HeartbeatSender | None:
    """A running sender when the edge reports to an ingest service (`edge.ingest_url` and a token), else None."""
    if not cfg.ingest_url or not token:
        return None
    sender = HeartbeatSender(cfg.ingest_url, token, runtime, outbox, cfg.heartbeat_interval_s)
    sender.start()
    return sender


class StationSetupError(CruxError):
    """The ingest service refuses this box's station (unknown name, wrong token, other line): every upload would be."""


def check_station(
    ingest_url: str, token: str, station: str, line: str, *, timeout_s: float = 5.0, client: httpx.Client | None = None
) -> str | None:
    """Ask the ingest service who `token` belongs to before the first frame: a refusal is a StationSetupError saying
    how to fix it (the uploads would otherwise be refused one by one, in the outbox's log). An ingest that cannot be
    reached is not an error (the outbox keeps the captures until it can): the warning is returned instead."""
    url = ingest_url.rstrip("/")
    http = client or httpx.Client(timeout=timeout_s)
    try:
        response = http.get(f"{url}/v1/station", headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return f"ingest service at {url} not reachable ({type(exc).__name__}); station {station!r} not checked"
    finally:
        if client is None:
            http.close()
    register = (
        f"register it on the ingest host with `crux stations add {station} --line {line}` and put the token it "
        f"prints in CRUX_STATION_TOKEN"
    )
    if response.status_code in (401, 403):
        raise StationSetupError(
            f"station {station!r} is not registered at {url} (or its token in CRUX_STATION_TOKEN is wrong or "
            f"revoked): {register}"
        )
    if response.status_code == 404:  # an ingest service older than GET /v1/station: uploads will tell
        return f"ingest service at {url} cannot check stations (HTTP 404); station {station!r} not checked"
    if response.status_code != 200:
        return f"ingest service at {url} answered HTTP {response.status_code}; station {station!r} not checked"
    try:
        body = response.json()
        name, registered_line = str(body["name"]), str(body["line"])
    except (ValueError, KeyError, TypeError):
        return f"ingest service at {url} gave no station; station {station!r} not checked"
    if name != station:
        raise StationSetupError(
            f"the token in CRUX_STATION_TOKEN belongs to station {name!r} at {url}, but this box is set up as station "
            f"{station!r}: the ingest service refuses every upload of {station!r} with this token. Use "
            f"--station {name} (or CRUX_STATION / edge.station), or {register}"
        )
    if registered_line != line:
        raise StationSetupError(
            f"station {station!r} is registered at {url} on line {registered_line!r}, but this box runs line "
            f"{line!r}: its uploads would be refused. Run `crux edge run {registered_line}`, or revoke it "
            f"(`crux stations revoke {station}`) and {register}"
        )
    return None

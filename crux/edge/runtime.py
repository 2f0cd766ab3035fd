"""`crux edge run`: inspect frames with the line's production model and follow new releases without a restart.

- Model updates: a poller thread fetches the remote's current release (crux.ship.fetch.fetch_release: temp folder,
  sha256, Ed25519 signature, sequence/version monotonicity), opens a new ONNX Runtime session, runs it once,
  and only then replaces the model reference. The frame loop reads that reference once per frame, so every
  frame is processed entirely by one complete model and none is dropped or repeated. Any failure keeps the
  running model and is logged (and reported through `on_event`).
- State: `state_dir/models/<version>-<sequence>/` holds verified releases, `state_dir/installed.json` the
  pointer of the running one, so a restart resumes it and still refuses anything older.
- Frames: a watched folder, a glob or paths on stdin. Per frame one JSON record: the `crux predict` contract
  plus verdict (OK/NG), uncertain, kept (why it went to the outbox), latency_ms and the time.
- Fail closed: a frame whose model output has NaN/inf or the wrong shape (`crux.inference.ModelOutputError`) is
  never OK: its record has verdict "error" (the line rejects it), it goes to the outbox for labelling, and the
  heartbeat counts it (`model_errors`). After `edge.rollback_after_model_errors` such frames in a row the edge goes
  back to the previous verified release it keeps on disk and refuses the faulty one from then on (refused.json).
  A frame that cannot be read at all also gets verdict "error" (nothing to keep).
- Outbox: NG frames, uncertain frames and a random sample of OK frames go to `crux.edge.outbox.Outbox`.

Imports only numpy, Pillow, onnxruntime, fsspec and cryptography (no torch, lightning or prefect).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from crux.config import ConfigError
from crux.data.store import sha256_file
from crux.inference import NO_DEFECT_LABEL, ModelOutputError, OnnxModel, Result, contract_record
from crux.monitor.drift import SCORE_BINS, frame_score, score_bin
from crux.postprocess import ImageError, open_image
from crux.ship.fetch import fetch_release
from crux.ship.releases import ReleaseError, read_pointer
from crux.ship.verify import verify_release

if TYPE_CHECKING:
    from crux.edge.outbox import Outbox

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
INSTALLED = "installed.json"
REFUSED = "refused.json"  # releases this box rolled back from: never installed again, restarts included
ERROR_VERDICT = "error"  # the model could not judge the frame: the line treats it as a reject


@dataclass(frozen=True)
class EdgeConfig:
    """params.yaml `edge` (see the why-comments there)."""

    remote: str = "models"
    poll_interval_s: float = 10.0
    state_dir: str = ".crux/edge"
    public_keys: tuple[str, ...] = ("keys/publish.pub",)
    threads: int = 1
    ng_threshold: float | None = None
    box_threshold: float | None = None
    uncertain_margin: float = 0.15
    ok_sample_rate: float = 0.01
    keep_uncertain: bool = True
    watch_interval_s: float = 0.2
    station: str = "edge-1"
    outbox_dir: str = ".crux/edge/outbox"
    outbox_quota_mb: int = 2048
    ingest_url: str | None = None
    heartbeat_interval_s: float = 30.0
    # Model-error frames in a row (NaN/inf or misshapen output) before falling back to the previous verified model.
    rollback_after_model_errors: int = 3

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0 or self.watch_interval_s <= 0 or self.heartbeat_interval_s <= 0:
            raise ConfigError("edge.poll_interval_s, watch_interval_s and heartbeat_interval_s must be > 0")
        if self.threads < 1:
            raise ConfigError(f"edge.threads: {self.threads} must be >= 1")
        for name in ("ng_threshold", "box_threshold"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(f"edge.{name}: {v} must be in 0..1 or null")
        if not 0.0 <= self.uncertain_margin <= 1.0 or not 0.0 <= self.ok_sample_rate <= 1.0:
            raise ConfigError("edge.uncertain_margin and edge.ok_sample_rate must be in 0..1")
        if self.outbox_quota_mb < 1:
            raise ConfigError("edge.outbox_quota_mb must be >= 1")
        if self.rollback_after_model_errors < 1:
            raise ConfigError(f"edge.rollback_after_model_errors: {self.rollback_after_model_errors} must be >= 1")


@dataclass(frozen=True)
class Decision:
    verdict: str  # "OK" | "NG"
    uncertain: bool


def anomaly_uncertain(score: float, threshold: float, margin: float) -> bool:
    """Near the threshold in log-odds: a calibrated anomaly threshold often sits near 0.01, where an absolute
    margin of 0.15 would call every frame uncertain. 4 x margin in logits equals `margin` in probability at 0.5."""
    import math

    def logit(p: float) -> float:
        p = min(max(p, 1e-6), 1 - 1e-6)
        return math.log(p / (1 - p))

    return abs(logit(score) - logit(threshold)) < 4.0 * margin


def decide(model: OnnxModel, result: Result, cfg: EdgeConfig) -> Decision:
    """OK/NG and "uncertain" from a prediction; the thresholds come from the model card unless params override."""
    margin = cfg.uncertain_margin
    if model.kind == "classify":
        assert result.probs is not None
        probs = sorted((float(p) for p in result.probs), reverse=True)
        top_gap = probs[0] - (probs[1] if len(probs) > 1 else 0.0)
        if model.ok_class is None:
            # Every class is a defect type: each image is NG; uncertainty is about which type.
            return Decision("NG", top_gap < margin)
        threshold = model.ng_threshold if cfg.ng_threshold is None else cfg.ng_threshold
        ng_score = 1.0 - result.scores[model.ok_class]
        return Decision("NG" if ng_score >= threshold else "OK", top_gap < margin or abs(ng_score - threshold) < margin)
    if model.kind in ("segment", "anomaly"):
        # The NG score is the peak of the smoothed defect map; the verdict and its margin are taken on it.
        assert result.probs is not None
        threshold = model.ng_threshold if cfg.ng_threshold is None else cfg.ng_threshold
        ng_score = float(result.probs[0])
        if model.kind == "anomaly":
            return Decision("NG" if ng_score >= threshold else "OK", anomaly_uncertain(ng_score, threshold, margin))
        return Decision("NG" if ng_score >= threshold else "OK", abs(ng_score - threshold) < margin)
    threshold = model.box_threshold if cfg.box_threshold is None else cfg.box_threshold
    top = float(result.probs.max()) if result.probs is not None and len(result.probs) else 0.0
    verdict = "NG" if top >= threshold else "OK"
    return Decision(verdict, abs(top - threshold) < margin)


# ----------------------------------------------------------------------------------------------------------------
# Frame sources


def glob_source(pattern: str) -> Iterator[Path]:
    import glob

    for p in sorted(glob.glob(pattern, recursive=True)):
        if Path(p).is_file():
            yield Path(p)


def stdin_source(stream: IO[str]) -> Iterator[Path]:
    for line in stream:
        line = line.strip()
        if line:
            yield Path(line)


def watch_folder(
    folder: Path,
    stop: threading.Event,
    interval_s: float = 0.2,
    existing: bool = False,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> Iterator[Path]:
    """New image files of `folder`, oldest first, each once, once its size stopped changing (a camera may
    still be writing it). Files already there at start are skipped unless `existing`."""
    folder = Path(folder)
    seen: set[str] = set()
    pending: dict[str, tuple[int, int]] = {}

    def scan() -> dict[str, os.stat_result]:
        found = {}
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_file() and entry.name.lower().endswith(tuple(suffixes)) and not entry.name.startswith("."):
                    found[entry.name] = entry.stat()
        return found

    if not existing:
        seen.update(scan())
    while not stop.is_set():
        found = scan()
        ready = []
        for name, st in found.items():
            if name in seen:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if pending.get(name) == sig and st.st_size > 0:
                ready.append((st.st_mtime_ns, name))
            else:
                pending[name] = sig
        for _, name in sorted(ready):
            seen.add(name)
            pending.pop(name, None)
            yield folder / name
        seen.intersection_update(found)  # forget deleted files: bounded memory on a long run
        stop.wait(interval_s)


# ----------------------------------------------------------------------------------------------------------------
# Runtime


@dataclass(frozen=True)
class Running:
    """The model in use and the verified pointer it came from (swapped as one reference)."""

    model: OnnxModel
    pointer: dict[str, Any]
    path: Path

    @property
    def version(self) -> int:
        return int(self.pointer["version"])


class EdgeRuntime:
    def __init__(
        self,
        line_url: str,
        line: str,
        cfg: EdgeConfig,
        public_keys: Sequence[Any],
        state_dir: Path,
        *,
        outbox: Outbox | None = None,
        storage_options: Mapping[str, Any] | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self.line_url = line_url
        self.line = line
        self.cfg = cfg
        self.public_keys = list(public_keys)
        self.state_dir = Path(state_dir)
        self.models_dir = self.state_dir / "models"
        self.outbox = outbox
        self.storage_options = dict(storage_options or {})
        self.on_event = on_event
        self._rng = random.Random(seed)
        self._running: Running | None = None
        self._update_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.frames = 0
        # For the heartbeat (crux.edge.heartbeat): counters since start and the recent frames' (time, latency, NG).
        self.ng = 0
        self.errors = 0
        # Frames the model could not judge (NaN/inf or misshapen output), and how many of them came in a row.
        self.model_errors = 0
        self._model_errors_in_a_row = 0
        self._refused: dict[str, str] = {}  # release identity → why this box rolled back from it
        self.started_at = dt.datetime.now(dt.UTC)
        self.recent: deque[tuple[float, float, bool]] = deque(maxlen=1000)
        # For drift monitoring (crux.monitor.drift): the NG score of every judged frame binned since start (with
        # `ng`, the NG verdicts among them); the heartbeat sends what changed since its last delivered beat.
        self.score_counts = [0] * SCORE_BINS
        self._last_rejection: str | None = None

    # ------------------------------------------------------------------ model management

    @property
    def running(self) -> Running | None:
        return self._running

    def _event(self, name: str, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(name, data)

    def resume(self) -> bool:
        """Load the release installed before a restart (verified again: files may have changed on disk).

        Downloads a killed process left half-done (`models/.incoming-*`) are removed first."""
        if self.models_dir.is_dir():
            for partial in self.models_dir.glob(".incoming-*"):
                shutil.rmtree(partial, ignore_errors=True)
                log.info("removed %s (a download interrupted by a restart)", partial)
        self._refused = _read_refused(self.state_dir / REFUSED)
        path = self.state_dir / INSTALLED
        if not path.is_file():
            return False
        try:
            state = json.loads(path.read_text())
            folder = Path(state["path"])
            self._install(folder, state["pointer"])
            return True
        except (OSError, ValueError, KeyError) as exc:
            log.warning("could not resume the installed model (%s); waiting for the remote", exc)
            self._event("resume_failed", reason=str(exc))
            return False

    def _install(self, folder: Path, pointer: dict[str, Any]) -> None:
        manifest = json.loads((folder / "manifest.json").read_text())
        if pointer.get("line") != self.line or manifest.get("line") != self.line:
            raise ValueError(f"{folder} holds a release of line {manifest.get('line')!r}, not {self.line!r}")
        for name, entry in manifest["files"].items():
            if sha256_file(folder / name) != entry["sha256"]:
                raise ValueError(f"{folder / name} changed on disk since it was verified")
        model = OnnxModel.from_dir(
            folder, version=int(pointer["version"]), threads=self.cfg.threads, model_file=manifest.get("model_file")
        )
        if self.cfg.box_threshold is not None:
            model.box_threshold = self.cfg.box_threshold
        model.warm_up()
        # The swap: one reference assignment, atomic under the GIL; frames already running keep the old model.
        self._running = Running(model, dict(pointer), folder)

    def check_update(self) -> bool:
        """One poll: True when a new release was installed; a rejected release keeps the running model."""
        with self._update_lock:
            running = self._running
            refused = self._refused_reason()
            if refused is not None:  # the remote still points at a release this box rolled back from
                self._rejected(refused, running)
                return False
            try:
                release = fetch_release(
                    self.line_url,
                    self.models_dir,
                    self.public_keys,
                    installed=running.pointer if running else None,
                    storage_options=self.storage_options,
                    line=self.line,
                )
            except ReleaseError as exc:
                self._rejected(str(exc), running)
                return False
            except OSError as exc:
                log.warning("remote unreachable, keeping %s: %s", _describe(running), exc)
                self._event("remote_error", reason=str(exc))
                return False
            if release is None:
                return False
            try:
                self._install(release.path, release.pointer)
            except Exception as exc:  # a release that does not load must never stop inspection
                shutil.rmtree(release.path, ignore_errors=True)
                self._rejected(f"release {release.version} does not load: {exc}", running)
                return False
            self._last_rejection = None
            _write_json(self.state_dir / INSTALLED, {"path": str(release.path), "pointer": release.pointer})
            self._prune(keep={release.path, running.path if running else None})
            log.info("model %s installed (%s)", release.version, release.action)
            self._event("model_swapped", version=release.version, action=release.action, sequence=release.sequence)
            return True

    def _refused_reason(self) -> str | None:
        """Why the remote's current release is refused on this box, or None (also when it cannot be read: then
        fetch_release reports that)."""
        if not self._refused:
            return None
        try:
            pointer = read_pointer(self.line_url, self.public_keys, self.storage_options)
        except (ReleaseError, OSError):
            return None
        if pointer is None or _identity(pointer) not in self._refused:
            return None
        return f"release {pointer['version']} was rolled back on this box: {self._refused[_identity(pointer)]}"

    def _fall_back(self, running: Running, reason: str) -> None:
        """Go back to the previous verified release kept under models/ and refuse `running`'s from now on."""
        with self._update_lock:
            if self._running is not running:
                return  # the poller swapped models meanwhile: the faulty one is gone already
            self._refused[_identity(running.pointer)] = reason
            _write_json(self.state_dir / REFUSED, self._refused)  # first: a crash now must not bring it back
            self._model_errors_in_a_row = 0
            for folder in self._previous_releases(running):
                try:
                    pointer, _ = verify_release(
                        (folder / "pointer.json").read_bytes(),
                        (folder / "manifest.json").read_bytes(),
                        self.public_keys,
                        self.line,
                        where=str(folder),
                    )
                    self._install(folder, pointer)
                except Exception as exc:  # a previous release that does not load is skipped, not fatal
                    log.warning("cannot fall back to %s: %s", folder, exc)
                    continue
                _write_json(self.state_dir / INSTALLED, {"path": str(folder), "pointer": pointer})
                log.error("model %s rolled back to %s: %s", running.version, pointer["version"], reason)
                self._event("model_rolled_back", version=running.version, to=pointer["version"], reason=reason)
                return
            log.error("model %s fails (%s) and no previous verified release is kept: frames stay rejected",
                      running.version, reason)  # fmt: skip
            self._event("rollback_impossible", version=running.version, reason=reason)

    def _previous_releases(self, running: Running) -> list[Path]:
        """Verified release folders other than the running one, newest pointer first (fetch_release names them
        <version>-<sequence>)."""
        if not self.models_dir.is_dir():
            return []
        found = [
            d
            for d in self.models_dir.iterdir()
            if d.is_dir() and not d.name.startswith(".") and d != running.path and (d / "pointer.json").is_file()
        ]
        return sorted(found, key=lambda d: d.name.rsplit("-", 1)[-1], reverse=True)

    def _rejected(self, reason: str, running: Running | None) -> None:
        """Log and report a rejected release once: the same rejection on every poll is not news."""
        if reason == self._last_rejection:
            log.debug("update still rejected: %s", reason)
            return
        self._last_rejection = reason
        log.warning("update rejected, keeping %s: %s", _describe(running), reason)
        self._event("update_rejected", reason=reason, running=running.version if running else None)

    def _prune(self, keep: set[Path | None]) -> None:
        # Keep the new and the previous release (instant local fallback); drop older ones.
        if not self.models_dir.is_dir():
            return
        for d in self.models_dir.iterdir():
            if d not in keep and not d.name.startswith("."):
                shutil.rmtree(d, ignore_errors=True)

    def start_polling(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.cfg.poll_interval_s):
                self.check_update()

        self._poller = threading.Thread(target=loop, name="crux-edge-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)

    def wait_for_model(self, timeout_s: float | None = None) -> Running:
        """Block until a model runs (first start of an edge box with nothing installed yet)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._running is None:
            if self.check_update():
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("no acceptable model on the remote")
            if self._stop.wait(min(self.cfg.poll_interval_s, 1.0)):
                raise TimeoutError("stopped before a model was available")
        assert self._running is not None
        return self._running

    # ------------------------------------------------------------------ frames

    def process(self, image: Path | str) -> dict[str, Any]:
        """One frame → its JSON record (the predict contract + verdict, uncertain, kept, latency_ms, at)."""
        running = self._running  # read once: this frame uses exactly this model from start to end
        if running is None:
            raise RuntimeError("no model installed (call wait_for_model first)")
        started = time.perf_counter()
        name = str(image)
        try:
            data = Path(image).read_bytes()
            result = running.model.predict_bytes(data)
            if not _finite(result):  # check_raw makes this unreachable; a NaN must still never be an OK part
                raise ModelOutputError(f"{running.model.path}: a non-finite score after decoding")
        except ModelOutputError as exc:  # the model, not the frame: fail closed and keep the frame
            return self._model_error(name, data, Path(image), str(exc), running, started)
        except (OSError, ValueError, ImageError) as exc:  # this frame only: inspection goes on
            self.frames += 1
            self.errors += 1
            error = f"{type(exc).__name__}: {exc}"
            return {"image": name, "error": error, "verdict": ERROR_VERDICT, "model_version": running.version}
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._model_errors_in_a_row = 0
        decision = decide(running.model, result, self.cfg)
        record = contract_record(name, result, running.version)
        kept = self._keep_reason(decision)
        at = dt.datetime.now(dt.UTC)
        record.update(
            verdict=decision.verdict,
            uncertain=decision.uncertain,
            kept=kept,
            latency_ms=round(latency_ms, 3),
            at=at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        )
        if kept is not None and self.outbox is not None:
            self._enqueue(data, Path(image), record, decision, running, at)
        # The frame's score bin before its NG count: a heartbeat reading the NG count first never sees more NG
        # frames than binned ones (crux.edge.heartbeat.ScoreSnapshot).
        self.score_counts[score_bin(frame_score(running.model.kind, result, running.model.ok_class))] += 1
        self.frames += 1
        self.ng += decision.verdict == "NG"
        self.recent.append((time.monotonic(), latency_ms, decision.verdict == "NG"))  # deque.append: thread-safe
        return record

    def _model_error(
        self, name: str, data: bytes, path: Path, error: str, running: Running, started: float
    ) -> dict[str, Any]:
        """A frame the model could not judge: rejected ("error" verdict), kept for labelling, counted; after
        `rollback_after_model_errors` in a row, the previous verified model takes over."""
        latency_ms = (time.perf_counter() - started) * 1000.0
        at = dt.datetime.now(dt.UTC)
        self.frames += 1
        self.errors += 1
        self.model_errors += 1
        self._model_errors_in_a_row += 1
        self.recent.append((time.monotonic(), latency_ms, True))  # a reject, like an NG part
        record: dict[str, Any] = {
            "image": name,
            "error": error,
            "verdict": ERROR_VERDICT,
            "kept": "model_error" if self.outbox is not None else None,
            "model_version": running.version,
            "latency_ms": round(latency_ms, 3),
            "at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if self.outbox is not None:
            empty: dict[str, Any] = {"label": None, "scores": {}, "boxes": []}
            self._enqueue(data, path, empty, Decision("NG", True), running, at)
        if self._model_errors_in_a_row >= self.cfg.rollback_after_model_errors:
            self._fall_back(running, f"{self._model_errors_in_a_row} frames in a row without a usable output: {error}")
        return record

    def _keep_reason(self, decision: Decision) -> str | None:
        if decision.verdict == "NG":
            return "ng"
        if decision.uncertain and self.cfg.keep_uncertain:
            return "uncertain"
        if self._rng.random() < self.cfg.ok_sample_rate:
            return "sample"
        return None

    def _enqueue(
        self, data: bytes, path: Path, record: Mapping[str, Any], decision: Decision, running: Running, at: dt.datetime
    ) -> None:
        assert self.outbox is not None
        boxes = [
            {"class": b["label"], "box": b["xyxy"], "score": b["score"]}
            for b in record["boxes"]
            if b["xyxy"][0] < b["xyxy"][2] and b["xyxy"][1] < b["xyxy"][3]
        ]
        # A segmenter's regions travel as boxes with their mask (COCO RLE): annotators get them pre-segmented.
        boxes += [
            {"class": r["label"], "box": r["xyxy"], "score": r["score"], "mask": r["mask"]["counts"]}
            for r in record.get("regions") or ()
        ]
        metadata = {
            "station": self.cfg.station,
            "line": self.line,
            "captured_at": at.isoformat().replace("+00:00", "Z"),
            "model_version": f"{self.line}.v{running.version}",
            "prediction": None
            if record["label"] is None or (record["label"] == NO_DEFECT_LABEL and running.model.kind != "classify")
            else record["label"],
            "verdict": decision.verdict.lower(),
            "scores": record["scores"],
            "boxes": boxes,
            "original_name": _safe_name(path.name),
        }
        suffix = path.suffix.lower()
        content_type = {".png": "image/png", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}.get(
            suffix, "image/jpeg"
        )
        try:
            self.outbox.enqueue(
                data, metadata, ng=decision.verdict == "NG", content_type=content_type, filename=path.name
            )
        except Exception as exc:  # a full disk must not stop inspection; the record says it was not kept
            log.error("outbox: %s", exc)
            self._event("outbox_error", reason=str(exc))

    def run(
        self,
        frames: Iterable[Path | str],
        emit: Callable[[dict[str, Any]], None],
        poll: bool = True,
    ) -> int:
        """Process every frame of `frames` in order, emitting one record each; returns the frame count."""
        self.resume()
        self.wait_for_model()
        if poll:
            self.start_polling()
        n = 0
        try:
            for frame in frames:
                emit(self.process(frame))
                n += 1
                if self._stop.is_set():
                    break
        finally:
            self.stop()
        return n


def _identity(pointer: Mapping[str, Any]) -> str:
    """One release event: its version, sequence and manifest hash (a later re-publish of the same bytes is a new
    event the box may try again)."""
    return f"{pointer.get('version')}-{pointer.get('sequence')}-{pointer.get('manifest_sha256')}"


def _read_refused(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable (%s): no release is refused", path, exc)
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _finite(result: Result) -> bool:
    import math

    return math.isfinite(result.score) and all(math.isfinite(v) for v in result.scores.values())


def _describe(running: Running | None) -> str:
    return "no model" if running is None else f"version {running.version}"


def _safe_name(name: str) -> str | None:
    import re

    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64].lstrip("._-")
    return cleaned.replace("..", "_") or None


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------------------------
# Live view


class LiveView:
    """Counters and the last frames, for a rich.live.Live on stderr (JSON lines stay on stdout)."""

    def __init__(self, last: int = 10, overlay_path: Path | None = None) -> None:
        self.last: deque[dict[str, Any]] = deque(maxlen=last)
        # Where the last NG frame of a segmentation model is drawn with its regions (a terminal shows no pixels).
        self.overlay_path = overlay_path
        self.overlay_of: str | None = None
        self.counts = {"frames": 0, "NG": 0, "uncertain": 0, "kept": 0, "errors": 0}
        self.latencies: deque[float] = deque(maxlen=500)

    def update(self, record: Mapping[str, Any]) -> None:
        self.counts["frames"] += 1
        if "error" in record:
            self.counts["errors"] += 1
        else:
            self.counts["NG"] += record.get("verdict") == "NG"
            self.counts["uncertain"] += bool(record.get("uncertain"))
            self.counts["kept"] += record.get("kept") is not None
            self.latencies.append(float(record["latency_ms"]))
            if record.get("verdict") == "NG" and record.get("regions") and self.overlay_path is not None:
                self._draw_overlay(record)
        self.last.append(dict(record))

    def _draw_overlay(self, record: Mapping[str, Any]) -> None:
        from PIL import Image, ImageDraw

        from crux.postprocess import rle_decode

        try:
            with open_image(record["image"]) as img:
                base = img.convert("RGB")
        except (OSError, ImageError):
            return
        red = Image.new("RGB", base.size, (230, 30, 30))
        for region in record["regions"]:
            h, w = region["mask"]["size"]
            if (w, h) != base.size:
                continue
            alpha = Image.fromarray((rle_decode(region["mask"]["counts"], h, w) * 120).astype("uint8"))
            base = Image.composite(red, base, alpha)
        draw = ImageDraw.Draw(base)
        for region in record["regions"]:
            draw.rectangle(list(region["xyxy"]), outline=(255, 220, 0))
            draw.text((region["xyxy"][0], max(0, region["xyxy"][1] - 11)), region["label"], fill=(255, 220, 0))
        assert self.overlay_path is not None
        self.overlay_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.overlay_path.with_name(self.overlay_path.name + ".tmp.png")
        base.save(tmp, format="PNG")
        tmp.replace(self.overlay_path)  # a viewer never sees half a file
        self.overlay_of = Path(record["image"]).name

    def render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        lat = sorted(self.latencies)
        p50 = lat[len(lat) // 2] if lat else 0.0
        # Cells are Text, never markup: file names, class names and error messages may hold "[...]".
        table = Table(
            title=Text(
                f"crux edge — {self.counts['frames']} frames, NG {self.counts['NG']}, "
                f"uncertain {self.counts['uncertain']}, kept {self.counts['kept']}, p50 {p50:.1f} ms"
            ),
            caption=Text(f"last NG overlay: {self.overlay_path} ({self.overlay_of})") if self.overlay_of else None,
        )
        for col in ("image", "verdict", "label", "score", "boxes / regions", "model", "ms"):
            table.add_column(col)
        for r in self.last:
            name, version = Text(Path(r["image"]).name), Text(str(r.get("model_version")))
            if "error" in r:
                table.add_row(name, Text("ERROR", style="bold red"), Text(r["error"][:40]), "", "", version, "")
                continue
            style = "bold red" if r["verdict"] == "NG" else "green"
            table.add_row(
                name,
                Text(r["verdict"], style=style),
                Text(str(r["label"])),
                f"{r['score']:.3f}",
                Text(_findings(r)),
                version,
                f"{r['latency_ms']:.1f}",
            )
        return table


def _findings(record: Mapping[str, Any]) -> str:
    """Boxes as a count; a segmenter's regions as count and the largest one's class and area."""
    regions = record.get("regions")
    if regions is None:
        return str(len(record["boxes"]))
    if not regions:
        return "0"
    return f"{len(regions)}: {regions[0]['label']} {regions[0]['area']} px"

"""Fixture data for the drift monitor: a tiny classifier exported with its validation reference and published, and
synthetic frames streamed through the real edge runtime (outbox uploads and heartbeats to a real ingest service):
steady frames drawn like the validation split, or shifted ones (a lighting change, a new defect type)."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crux.collect import IngestSettings, add_station, create_db_engine, migrate
from crux.collect.ingest_server import running_server
from crux.monitor.drift import MonitorConfig
from crux.monitor.watch import check_line, release_reference
from crux.ship.signing import load_public_keys

DRIFT_LINE = "line-a"
# Small windows and queues: a test streams a few hundred frames, not a shift's worth of production.
TEST_MONITOR = MonitorConfig(min_frames=100, window_s=3600.0, queue_max=25)


def draw_frame(rng: np.random.Generator, size: int, shift: str | None) -> bytes:
    """A frame like crux.data.synthetic_versions draws (grey texture, sometimes a scratch or a spot), or shifted:
    `lighting` = 70 grey levels brighter and less contrast (a lamp replaced); `defect` = a large dark smear no class
    describes (a new defect type)."""
    from PIL import Image, ImageDraw

    level = 198 if shift == "lighting" else 128
    spread = 6 if shift == "lighting" else 12
    img = Image.fromarray(rng.normal(level, spread, (size, size)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    pick = int(rng.integers(0, 3))
    w, h = int(rng.integers(size // 6, size // 3)), int(rng.integers(size // 6, size // 3))
    x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
    if pick == 1:
        draw.rectangle([x, y, x + w, y + max(4, h // 3)], fill=235)
    elif pick == 2:
        draw.ellipse([x, y, x + w, y + h], fill=25)
    if shift == "defect":
        draw.polygon([(0, size // 2), (size // 2, 0), (size, size // 3), (size // 3, size)], fill=5)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_frames(folder: Path, n: int, shift: str | None, seed: int, size: int = 48) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{shift or 'steady'}-{seed}-{i:04d}.png"
        path.write_bytes(draw_frame(rng, size, shift))
        paths.append(path)
    return paths


def publish_with_reference(tmp: Path, remote: Path, line: str = DRIFT_LINE, reference: bool = True) -> tuple[Any, Path]:
    """A tiny classifier exported from a prepared synthetic dataset (so the card holds the val split's reference,
    `reference=False` drops it as a card from before the monitor would) and published; returns (key, public key)."""
    import json

    from edge_support import HEALTHY_METRICS, tiny_bundle

    from crux.data.synthetic_versions import write_synthetic_dataset
    from crux.ship.export import ExportConfig, export
    from crux.ship.gate import GateConfig
    from crux.ship.publish import publish
    from crux.ship.signing import generate_private_key, public_key_pem
    from crux.train.prepare import prepare
    from crux.train.recipe import DataConfig

    data = write_synthetic_dataset(tmp / "dataset", "classify", n_per_split=(6, 240, 6), size=48, seed=1)
    prepare(data, tmp / "prepared", DataConfig(kind="classify", image_size=32, channels=1))
    bundle = tiny_bundle(tmp / "bundle" / "model.pt", "classify", seed=0)
    out = tmp / "export"
    card = export(
        bundle,
        out,
        ExportConfig(exporter="torchscript", parity_images=4),
        metrics=HEALTHY_METRICS["classify"],
        prepared_dir=tmp / "prepared",
    )
    if not reference:
        card.pop("monitor_reference")
        (out / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    key = generate_private_key()
    publish(str(remote), line, out, key, GateConfig())
    pub = tmp / "keys" / "publish.pub"
    pub.parent.mkdir(parents=True, exist_ok=True)
    pub.write_bytes(public_key_pem(key.public_key()))
    return key, pub


def stream(
    tmp: Path, remote: Path, public_key: Path, ingest_url: str, token: str, station: str, frames: list[Path]
) -> Any:
    """`frames` through a real edge runtime of DRIFT_LINE with its outbox (captures uploaded) and one heartbeat at
    the end; returns the runtime."""
    from crux.edge.heartbeat import HeartbeatSender
    from crux.edge.outbox import Outbox
    from crux.edge.runtime import EdgeConfig, EdgeRuntime
    from crux.ship.signing import load_public_keys

    state = tmp / f"edge-{station}"
    outbox = Outbox(state / "outbox", ingest_url, token, fsync=False)
    outbox.start()
    # ok_sample_rate 0.2: OK frames are sampled too, so a shift among OK-looking frames reaches the queue.
    cfg = EdgeConfig(station=station, ok_sample_rate=0.2)
    runtime = EdgeRuntime(
        f"{remote}/{DRIFT_LINE}", DRIFT_LINE, cfg, load_public_keys([public_key]), state, outbox=outbox, seed=0
    )
    try:
        runtime.run(frames, lambda record: None, poll=False)
        assert outbox.drain(60), "the outbox did not empty"
    finally:
        outbox.stop()
    sender = HeartbeatSender(ingest_url, token, runtime, None, 30.0)
    try:
        assert sender.beat(), "the heartbeat did not arrive"
    finally:
        sender.stop(final=False)
    return runtime


@dataclass(frozen=True)
class Stream:
    """A published line and an ingest database that the streams of `stations` went into."""

    tmp: Path
    remote: Path
    public_key: Path
    database_url: str
    stations: tuple[str, ...]


def streamed(tmp: Path, shifts: dict[str, str | None], reference: bool = True) -> Stream:
    """Publish the line, then stream 200 frames per station through a real ingest service (shift None: steady)."""
    remote = tmp / "remote"
    _, pub = publish_with_reference(tmp, remote, reference=reference)
    settings = IngestSettings(database_url=f"sqlite:///{tmp}/ingest.db", storage_url=str(tmp / "images"))
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    tokens = {station: add_station(engine, station, DRIFT_LINE) for station in shifts}
    with running_server(settings) as url:
        for seed, (station, shift) in enumerate(shifts.items()):
            frames = write_frames(tmp / "frames" / station, 200, shift, seed=10 + seed)
            stream(tmp, remote, pub, url, tokens[station], station, frames)
    engine.dispose()
    return Stream(tmp, remote, pub, settings.database_url, tuple(shifts))


def check(s: Stream, now: dt.datetime | None = None) -> list[Any]:
    """One monitor check of DRIFT_LINE (production v1) against the cards on the signed remote."""
    keys = load_public_keys([s.public_key])
    engine = create_db_engine(s.database_url)
    try:
        return check_line(
            engine,
            DRIFT_LINE,
            lambda v: None if v is None else release_reference(str(s.remote), DRIFT_LINE, v, keys),
            1,
            TEST_MONITOR,
            now or dt.datetime.now(dt.UTC),
        )
    finally:
        engine.dispose()

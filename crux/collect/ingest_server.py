"""Helpers to run a real ingest server on a free loopback port (tests, benchmarks, demos)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from crux.collect.ingest_settings import IngestSettings


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 trick; tiny race, fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(settings: IngestSettings, port: int | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """Run uvicorn with `create_app(settings)` in a thread; yield its base URL; stop it on exit."""
    from crux.collect.ingest_app import create_app

    with running_app(create_app(settings), "ingest server", port, host) as url:
        yield url


@contextlib.contextmanager
def running_app(app: Any, name: str, port: int | None = None, host: str = "127.0.0.1") -> Iterator[str]:
    """Any ASGI app under uvicorn in a thread on `port` (default a free one); yields its base URL."""
    import uvicorn

    port = free_port(host) if port is None else port
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"{name}-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} on {host}:{port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def make_jpeg(seed: int, size: int = 200, quality: int = 85) -> bytes:
    """A distinct small JPEG per seed (different bytes, so different content keys)."""
    import io

    from PIL import Image

    image = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 101) % 256, (seed * 7) % 256))
    # Encode the seed into a few pixels so that colour collisions still give distinct images.
    for bit in range(24):
        if seed >> bit & 1:
            image.putpixel((bit, 0), (255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def capture_metadata(station: str, line: str, **extra: object) -> dict[str, object]:
    """Valid metadata for POST /v1/captures, overridable field by field."""
    meta: dict[str, object] = {
        "station": station,
        "line": line,
        "captured_at": "2025-03-01T08:00:00Z",
        "model_version": "neu-det-v3",
        "prediction": "scratches",
        "verdict": "ng",
        "scores": {"scratches": 0.81, "crazing": 0.19},
        "boxes": [{"class": "scratches", "box": [10.0, 20.0, 60.0, 90.0], "score": 0.81}],
    }
    meta.update(extra)
    return meta

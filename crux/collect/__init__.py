"""Ingest service: edge stations upload captures (image + prediction) over HTTP into a database and
an fsspec image store; the collect flow later turns unsent captures into Label Studio tasks.

Heavy modules (FastAPI, SQLAlchemy, Alembic) load only when these names are used.
"""

from __future__ import annotations

from typing import Any

from crux.collect.ingest_settings import IngestSettings

_LAZY = {
    "create_app": "crux.collect.ingest_app",
    "serve": "crux.collect.ingest_app",
    "create_db_engine": "crux.collect.db",
    "migrate": "crux.collect.db",
    "add_station": "crux.collect.stations",
    "revoke_station": "crux.collect.stations",
    "list_stations": "crux.collect.stations",
    "StationError": "crux.collect.stations",
    "list_captures": "crux.collect.records",
    "list_unsent": "crux.collect.records",
    "mark_sent": "crux.collect.records",
    "mark_labeled": "crux.collect.records",
    "CaptureRecord": "crux.collect.records",
    "CaptureMetadata": "crux.collect.schemas",
}

__all__ = ["IngestSettings", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crux.collect' has no attribute {name!r}")

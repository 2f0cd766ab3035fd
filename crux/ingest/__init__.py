"""Ingest service: edge stations upload captures (image + prediction) over HTTP into a database and
an fsspec image store; the collect flow later turns unsent captures into Label Studio tasks.

Heavy modules (FastAPI, SQLAlchemy, Alembic) load only when these names are used.
"""

from __future__ import annotations

from typing import Any

from crux.ingest.settings import IngestSettings

_LAZY = {
    "create_app": "crux.ingest.app",
    "serve": "crux.ingest.app",
    "create_db_engine": "crux.ingest.db",
    "migrate": "crux.ingest.db",
    "add_station": "crux.ingest.stations",
    "revoke_station": "crux.ingest.stations",
    "list_stations": "crux.ingest.stations",
    "StationError": "crux.ingest.stations",
    "list_captures": "crux.ingest.records",
    "list_unsent": "crux.ingest.records",
    "mark_sent": "crux.ingest.records",
    "mark_labeled": "crux.ingest.records",
    "CaptureRecord": "crux.ingest.records",
    "CaptureMetadata": "crux.ingest.schemas",
}

__all__ = ["IngestSettings", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'crux.ingest' has no attribute {name!r}")

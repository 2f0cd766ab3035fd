"""Settings of the ingest service: one frozen value, built by the CLI from params.yaml `ingest:`."""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field

from crux.postprocess import MAX_PIXELS

# A 200-px inspection JPEG is ~10 KiB; 8 MiB leaves room for full-resolution line-scan crops while
# still refusing anything that would let one client fill the disk in a few requests.
DEFAULT_MAX_IMAGE_BYTES = 8 * 1024 * 1024
# Metadata is a few hundred bytes; a cap stops "JSON bombs" (deep or huge documents) early.
DEFAULT_MAX_METADATA_BYTES = 64 * 1024
# Decompression bombs: a tiny PNG can declare 100k x 100k pixels; refuse before decoding (the common limit).
DEFAULT_MAX_PIXELS = MAX_PIXELS


@dataclass(frozen=True)
class IngestSettings:
    """Everything `create_app` needs; no field is read from the environment by library code."""

    # SQLAlchemy URL. SQLite (WAL mode) is the zero-setup default; postgresql+psycopg://... works too.
    database_url: str = "sqlite:///.crux/ingest/ingest.db"
    # fsspec URL of the image store: a local folder, or s3://bucket/prefix (needs s3fs).
    storage_url: str = ".crux/ingest/images"
    # Passed to fsspec for the storage URL, e.g. {"endpoint_url": "http://127.0.0.1:9000"} for MinIO/moto.
    storage_options: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Declared content types accepted for the image part; the decoded format must agree with it.
    content_types: tuple[str, ...] = ("image/jpeg", "image/png")
    # Largest page of GET /v1/captures.
    max_page_size: int = 500
    # uvicorn worker processes (`crux ingest serve --workers` overrides): one per core the service may use.
    # SQLite serialises writers, so more than one worker pays off on PostgreSQL.
    workers: int = 1
    # Database connections each worker keeps open for uploads (PostgreSQL; SQLite ignores it). An upload holds one
    # only for a statement, so 20 serve the thread pool's 40; overflow connections are opened and closed per burst,
    # which cost PostgreSQL more CPU than the uploads' statements (bench/ingest.py: 1.3 vs 0.5 ms a capture), so none
    # by default. workers x (db_pool_size + db_max_overflow + 3 for listings and heartbeats) must stay below the
    # server's max_connections (100 by default).
    db_pool_size: int = 20
    db_max_overflow: int = 0

    def __post_init__(self) -> None:
        if self.db_max_overflow < 0:
            raise ValueError(f"ingest.db_max_overflow must be >= 0, got {self.db_max_overflow}")
        for name in ("max_image_bytes", "max_metadata_bytes", "max_pixels", "max_page_size", "workers", "db_pool_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ingest.{name} must be positive, got {getattr(self, name)}")
        unknown = sorted(set(self.content_types) - set(CONTENT_TYPE_FORMATS))
        if unknown:
            raise ValueError(
                f"ingest.content_types: unsupported {', '.join(unknown)}; known: {', '.join(CONTENT_TYPE_FORMATS)}"
            )
        if not self.content_types:
            raise ValueError("ingest.content_types: at least one content type is required")

    @property
    def max_body_bytes(self) -> int:
        """The whole multipart request: image + metadata + multipart framing."""
        return self.max_image_bytes + self.max_metadata_bytes + 16 * 1024


# Declared content type -> (Pillow format, file extension in the store).
CONTENT_TYPE_FORMATS: Mapping[str, tuple[str, str]] = types.MappingProxyType(
    {
        "image/jpeg": ("JPEG", "jpg"),
        "image/png": ("PNG", "png"),
        "image/bmp": ("BMP", "bmp"),
        "image/tiff": ("TIFF", "tif"),
        "image/webp": ("WEBP", "webp"),
    }
)

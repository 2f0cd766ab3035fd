"""Database: SQLAlchemy 2 tables, engine creation (SQLite in WAL mode) and Alembic migrations.

The schema is owned by the Alembic scripts shipped in `crux/collect/migrations`; the table objects
below mirror them for queries and are checked against them in the tests.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from crux.errors import CruxError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

metadata = sa.MetaData()

stations = sa.Table(
    "stations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("line", sa.String(64), nullable=False),
    # sha256 of the bearer token; the token itself is shown once and never stored.
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("revoked_at", sa.DateTime, nullable=True),
)

captures = sa.Table(
    "captures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("station_id", sa.Integer, sa.ForeignKey("stations.id"), nullable=False),
    # Denormalised so that filters need no join and a renamed/revoked station keeps its history.
    sa.Column("station", sa.String(64), nullable=False),
    sa.Column("line", sa.String(64), nullable=False),
    sa.Column("captured_at", sa.DateTime, nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("image_key", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(32), nullable=False),
    sa.Column("size_bytes", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("original_name", sa.String(255), nullable=True),
    sa.Column("model_version", sa.String(128), nullable=True),
    sa.Column("prediction", sa.String(64), nullable=True),
    sa.Column("verdict", sa.String(2), nullable=True),
    sa.Column("scores", sa.JSON, nullable=False),
    sa.Column("boxes", sa.JSON, nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    # Set by the collect flow once the capture is a Label Studio task.
    sa.Column("ls_project", sa.String(64), nullable=True),
    sa.Column("ls_task_id", sa.Integer, nullable=True),
    sa.Column("sent_at", sa.DateTime, nullable=True),
    # Set once an annotation for the task has been exported.
    sa.Column("labeled_at", sa.DateTime, nullable=True),
    sa.UniqueConstraint("station_id", "idempotency_key", name="uq_captures_station_idempotency"),
    sa.Index("ix_captures_line_id", "line", "id"),
    sa.Index("ix_captures_station_id", "station", "id"),
    sa.Index("ix_captures_captured_at", "captured_at"),
    sa.Index("ix_captures_sent_at", "sent_at"),
    sa.Index("ix_captures_sha256", "sha256"),
    # Migration 0002, for the console: per-line counts of the last 24 h and of captures waiting for labels
    # read only the index (100,000 captures in milliseconds).
    sa.Index("ix_captures_line_captured_at", "line", "captured_at", "verdict"),
    sa.Index("ix_captures_line_labeled_at", "line", "labeled_at"),
)

# Migration 0002: the latest heartbeat of each station (`crux edge run` posts one at an interval); one row per
# station, replaced on every heartbeat, so the table stays as small as the fleet.
station_heartbeats = sa.Table(
    "station_heartbeats",
    metadata,
    sa.Column("station_id", sa.Integer, sa.ForeignKey("stations.id"), primary_key=True, autoincrement=False),
    sa.Column("station", sa.String(64), nullable=False),
    sa.Column("line", sa.String(64), nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=True),
    sa.Column("model_version", sa.Integer, nullable=True),
    sa.Column("frames", sa.Integer, nullable=False),
    sa.Column("ng", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("fps", sa.Float, nullable=True),
    sa.Column("latency_p50_ms", sa.Float, nullable=True),
    sa.Column("ng_rate", sa.Float, nullable=True),
    sa.Column("outbox_pending", sa.Integer, nullable=True),
    sa.Column("outbox_bytes", sa.BigInteger, nullable=True),
    sa.Column("interval_s", sa.Float, nullable=True),
    # Migration 0003: frames the model could not judge (NaN/inf or misshapen output); null from older edges.
    sa.Column("model_errors", sa.Integer, nullable=True),
)

# Migration 0004: every heartbeat kept as a time series for the station page's history and the drift monitor (each
# beat carries the histogram of the scores of the frames judged since the previous one); rows older than
# crux.collect.heartbeats.HISTORY_RETENTION are dropped as new ones arrive, so the table stays bounded.
heartbeat_history = sa.Table(
    "heartbeat_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("station_id", sa.Integer, sa.ForeignKey("stations.id"), nullable=False),
    sa.Column("station", sa.String(64), nullable=False),
    sa.Column("line", sa.String(64), nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Column("model_version", sa.Integer, nullable=True),
    sa.Column("frames", sa.Integer, nullable=False),
    sa.Column("ng", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("fps", sa.Float, nullable=True),
    sa.Column("latency_p50_ms", sa.Float, nullable=True),
    sa.Column("ng_rate", sa.Float, nullable=True),
    # Frames judged since the previous beat: NG among them and their score histogram (null from older edges).
    sa.Column("window_ng", sa.Integer, nullable=True),
    sa.Column("score_hist", sa.JSON, nullable=True),
    sa.Index("ix_heartbeat_history_station_at", "station_id", "received_at"),
    sa.Index("ix_heartbeat_history_line_at", "line", "received_at"),
)

# Migration 0004: drift alarms of a line (station null) or one station, raised by crux.monitor.watch; an alarm stays
# open until a later check of the same scope finds no shift (cleared_at).
drift_alarms = sa.Table(
    "drift_alarms",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("line", sa.String(64), nullable=False),
    sa.Column("station", sa.String(64), nullable=True),
    sa.Column("model_version", sa.Integer, nullable=True),
    sa.Column("raised_at", sa.DateTime, nullable=False),
    sa.Column("window_start", sa.DateTime, nullable=False),
    sa.Column("window_end", sa.DateTime, nullable=False),
    sa.Column("frames", sa.Integer, nullable=False),
    sa.Column("psi", sa.Float, nullable=True),
    sa.Column("ks_p", sa.Float, nullable=True),
    sa.Column("ng_rate", sa.Float, nullable=True),
    sa.Column("ref_ng_rate", sa.Float, nullable=True),
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Column("queued", sa.Integer, nullable=False),
    sa.Column("cleared_at", sa.DateTime, nullable=True),
    sa.Index("ix_drift_alarms_line_cleared", "line", "cleared_at"),
)

# Migration 0004: the latest drift check of each scope (a station, or a whole line: station ""), replaced by every
# check, so the console can say "no shift", "no reference" or "too few frames" where no alarm is open.
drift_checks = sa.Table(
    "drift_checks",
    metadata,
    sa.Column("line", sa.String(64), primary_key=True),
    sa.Column("station", sa.String(64), primary_key=True),
    sa.Column("checked_at", sa.DateTime, nullable=False),
    sa.Column("model_version", sa.Integer, nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("frames", sa.Integer, nullable=False),
    sa.Column("psi", sa.Float, nullable=True),
    sa.Column("ks_p", sa.Float, nullable=True),
    sa.Column("ng_rate", sa.Float, nullable=True),
    sa.Column("ref_ng_rate", sa.Float, nullable=True),
)

# Migration 0004: captures an alarm queued for labelling ahead of the rest (crux.collect.labeling sends them first).
drift_queue = sa.Table(
    "drift_queue",
    metadata,
    sa.Column("capture_id", sa.Integer, sa.ForeignKey("captures.id"), primary_key=True, autoincrement=False),
    sa.Column("alarm_id", sa.Integer, sa.ForeignKey("drift_alarms.id"), nullable=False),
    sa.Column("line", sa.String(64), nullable=False),
    sa.Column("queued_at", sa.DateTime, nullable=False),
    sa.Index("ix_drift_queue_line", "line"),
)


def utcnow() -> dt.datetime:
    """Naive UTC: the database stores naive UTC everywhere so SQLite and PostgreSQL compare alike."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def to_naive_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def to_aware_utc(value: dt.datetime | None) -> dt.datetime | None:
    return None if value is None else value.replace(tzinfo=dt.UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (GET /v1/captures, the collect flow) never block the writer, and a commit is one
    # append to the log. synchronous=NORMAL keeps the database consistent after power loss; at worst
    # the last commits are lost, which the edge outbox covers by retrying with the same Idempotency-Key.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # The CLI (stations add) and the server may write at the same moment; wait instead of failing.
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class DatabaseUrlError(CruxError, ValueError):
    """`ingest.database_url` is not a URL of a database the ingest service can use."""


# The schemes the migrations are written and tested for; another dialect may parse but would fail at the first query.
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


def create_db_engine(
    database_url: str, pool_size: int = 5, max_overflow: int = 10, *, pre_ping: bool = True, autocommit: bool = False
) -> Engine:
    """An engine for `database_url`; SQLite files get their folder created and WAL pragmas set. `pool_size` and
    `max_overflow` size PostgreSQL's connection pool (SQLAlchemy's defaults unless the ingest service says);
    `pre_ping` tests each pooled connection before use (see `_engine`); `autocommit` makes every statement its own
    transaction, set once when a connection opens (for callers whose statements each stand alone)."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"ingest.database_url {database_url!r} is not a database URL ({exc})") from None
    if url.get_backend_name() not in SUPPORTED_BACKENDS:
        raise DatabaseUrlError(
            f"ingest.database_url: {url.drivername!r} is not supported; use sqlite:///path or postgresql+psycopg://"
        )
    try:
        return _engine(url, pool_size, max_overflow, pre_ping, autocommit)
    except (NoSuchModuleError, ImportError) as exc:  # a driver that is not installed (postgresql+pg8000, …)
        raise DatabaseUrlError(f"ingest.database_url: driver {url.drivername!r} is not installed ({exc})") from None


def _engine(url: Any, pool_size: int, max_overflow: int, pre_ping: bool, autocommit: bool) -> Engine:
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False}, **options)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pool_pre_ping: after a database restart, a ping per checkout instead of one failed statement per pooled
    # connection. The ingest service turns it off: an upload checks out twice, so the pings were a third of its
    # round trips, and a request that meets a dead connection fails (500) and invalidates the whole pool, after
    # which the edge's outbox retries it with the same Idempotency-Key. LIFO keeps the hot connections hot.
    return sa.create_engine(
        url, pool_pre_ping=pre_ping, pool_size=pool_size, max_overflow=max_overflow, pool_use_lifo=True, **options
    )


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` with the Alembic scripts shipped inside the package."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        # env.py takes the connection from here instead of reading alembic.ini or the environment.
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()

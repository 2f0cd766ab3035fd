"""Heartbeats kept as a time series (bounded retention) with each beat's score histogram, drift alarms, the latest
drift check of each station and line, and the captures an alarm queued for labelling first.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "heartbeat_history",
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
        sa.Column("window_ng", sa.Integer, nullable=True),
        sa.Column("score_hist", sa.JSON, nullable=True),
    )
    op.create_index("ix_heartbeat_history_station_at", "heartbeat_history", ["station_id", "received_at"])
    op.create_index("ix_heartbeat_history_line_at", "heartbeat_history", ["line", "received_at"])
    op.create_table(
        "drift_alarms",
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
    )
    op.create_index("ix_drift_alarms_line_cleared", "drift_alarms", ["line", "cleared_at"])
    op.create_table(
        "drift_checks",
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
    op.create_table(
        "drift_queue",
        sa.Column("capture_id", sa.Integer, sa.ForeignKey("captures.id"), primary_key=True, autoincrement=False),
        sa.Column("alarm_id", sa.Integer, sa.ForeignKey("drift_alarms.id"), nullable=False),
        sa.Column("line", sa.String(64), nullable=False),
        sa.Column("queued_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_drift_queue_line", "drift_queue", ["line"])


def downgrade() -> None:
    op.drop_index("ix_drift_queue_line", "drift_queue")
    op.drop_table("drift_queue")
    op.drop_table("drift_checks")
    op.drop_index("ix_drift_alarms_line_cleared", "drift_alarms")
    op.drop_table("drift_alarms")
    op.drop_index("ix_heartbeat_history_line_at", "heartbeat_history")
    op.drop_index("ix_heartbeat_history_station_at", "heartbeat_history")
    op.drop_table("heartbeat_history")

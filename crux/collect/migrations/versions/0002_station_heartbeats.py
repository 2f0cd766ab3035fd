"""Station heartbeats (the console's stations page) and two covering indexes for the console's per-line counts.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "station_heartbeats",
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
    )
    op.create_index("ix_captures_line_captured_at", "captures", ["line", "captured_at", "verdict"])
    op.create_index("ix_captures_line_labeled_at", "captures", ["line", "labeled_at"])


def downgrade() -> None:
    op.drop_index("ix_captures_line_labeled_at", "captures")
    op.drop_index("ix_captures_line_captured_at", "captures")
    op.drop_table("station_heartbeats")

"""Initial schema: stations and captures.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("line", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
    )
    op.create_table(
        "captures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("station_id", sa.Integer, sa.ForeignKey("stations.id"), nullable=False),
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
        sa.Column("ls_project", sa.String(64), nullable=True),
        sa.Column("ls_task_id", sa.Integer, nullable=True),
        sa.Column("sent_at", sa.DateTime, nullable=True),
        sa.Column("labeled_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("station_id", "idempotency_key", name="uq_captures_station_idempotency"),
    )
    op.create_index("ix_captures_line_id", "captures", ["line", "id"])
    op.create_index("ix_captures_station_id", "captures", ["station", "id"])
    op.create_index("ix_captures_captured_at", "captures", ["captured_at"])
    op.create_index("ix_captures_sent_at", "captures", ["sent_at"])
    op.create_index("ix_captures_sha256", "captures", ["sha256"])


def downgrade() -> None:
    op.drop_table("captures")
    op.drop_table("stations")

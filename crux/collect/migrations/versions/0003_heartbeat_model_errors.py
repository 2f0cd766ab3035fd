"""Heartbeats count the frames the edge's model could not judge (NaN/inf or misshapen output, rejected as "error").

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: edges older than this column do not send it, and their rows must stay valid.
    with op.batch_alter_table("station_heartbeats") as batch:
        batch.add_column(sa.Column("model_errors", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("station_heartbeats") as batch:
        batch.drop_column("model_errors")

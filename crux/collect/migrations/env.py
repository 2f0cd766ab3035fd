"""Alembic environment: runs online only, on the connection handed over by `crux.collect.db.migrate`."""

from __future__ import annotations

from alembic import context

from crux.collect.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through crux.collect.db.migrate(engine), which passes a connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds tables so later revisions work on both backends.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

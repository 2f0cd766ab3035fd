"""Alembic scripts of the ingest database; run through `crux.collect.db.migrate`, never via alembic.ini."""

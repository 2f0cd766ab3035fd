"""Alembic scripts of the ingest database; run through `crux.ingest.db.migrate`, never via alembic.ini."""

"""Station registry: per-station bearer tokens, stored only as sha256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from crux.collect.db import stations, utcnow
from crux.collect.names import check_name
from crux.errors import CruxError

# Prefix makes leaked tokens greppable (secret scanners) and tells an operator what the string is.
TOKEN_PREFIX = "crux_st_"


class StationError(CruxError, ValueError):
    """A station cannot be added or revoked (duplicate, unknown, already revoked)."""


@dataclass(frozen=True)
class Station:
    id: int
    name: str
    line: str
    revoked: bool


def hash_token(token: str) -> str:
    # A 256-bit random token needs no slow KDF: brute force is hopeless, and one fast hash keeps the
    # per-request cost of authentication negligible.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_station(engine: Engine, name: str, line: str) -> str:
    """Register station `name` on `line` and return its bearer token; only its hash is stored.

    A revoked station of the same name is re-activated with a fresh token (the old one stays dead).
    """
    check_name(name, "station")
    check_name(line, "line")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        row = conn.execute(sa.select(stations).where(stations.c.name == name)).first()
        if row is not None and row.revoked_at is None:
            raise StationError(f"station {name!r} already exists on line {row.line!r}; revoke it first to rotate")
        values = {"line": line, "token_sha256": hash_token(token), "created_at": utcnow(), "revoked_at": None}
        if row is None:
            conn.execute(sa.insert(stations).values(name=name, **values))
        else:
            conn.execute(sa.update(stations).where(stations.c.id == row.id).values(**values))
    return token


def revoke_station(engine: Engine, name: str) -> None:
    """Revoke the station's token at once; its captures stay."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(stations)
            .where(stations.c.name == name, stations.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        if result.rowcount == 0:
            exists = conn.execute(sa.select(stations.c.id).where(stations.c.name == name)).first()
            raise StationError(f"station {name!r} is {'already revoked' if exists else 'unknown'}")


def list_stations(engine: Engine) -> list[Station]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(stations).order_by(stations.c.name)).all()
    return [Station(r.id, r.name, r.line, r.revoked_at is not None) for r in rows]


# Built once: this runs on every request.
_BY_TOKEN = sa.select(stations.c.id, stations.c.name, stations.c.line).where(
    stations.c.token_sha256 == sa.bindparam("digest"), stations.c.revoked_at.is_(None)
)


def station_for_token(engine: Engine | Connection, token: str) -> Station | None:
    """The active station owning `token`, or None (unknown or revoked). Checked on every request,
    so a revocation takes effect at once. A connection is used as is (the upload path looks up more on it)."""
    if isinstance(engine, Engine):
        with engine.connect() as conn:
            return station_for_token(conn, token)
    row = engine.execute(_BY_TOKEN, {"digest": hash_token(token)}).first()
    return None if row is None else Station(row.id, row.name, row.line, False)


__all__ = [
    "Station",
    "StationError",
    "add_station",
    "hash_token",
    "list_stations",
    "revoke_station",
    "station_for_token",
]

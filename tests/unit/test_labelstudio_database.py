"""Issue #24: `labelstudio.database` picks Label Studio's database; the PostgreSQL password comes from the
environment or a 0600 file, never from params.yaml."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from crux.config import ConfigError
from crux.label.server import LabelStudioError
from crux.settings import labelstudio_config, labelstudio_database_env, load_context, server_settings


def params(tmp_path: Path, database: dict[str, object]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"labelstudio": {"database": database}}))
    return path


def test_sqlite_is_the_default_and_adds_nothing(tmp_path: Path) -> None:
    ctx = load_context(params(tmp_path, {}))
    assert labelstudio_config(ctx).database.engine == "sqlite"
    assert labelstudio_database_env(ctx) == {}
    assert server_settings(ctx).extra_env == {"SSRF_PROTECTION_ENABLED": "false"}


def test_postgresql_settings_with_the_password_from_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRUX_LS_DB_PASSWORD", raising=False)
    secret = tmp_path / "ls-db.password"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o600)
    db = {
        "engine": "postgresql",
        "host": "db.plant",
        "port": 5433,
        "name": "ls",
        "user": "ls",
        "password_file": "ls-db.password",
    }
    env = server_settings(load_context(params(tmp_path, db))).extra_env
    assert env is not None
    assert {k: env[k] for k in env if k != "SSRF_PROTECTION_ENABLED"} == {
        "DJANGO_DB": "default",
        "POSTGRE_HOST": "db.plant",
        "POSTGRE_PORT": "5433",
        "POSTGRE_NAME": "ls",
        "POSTGRE_USER": "ls",
        "POSTGRE_PASSWORD": "s3cret",
    }
    monkeypatch.setenv("CRUX_LS_DB_PASSWORD", "from-env")  # the environment wins over the file
    assert labelstudio_database_env(load_context(params(tmp_path, db)))["POSTGRE_PASSWORD"] == "from-env"


def test_a_password_file_others_can_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRUX_LS_DB_PASSWORD", raising=False)
    secret = tmp_path / "pw"
    secret.write_text("s3cret")
    os.chmod(secret, 0o644)
    ctx = load_context(params(tmp_path, {"engine": "postgresql", "password_file": "pw"}))
    with pytest.raises(LabelStudioError, match=r"pw is readable by others \(mode 644\); `chmod 600"):
        labelstudio_database_env(ctx)
    ctx = load_context(params(tmp_path, {"engine": "postgresql", "password_file": "missing"}))
    with pytest.raises(LabelStudioError, match=r"labelstudio\.database\.password_file: cannot read"):
        labelstudio_database_env(ctx)


def test_without_a_password_none_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRUX_LS_DB_PASSWORD", raising=False)
    env = labelstudio_database_env(load_context(params(tmp_path, {"engine": "postgresql"})))
    assert env["POSTGRE_PASSWORD"] == "" and env["POSTGRE_NAME"] == "labelstudio"  # not Label Studio's "postgres"


@pytest.mark.parametrize(
    ("database", "message"),
    [
        ({"engine": "mysql"}, "engine: 'mysql' is not one of sqlite, postgresql"),
        ({"engine": "postgresql", "port": 0}, "database.port: 0 is not a TCP port"),
        ({"engine": "postgresql", "host": "a b"}, "database.host"),
        ({"password": "x"}, "unknown key"),  # a password in params.yaml (in git) is not a key
    ],
)
def test_bad_database_settings_name_the_key(tmp_path: Path, database: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        labelstudio_config(load_context(params(tmp_path, database)))

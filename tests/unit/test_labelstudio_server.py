"""Secrets and process bookkeeping of the Label Studio server (no server needed)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from crux.label import server
from crux.label.importer import ImportValidationError, local_files_url


def settings(tmp_path: Path) -> server.ServerSettings:
    return server.ServerSettings(
        venv=tmp_path / "venv", state_dir=tmp_path / "state", host="127.0.0.1", port=1, files_root=tmp_path
    )


def test_generated_credentials_are_private_strong_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "state" / "credentials.env"
    first, written = server.load_or_create_credentials(path, {})
    assert written
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.password) >= 20 and len(first.token) == 40
    again, written_again = server.load_or_create_credentials(path, {})
    assert again == first and not written_again
    assert first.password not in repr(first) and first.token not in repr(first)


def test_given_credentials_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials.env"
    server.load_or_create_credentials(path, {})
    given, written = server.load_or_create_credentials(path, {"username": "qa@plant.example", "token": "t" * 40})
    assert written and given.username == "qa@plant.example" and given.token == "t" * 40


def test_server_environment_binds_files_root_and_turns_off_phoning_home(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    creds, _ = server.load_or_create_credentials(cfg.credentials_path, {})
    env = server.server_environment(cfg, creds, {"PATH": "/bin", "LABEL_STUDIO_PORT": "1", "DJANGO_DB": "default"})
    assert env["LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path.resolve())
    assert env["COLLECT_ANALYTICS"] == "false" and env["LATEST_VERSION_CHECK"] == "false"
    assert env["TMPDIR"].startswith(str(cfg.state_dir.resolve()))
    assert "LABEL_STUDIO_PORT" not in env  # stray settings of the caller do not leak in
    assert env["DJANGO_DB"] == "default"  # the Postgres switch of a production install passes through


def test_stop_never_signals_a_process_it_did_not_start(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    cfg.state_dir.mkdir(parents=True)
    # A pid file naming this very test process, but with another start time: a recycled pid.
    cfg.pid_path.write_text(json.dumps({"pid": os.getpid(), "start_ticks": -1, "port": 1}))
    assert server.stop(cfg) is False
    assert not cfg.pid_path.exists()
    assert server.status(cfg).running is False


def test_start_without_the_label_studio_venv_says_how_to_fix_it(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    creds, _ = server.load_or_create_credentials(cfg.credentials_path, {})
    with pytest.raises(server.LabelStudioError, match="make setup"):
        server.start(cfg, creds, {}, timeout=1)


def test_local_files_urls_cannot_escape_the_files_root(tmp_path: Path) -> None:
    (tmp_path / "served").mkdir()
    root = tmp_path / "served"
    assert local_files_url(str(root / "a b.jpg"), root) == "/data/local-files/?d=a%20b.jpg"
    with pytest.raises(ImportValidationError, match="outside Label Studio's files root"):
        local_files_url(str(root / ".." / "secret.jpg"), root)

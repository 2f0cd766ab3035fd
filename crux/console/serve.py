"""Running the console: the admin token (login wall off loopback) and uvicorn."""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from crux.errors import CruxError

if TYPE_CHECKING:
    from crux.console.deps import ConsoleConfig


class ConsoleError(CruxError, ValueError):
    """The console cannot start as asked."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume the network can reach it


def load_or_create_token(path: Path, given: str | None) -> str:
    """The admin token: `given` (CRUX_CONSOLE_TOKEN) first, else the file at `path`, else a new one written there
    readable by its owner alone (0600 from creation, like Label Studio's credentials file)."""
    if given:
        if len(given) < 16:
            raise ConsoleError("CRUX_CONSOLE_TOKEN must be at least 16 characters")
        return given
    if path.is_file():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def serve(cfg: ConsoleConfig, host: str = "127.0.0.1", port: int = 8710) -> None:
    """Serve the console in this process until interrupted; off loopback only with an admin token."""
    import uvicorn

    from crux.console.app import create_console_app

    if not is_loopback(host) and not cfg.admin_token:
        raise ConsoleError(f"binding the console to {host} needs an admin token (login wall)")
    uvicorn.run(create_console_app(cfg), host=host, port=port, access_log=False, log_level="info")

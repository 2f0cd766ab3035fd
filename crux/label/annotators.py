"""Annotator accounts, so that several people label one project at once.

The open-source server has no roles: every member of the organisation can open every project, and
Label Studio hands each annotator a different unlabeled task (its default "next task" queue), so a
team shares the work by simply labeling at the same time.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from crux.label.server import Credentials, LabelStudioError, ServerSettings, _write_private, read_env_file
from crux.label.server import server_environment as _server_environment

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+\Z")
ANNOTATORS_FILE = "annotators.env"


@dataclass(frozen=True)
class AnnotatorAccount:
    email: str
    user_id: int
    created: bool


def add_annotators(
    settings: ServerSettings,
    admin: Credentials,
    emails: Sequence[str],
    base_env: Mapping[str, str],
) -> tuple[list[AnnotatorAccount], Path]:
    """Create member accounts with generated passwords; passwords go to a 0600 file, never to stdout."""
    bad = [email for email in emails if not EMAIL.match(email)]
    if bad:
        raise LabelStudioError(f"not an e-mail address: {', '.join(bad)}")
    passwords_path = settings.state_dir / ANNOTATORS_FILE
    stored = read_env_file(passwords_path)
    request = {
        "users": [
            {"email": email, "password": stored.get(email) or secrets.token_urlsafe(12)}
            for email in dict.fromkeys(emails)
        ]
    }
    python = settings.venv / "bin" / "python"
    script = Path(__file__).with_name("_ls_admin.py")
    result = subprocess.run(
        [str(python), str(script)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=_server_environment(settings, admin, base_env),
        timeout=300,
    )
    if result.returncode != 0:
        raise LabelStudioError(f"creating annotators failed: {result.stderr.strip()[-2000:]}")
    accounts = [AnnotatorAccount(u["email"], u["id"], u["created"]) for u in json.loads(result.stdout)["users"]]
    for person in request["users"]:
        stored[person["email"]] = person["password"]
    body = "# Annotator logins (e-mail=password) created by `crux annotators add`. Hand each person their line.\n"
    _write_private(passwords_path, body + "".join(f"{email}={password}\n" for email, password in stored.items()))
    return accounts, passwords_path


def invite_link(url: str, token: str, public_url: str | None = None) -> str:
    """The organisation's sign-up link; with sign-up restricted to links, this is how others join.

    Asked of the server at `url`, written with `public_url` (the address annotators' browsers use)."""
    request = urllib.request.Request(f"{url}/api/invite", headers={"Authorization": f"Token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return (public_url or url).rstrip("/") + str(json.loads(response.read())["invite_url"])

"""Issue #24: Label Studio on PostgreSQL (`labelstudio.database.engine: postgresql`), with two annotators saving
annotations at the same moment, each through the API in a session of their own, and the export holding both.

Debian's PostgreSQL in a throwaway cluster on a loopback port (scripts/postgres-for-tests.sh); skipped where it is
not installed. The first start of Label Studio runs its migrations on the empty database: minutes on 2 cores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from crux.collect.ingest_server import free_port
from crux.label import server
from crux.label.annotators import add_annotators
from crux.settings import load_context, server_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CONFIG = """<View><Image name="image" value="$image"/>
<Choices name="choice" toName="image"><Choice value="ok"/><Choice value="scratch"/></Choices></View>"""


@pytest.fixture
def postgres_url() -> Iterator[str]:
    folder = Path(f"/tmp/crux-ls-pg-{uuid.uuid4().hex[:8]}")  # postgres must be able to enter it: not a 0700 tmp
    env = {**os.environ, "CRUX_PG_DIR": str(folder), "CRUX_PG_PORT": str(free_port())}
    script = REPO / "scripts" / "postgres-for-tests.sh"
    printed = subprocess.run([str(script), "start"], env=env, check=True, capture_output=True, text=True).stdout
    if "=" not in printed:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        yield printed.strip().split("=", 1)[1]
    finally:
        subprocess.run([str(script), "stop"], env=env, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def login(url: str, email: str, password: str) -> httpx.Client:
    """A browser-like session of one annotator (Django's login form, then its CSRF token on every write)."""
    session = httpx.Client(base_url=url, timeout=60)
    session.get("/user/login/")
    response = session.post(
        "/user/login/",
        data={"email": email, "password": password, "csrfmiddlewaretoken": session.cookies.get("csrftoken")},
        headers={"Referer": f"{url}/user/login/"},
    )
    assert response.status_code == 302, response.text[:500]
    session.headers.update({"X-CSRFToken": session.cookies.get("csrftoken") or "", "Referer": f"{url}/"})
    return session


def test_two_annotators_label_at_once_on_postgresql(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRUX_LS_VENV", os.environ.get("CRUX_LS_VENV") or str(REPO / ".venv-ls"))
    with sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sa.text("CREATE DATABASE labelstudio"))
    pg = sa.engine.make_url(postgres_url)
    params = tmp_path / "params.yaml"
    params.write_text(
        json.dumps(
            {
                "labelstudio": {
                    "port": free_port(),
                    "state_dir": str(tmp_path / "ls"),
                    "files_root": str(tmp_path),
                    "database": {"engine": "postgresql", "host": pg.host, "port": pg.port, "user": pg.username},
                }
            }
        )
    )
    settings = server_settings(load_context(params))
    assert settings.extra_env is not None and settings.extra_env["POSTGRE_NAME"] == "labelstudio"
    credentials, _ = server.load_or_create_credentials(settings.credentials_path, {})
    server.start(settings, credentials, os.environ, timeout=600)
    try:
        admin = httpx.Client(base_url=settings.url, headers={"Authorization": f"Token {credentials.token}"}, timeout=60)
        project = admin.post("/api/projects", json={"title": "pg line", "label_config": CONFIG}).json()
        tasks = [{"image": f"/data/local-files/?d=f{i}.jpg", "n": i} for i in range(12)]
        admin.post(f"/api/projects/{project['id']}/import", json=tasks).raise_for_status()
        task_ids = sorted(t["id"] for t in admin.get("/api/tasks", params={"project": project["id"]}).json()["tasks"])
        assert len(task_ids) == 12

        emails = ["ann@plant.example", "bob@plant.example"]
        accounts, passwords_path = add_annotators(settings, credentials, emails, os.environ)
        passwords = server.read_env_file(passwords_path)
        ids = {a.email: a.user_id for a in accounts}
        sessions = {email: login(settings.url, email, passwords[email]) for email in emails}
        start = threading.Barrier(len(emails))
        failures: list[str] = []

        def label(email: str) -> None:
            choice = "ok" if email.startswith("ann") else "scratch"
            result = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]
            start.wait()  # both annotators save at the same moment, task after task
            for task_id in task_ids:
                r = sessions[email].post(
                    f"/api/tasks/{task_id}/annotations/", json={"result": result, "lead_time": 1.0}
                )
                if r.status_code != 201:
                    failures.append(f"{email} task {task_id}: HTTP {r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=label, args=(email,)) for email in emails]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not failures, failures

        export: list[dict[str, Any]] = admin.get(
            f"/api/projects/{project['id']}/export", params={"exportType": "JSON"}
        ).json()
        assert sorted(t["id"] for t in export) == task_ids
        for task in export:
            by = {a["completed_by"]: a["result"][0]["value"]["choices"] for a in task["annotations"]}
            assert by == {ids["ann@plant.example"]: ["ok"], ids["bob@plant.example"]: ["scratch"]}, task["id"]
        # The annotations are rows of PostgreSQL, not of a SQLite file beside the server.
        with sa.create_engine(pg.set(database="labelstudio")).connect() as conn:
            stored = conn.execute(sa.text("SELECT count(*) FROM task_completion WHERE project_id = :p"),
                                  {"p": project["id"]}).scalar_one()  # fmt: skip
        assert stored == 24
        assert not (settings.data_dir / "label_studio.sqlite3").exists()
    finally:
        server.stop(settings)

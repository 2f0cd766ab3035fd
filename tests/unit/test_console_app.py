"""The console without a browser: heartbeats end to end through the ingest API, stores that are down, bad input,
the admin token, and the pure helpers (dataset log parsing, overlays)."""

from __future__ import annotations

import datetime as dt
import io
import stat
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crux.collect import IngestSettings, add_station, create_app, create_db_engine, migrate
from crux.collect.heartbeats import latest_heartbeats
from crux.collect.ingest_server import free_port
from crux.console.app import create_console_app
from crux.console.deps import ConsoleConfig, LineInfo
from crux.console.serve import ConsoleError, is_loopback, load_or_create_token, serve
from crux.console.sources import DatasetReader, IngestReader, ModelReader, parse_dataset_log

LINES = (LineInfo("line-a", "Line A", "classify"),)


@pytest.fixture
def ingest(tmp_path: Path) -> tuple[TestClient, str, object]:
    settings = IngestSettings(database_url=f"sqlite:///{tmp_path}/i.db", storage_url=str(tmp_path / "images"))
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    token = add_station(engine, "cam-1", "line-a")
    return TestClient(create_app(settings)), token, engine


def test_heartbeat_needs_the_station_token_and_keeps_one_row_per_station(ingest: tuple) -> None:
    client, token, engine = ingest
    auth = {"Authorization": f"Bearer {token}"}
    assert client.post("/v1/heartbeat", json={"frames": 1}).status_code == 401
    assert client.post("/v1/heartbeat", json={"frames": 1}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/v1/heartbeat", json={"frames": -1}, headers=auth).status_code == 422
    assert client.post("/v1/heartbeat", json={"station": "cam-2"}, headers=auth).status_code == 422  # token decides
    assert (
        client.post("/v1/heartbeat", json={"model_version": 1, "frames": 5, "ng": 1}, headers=auth).status_code == 204
    )
    assert (
        client.post("/v1/heartbeat", json={"model_version": 2, "frames": 9, "fps": 1.5}, headers=auth).status_code
        == 204
    )
    beats = latest_heartbeats(engine)
    assert [(b.station, b.line, b.model_version, b.frames, b.fps) for b in beats] == [("cam-1", "line-a", 2, 9, 1.5)]


def test_edge_heartbeat_to_an_unreachable_service_returns_quickly_and_never_raises(tmp_path: Path) -> None:
    from crux.edge.heartbeat import HeartbeatSender, heartbeat_payload
    from crux.edge.runtime import EdgeConfig, EdgeRuntime

    runtime = EdgeRuntime("unused", "line-a", EdgeConfig(), [], tmp_path)
    payload = heartbeat_payload(runtime, None, 30.0)
    assert payload["model_version"] is None and payload["frames"] == 0 and payload["latency_p50_ms"] is None
    sender = HeartbeatSender(f"http://127.0.0.1:{free_port()}", "t", runtime, None, 30.0, timeout_s=1.0)
    started = time.monotonic()
    assert sender.beat() is False
    assert time.monotonic() - started < 3.0
    assert sender.failed == 1
    sender.stop(final=False)


def test_a_store_that_is_down_shows_as_unavailable_and_the_rest_renders(tmp_path: Path) -> None:
    dead = free_port()
    cfg = ConsoleConfig(
        lines=LINES,
        # Nothing listens on these ports, and the dataset folder is no git repository.
        ingest=IngestReader(create_db_engine(f"postgresql+psycopg://u:p@127.0.0.1:{dead}/x"), str(tmp_path)),
        models=ModelReader(str(tmp_path / "empty-remote")),
        datasets=DatasetReader(tmp_path),
        timeout_s=2.0,
    )
    client = TestClient(create_console_app(cfg))
    started = time.monotonic()
    overview = client.get("/")
    assert overview.status_code == 200
    assert "ingest database unavailable" in overview.text
    assert "nothing published" in overview.text  # the model remote answered: an empty one
    assert client.get("/stations").status_code == 200 and "ingest database unavailable" in client.get("/stations").text
    assert time.monotonic() - started < 15


def test_bad_input_is_a_4xx_page() -> None:
    client = TestClient(create_console_app(ConsoleConfig(lines=LINES)))
    for path, status in (
        ("/lines/nope", 404),
        ("/lines/line-a/datasets/zz", 400),
        ("/captures/abc/overlay.png", 422),
        ("/captures/1/overlay.png?size=abc", 422),
        ("/captures/1/overlay.png?size=999999", 422),
        ("/lines/line-a/plots/..%2F..%2Fparams.yaml", 404),
        ("/lines/line-a/plots/%2Fetc%2Fpasswd", 404),
    ):
        response = client.get(path)
        assert response.status_code == status, path
        assert response.headers["content-type"].startswith("text/html")


def test_admin_token_file_is_private_and_the_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / ".crux" / "console" / "admin-token"
    first = load_or_create_token(path, None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(path, None) == first
    assert load_or_create_token(path, "x" * 20) == "x" * 20
    with pytest.raises(ConsoleError):
        load_or_create_token(path, "short")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("console.plant")
    with pytest.raises(ConsoleError, match="admin token"):
        serve(ConsoleConfig(lines=LINES), host="0.0.0.0", port=free_port())


def test_login_wall_keeps_pages_and_images_behind_the_token() -> None:
    client = TestClient(create_console_app(ConsoleConfig(lines=LINES, admin_token="s" * 24)))
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    assert client.get("/captures/1/overlay.png").status_code == 401
    assert client.get("/_swagger/openapi.json").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer " + "s" * 24}).status_code == 200
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    assert client.post("/login", data={"token": "s" * 24}).status_code == 200  # redirected to the overview
    assert client.get("/stations").status_code == 200  # the session cookie


def test_dataset_log_parsing_keeps_only_the_line_s_versions() -> None:
    record = "{c}\x1f2026-12-01T10:00:00+00:00\x1fann\x1f{body}\x1e\n"
    text = record.format(c="a" * 40, body="data(line-a): 12 items, +3 −1 ~2\n\nscratch: +3 −1 ~0\nspot: +0 −0 ~2\n")
    text += record.format(c="b" * 40, body="data(line-b): 5 items, +5 −0 ~0\n")
    text += record.format(c="c" * 40, body="an unrelated commit touching data.dvc\n")
    (version,) = parse_dataset_log(text, "line-a")
    assert (version.commit, version.items, version.added, version.removed, version.relabelled) == (
        "a" * 40,
        12,
        3,
        1,
        2,
    )
    assert version.per_class == ("scratch: +3 −1 ~0", "spot: +0 −0 ~2")
    assert version.date == dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)


def test_overlay_draws_boxes_and_masks() -> None:
    import numpy as np
    from PIL import Image

    from crux.console.plots import overlay_png
    from crux.postprocess import rle_encode

    buf = io.BytesIO()
    Image.new("RGB", (100, 80), (40, 40, 40)).save(buf, "PNG")
    mask = np.zeros((80, 100), bool)
    mask[50:70, 60:90] = True
    boxes = [{"class": "scratch", "box": [10, 10, 40, 30], "score": 0.9}, {"class": "spot", "box": [60, 50, 90, 70],
             "mask": rle_encode(mask)}]  # fmt: skip
    out = np.asarray(Image.open(io.BytesIO(overlay_png(buf.getvalue(), boxes))).convert("RGB")).astype(int)
    assert tuple(out[10, 25]) == (255, 40, 40)  # the first box's top edge
    assert out[60, 75, 0] > 100 and out[60, 75, 1] < 60  # inside the mask: tinted red
    assert tuple(out[5, 95]) == (40, 40, 40)  # elsewhere untouched


def test_a_capture_id_beyond_the_database_integer_is_404_not_503(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/i.db")
    migrate(engine)
    cfg = ConsoleConfig(lines=LINES, ingest=IngestReader(engine, str(tmp_path / "images")))
    client = TestClient(create_console_app(cfg))
    for capture in ("12345678901234567890123", "9223372036854775808", "-1"):
        assert client.get(f"/captures/{capture}/overlay.png").status_code == 404, capture
    assert client.get("/captures/9223372036854775807/overlay.png").status_code == 404


def test_each_login_gets_its_own_session_and_logout_revokes_only_it() -> None:
    """Issue #23 section 6: the cookie is a random value per login, not derived from the token; logout ends it."""
    app = create_console_app(ConsoleConfig(lines=LINES, admin_token="s" * 24))
    one, two = TestClient(app), TestClient(app)
    for client in (one, two):
        assert client.post("/login", data={"token": "s" * 24}, follow_redirects=False).status_code == 303
    assert one.cookies["crux_console"] != two.cookies["crux_console"]
    stolen = one.cookies["crux_console"]
    assert one.post("/logout", follow_redirects=False).status_code == 303
    replay = TestClient(app, cookies={"crux_console": stolen})
    assert replay.get("/stations", follow_redirects=False).status_code == 303  # revoked: back to /login
    assert two.get("/stations").status_code == 200  # the other login is untouched


def test_the_session_cookie_is_secure_over_tls_only() -> None:
    app = create_console_app(ConsoleConfig(lines=LINES, admin_token="s" * 24))
    plain = TestClient(app).post("/login", data={"token": "s" * 24}, follow_redirects=False)
    tls = TestClient(app, base_url="https://console.plant").post(
        "/login", data={"token": "s" * 24}, follow_redirects=False
    )
    assert "secure" not in plain.headers["set-cookie"].lower()
    assert "secure" in tls.headers["set-cookie"].lower() and "httponly" in tls.headers["set-cookie"].lower()


def test_failed_logins_are_rate_limited_per_client() -> None:
    client = TestClient(create_console_app(ConsoleConfig(lines=LINES, admin_token="s" * 24)))
    for _ in range(5):
        assert client.post("/login", data={"token": "guess"}).status_code == 401
    limited = client.post("/login", data={"token": "s" * 24}, follow_redirects=False)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1  # even the right token waits


def test_sessions_expire_and_the_limiter_forgets_old_failures() -> None:
    from crux.console.sessions import LoginLimiter, Sessions

    now = [0.0]
    sessions = Sessions(ttl_s=10, clock=lambda: now[0])
    value = sessions.open()
    assert sessions.valid(value) and not sessions.valid("forged") and not sessions.valid("")
    now[0] = 11
    assert not sessions.valid(value)
    limiter = LoginLimiter(max_failures=2, window_s=60, clock=lambda: now[0])
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.retry_after("a") == 60 and limiter.retry_after("b") is None
    now[0] = 72
    assert limiter.retry_after("a") is None


# ----------------------------------------------------------------------------------------------------------------
# Issue 25: the console's numbers and pages


def test_labeling_progress_counts_tasks_labeled_by_imported_annotations_too() -> None:
    from types import SimpleNamespace

    from crux.console.sources import labeled_tasks

    # What Label Studio's project API said after `make demo` (annotations imported with the tasks).
    project = SimpleNamespace(task_number=1589, finished_task_number=1440, num_tasks_with_annotations=0,
                              total_annotations_number=1440)  # fmt: skip
    assert labeled_tasks(project) == 1440
    assert labeled_tasks(SimpleNamespace(num_tasks_with_annotations=3)) == 3  # a server without the field
    assert labeled_tasks(SimpleNamespace(finished_task_number=None, num_tasks_with_annotations=None)) == 0


def test_gate_criteria_show_value_limit_source_and_not_applicable() -> None:
    from crux.console.views import criterion_rows
    from crux.ship.gate import GateConfig, gate_check

    first = gate_check({"macro_f1": 0.95, "accuracy": 0.95}, None, GateConfig(), "classify").to_dict()
    rows = {r["metric"] + ":" + r["status"]: r for r in criterion_rows(first)}
    floor = rows["macro_f1:pass"]
    assert floor["candidate"] == 0.95 and floor["limit"] == "≥ 0.500" and floor["source"] == "kind classify default"
    assert "macro_f1:not applicable" in rows  # no production model: nothing compared, not a "pass"
    assert rows["macro_f1:not applicable"]["compare"] == "vs production: none yet"
    second = gate_check({"macro_f1": 0.90}, {"macro_f1": 0.95}, GateConfig(tolerance=0.01), "classify", 1).to_dict()
    (rel,) = [r for r in criterion_rows(second) if r["compare"]]
    assert rel["status"] == "FAIL" and rel["compare"] == "vs production 0.950" and rel["source"] == "production v1"
    assert criterion_rows(None) == []


def test_ok_ng_metrics_do_not_apply_to_a_line_without_an_ok_class() -> None:
    from crux.console.views import key_metrics, line_metrics, ng_rate_note

    assert line_metrics("classify", "ok") == ("macro_f1", "accuracy", "inspection.ng_recall",
                                              "inspection.false_reject_rate")  # fmt: skip
    assert line_metrics("classify", None) == ("macro_f1", "accuracy")
    assert key_metrics({"metrics": {"macro_f1": 0.9}}, "classify", None) == [("macro_f1", 0.9), ("accuracy", None)]
    assert "no OK class" in (ng_rate_note("classify", None) or "")
    assert ng_rate_note("classify", "ok") is None and ng_rate_note("detect", None) is None


def test_one_timestamp_format_and_a_bounded_wall_screen_refresh() -> None:
    from starlette.requests import Request

    from crux.console.deps import wall_refresh
    from crux.console.views import timestamp

    aware = dt.datetime(2026, 12, 6, 5, 12, 40, tzinfo=dt.UTC)
    assert timestamp(aware) == "2026-12-06 05:12 UTC"
    assert timestamp(aware.replace(tzinfo=None)) == "2026-12-06 05:12 UTC"  # the database keeps naive UTC
    assert timestamp("2026-12-06T06:12:40+01:00") == "2026-12-06 05:12 UTC"
    assert timestamp(None) == "—"

    def ask(query: str) -> int | None:
        return wall_refresh(Request({"type": "http", "query_string": query.encode(), "headers": []}))

    assert ask("refresh=60") == 60 and ask("refresh=1") == 10 and ask("refresh=99999") == 3600
    assert ask("") is None and ask("refresh=-5") is None and ask("refresh=x") is None


def test_a_one_version_trend_keeps_the_whole_metric_axis() -> None:
    import re

    from crux.console.plots import trend_svg

    one = [{"version": 1, "metrics": {"macro_f1": 0.9652, "accuracy": 0.9652}}]
    texts = re.findall(r">([^<>]+)</text>", trend_svg(one, ["macro_f1", "accuracy"], 1).decode())
    assert "0.0" in texts and "1.0" in texts  # the axis runs 0..1, not 0.964..0.9665
    assert "0.965" in texts  # the one value written beside its point
    assert not any(t.startswith("0.96") and t != "0.965" for t in texts)


class _TwoManifests:
    """A dataset reader over two in-memory manifests (the real `diff_manifests` computes the diff)."""

    def __init__(self, n: int) -> None:
        from crux.data.manifest import ItemLabel, ManifestItem

        def item(i: int, cls: str) -> ManifestItem:
            sha = f"{i:064x}"
            return ManifestItem(sha, i, f"images/{sha[:2]}/{sha}.jpg", 8, 8, f"{i}.jpg", "train",
                                (ItemLabel(cls),), ("ann",))  # fmt: skip

        self.old = [item(i, "scratch") for i in range(n // 2)]
        self.new = [item(0, "spot")] + [item(i, "scratch") for i in range(1, n)]
        self.calls = 0

    def diff(self, line: str, commit: str) -> tuple[object, dict[str, str]]:
        from crux.data.diff import diff_manifests

        self.calls += 1
        images = {x.sha256: x.image for x in (*self.old, *self.new)}
        return diff_manifests(self.old, self.new, ("scratch", "spot")), images


def test_dataset_diffs_are_computed_once_kept_on_disk_and_paged(tmp_path: Path) -> None:
    from crux.console.diffs import DiffCache

    reader = _TwoManifests(2000)
    cache = DiffCache(reader, tmp_path / "diffs.sqlite", processes=False)  # the reader lives in this test
    assert cache.page("line-a", "c0ffee0", "added", 1) is None  # not computed yet
    cache.ensure("line-a", "c0ffee0").result(timeout=60)
    page = cache.page("line-a", "c0ffee0", "added", 3, size=100)
    assert page is not None and page.summary["counts"] == {"added": 1000, "removed": 0, "relabelled": 1}
    assert page.pages == 10 and [i.task_id for i in page.items][:2] == [1200, 1201] and len(page.items) == 100
    relabel = cache.page("line-a", "c0ffee0", "relabelled", 1)
    assert (
        relabel is not None
        and relabel.items[0].old_classes == ("scratch",)
        and relabel.items[0].new_classes == ("spot",)
    )
    assert cache.page("line-a", "c0ffee0", "added", 999, size=100).page == 10  # type: ignore[union-attr]
    sha = f"{1500:064x}"
    assert cache.image_of("line-a", "c0ffee0", sha) == ("c0ffee0", f"images/{sha[:2]}/{sha}.jpg")
    assert cache.image_of("line-a", "c0ffee0", "0" * 64 + "1") is None
    # A restarted console reads the diff from disk: nothing is computed again.
    again = DiffCache(reader, tmp_path / "diffs.sqlite", processes=False)
    again.ensure("line-a", "c0ffee0").result(timeout=5)
    started = time.perf_counter()
    assert again.page("line-a", "c0ffee0", "added", 10, size=100) is not None
    assert time.perf_counter() - started < 0.1
    assert reader.calls == 1


def test_the_demo_s_last_screen_names_the_console_and_how_to_start_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from crux.cli import demo
    from crux.cli.terminal import out

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    settings = SimpleNamespace(public="http://127.0.0.1:8080", credentials_path=tmp_path / "ls.json")
    with out.capture() as captured:
        demo._where_to_look(SimpleNamespace(root=tmp_path), settings, SimpleNamespace(username="admin"),
                            dict.fromkeys(demo.DEMO_LINES, 1), time.perf_counter())  # fmt: skip
    text = captured.get()
    assert "Console:        http://127.0.0.1:8710/  (start it: .venv/bin/crux console serve)" in text
    assert all(f"http://127.0.0.1:8710/lines/{line}" in text for line in demo.DEMO_LINES)
    assert "Label Studio:" in text and "Prefect UI:" in text  # the rest of the screen is still there

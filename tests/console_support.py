"""Real fixture data for the console: a signed model remote, an ingest database filled through the real ingest API
(captures with boxes, heartbeats from a real edge runtime), dataset versions committed with real git + DVC, and a
console server on a loopback port."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from crux.collect.ingest_server import free_port, make_jpeg

LINE = "line-a"
OTHER_LINE = "line-b"
# A classifier line whose every class is a defect type (no OK class): one published version, every frame NG.
DEFECT_LINE = "line-c"
# Items per page of the dataset diff page in these tests (4 items added by the first version: two pages).
DIFF_PAGE = 3
CLASSES = ["ok", "scratch", "spot"]
# Chromium flags of the COMMON test rules: no GPU, no background traffic of the browser itself.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_missing(chromium: str | Path = CHROMIUM) -> str | None:
    """Why the browser tests cannot run here, or None when they can. scripts/ensure-chromium.sh (run by `make test`)
    installs Debian's chromium and, when it cannot, leaves its reason in .crux/chromium-missing: the tests skip with
    it rather than fail on a machine where the set-up could not install a browser."""
    if Path(chromium).exists():
        return None
    reason_file = Path(__file__).resolve().parents[1] / ".crux" / "chromium-missing"
    reason = reason_file.read_text().strip() if reason_file.is_file() else "run scripts/setup.sh to install it"
    return f"{chromium} missing: {reason}"


LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}


@contextlib.contextmanager
def chromium_browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright (never a downloaded browser); the test skips with the set-up's reason
    where it is missing."""
    import pytest

    missing = chromium_missing()
    if missing is not None:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class OffHost:
    """A browser context whose requests may reach loopback only; the rest are aborted and remembered."""

    def __init__(self, browser: Any) -> None:
        self.blocked: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.context.route("**/*", self._route)

    def _route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or (urlsplit(url).hostname or "") in LOOPBACK:
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()


@contextlib.contextmanager
def offline_context(browser: Any) -> Iterator[OffHost]:
    """An `OffHost` context, closed afterwards; fails the test when a page asked for anything off this machine."""
    guard = OffHost(browser)
    try:
        yield guard
    finally:
        guard.context.close()
    assert guard.blocked == [], f"pages asked for off-host resources: {guard.blocked}"


@dataclass(frozen=True)
class Plant:
    root: Path
    remote: Path
    public_key: Path
    database_url: str
    storage_url: str
    ingest_url: str
    tokens: dict[str, str]
    dataset_commits: list[str]
    capture_ids: list[int]


def _with_lineage(export: Path, lineage: dict[str, Any]) -> Path:
    """The export's card naming the dataset it was trained on, as `crux export` writes it from data.dvc."""
    card = export / "card.json"
    data = json.loads(card.read_text())
    data["lineage"] = {**(data.get("lineage") or {}), **lineage}
    card.write_text(json.dumps(data, indent=2))
    return export


def defects_only_export(tmp: Path, metrics: dict[str, Any]) -> Path:
    """`crux export` of a tiny classifier whose every class is a defect type (no OK class)."""
    from edge_support import tiny_bundle

    from crux.ship.export import ExportConfig, export
    from crux.train.models.bundle import load_bundle, save_bundle

    path = tiny_bundle(tmp / "bundle-defects" / "model.pt", "classify", seed=7)
    model, meta = load_bundle(path)
    save_bundle(path, model, {**meta, "classes": ["crack", "scratch", "spot"], "ok_class": None})
    out = tmp / "export-defects"
    export(path, out, ExportConfig(exporter="torchscript", parity_images=4), metrics=metrics)
    return out


def publish_versions(tmp: Path, remote: Path, dataset_md5s: list[str | None] | None = None) -> tuple[Any, Path]:
    """Two signed releases of LINE (accuracy 0.95 then 0.97, each with a confusion matrix, the second trained on the
    newest dataset version), and one of DEFECT_LINE (no OK class: no OK/NG metrics); returns the key."""
    from edge_support import exported

    from crux.ship.gate import GateConfig
    from crux.ship.publish import publish
    from crux.ship.signing import generate_private_key, public_key_pem

    key = generate_private_key()
    md5s = dataset_md5s or [None, None]
    for seed, acc, cm in ((0, 0.95, [[8, 1, 0], [0, 6, 1], [0, 0, 7]]), (1, 0.97, [[9, 0, 0], [0, 7, 0], [0, 1, 6]])):
        export = exported(
            tmp, "classify", seed=seed, metrics={"accuracy": acc, "macro_f1": acc, "confusion_matrix": cm}
        )
        if md5s[seed]:
            _with_lineage(export, {"dataset_version": md5s[seed]})
        publish(str(remote), LINE, export, key, GateConfig())
    only = {"accuracy": 0.9652, "macro_f1": 0.9652, "confusion_matrix": [[5, 0, 0], [1, 6, 0], [0, 0, 4]]}
    publish(str(remote), DEFECT_LINE, defects_only_export(tmp, only), key, GateConfig())
    pub = tmp / "keys" / "publish.pub"
    pub.parent.mkdir(parents=True, exist_ok=True)
    pub.write_bytes(public_key_pem(key.public_key()))
    return key, pub


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def dataset_versions(repo: Path, files: Path) -> list[str]:
    """Two dataset versions of LINE in `repo` (real git + DVC): 4 items, then one added and one relabelled."""
    from crux.data import versioning as V
    from crux.data.snapshot import build_dataset
    from crux.data.store import make_fetcher
    from crux.data.synthetic_exports import Ann, box, image_bytes, local_url, ls_task, write_export, write_image

    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "test@crux.local")
    git(repo, "config", "user.name", "annotator")
    V.init_repo(repo)
    V.set_remote(repo, str(repo.parent / "dvc-remote"))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")

    def task(n: int, cls: str) -> dict[str, Any]:
        sha = write_image(files, f"{n}.jpg", image_bytes(n))
        return ls_task(n, local_url(f"{n}.jpg"), sha256=sha, original_name=f"{n}.jpg", width=64, height=48,
                       annotations=[Ann([box(cls, 1, 1, 20, 20)])])  # fmt: skip

    commits = []
    for tasks in (
        [task(n, "scratch") for n in range(1, 5)],
        [task(1, "spot")] + [task(n, "scratch") for n in range(2, 6)],
    ):
        export = write_export(repo.parent / "export.json", tasks)
        build_dataset(
            export, repo / "data" / LINE, "detect", ("scratch", "spot"), None, make_fetcher(files_root=files),
            (0.8, 0.1, 0.1), previous_dir=repo / "data" / LINE, project=LINE,
        )  # fmt: skip
        result = V.commit_version(repo, project=LINE, data_rel=f"data/{LINE}")
        assert result is not None
        commits.append(result.commit)
    return commits


def dataset_md5(repo: Path, commit: str) -> str:
    """The DVC md5 a dataset commit recorded in data/LINE.dvc (what a model card's lineage names)."""
    import yaml

    return str(yaml.safe_load(git(repo, "show", f"{commit}:data/{LINE}.dvc"))["outs"][0]["md5"])


def workspace_evaluation(repo: Path) -> None:
    """What `crux evaluate` leaves in metrics/LINE/: metrics.json (production's figures) and a PR curve."""
    plots = repo / "metrics" / LINE / "plots"
    plots.mkdir(parents=True)
    # The workspace's own confusion figure: the line page must not show it beside the one it draws.
    (plots / "confusion_matrix.png").write_bytes(make_jpeg(1, size=64))
    (repo / "metrics" / LINE / "metrics.json").write_text(
        json.dumps({"kind": "classify", "accuracy": 0.97, "macro_f1": 0.97,
                    "inspection": {"ng_recall": 0.95, "false_reject_rate": 0.02}})
    )  # fmt: skip
    rows = [{"recall": r / 10, "precision": 1 - r / 20, "precision_scratch": 1 - r / 15, "precision_spot": 1 - r / 30}
            for r in range(11)]  # fmt: skip
    (plots / "pr_curve.json").write_text(json.dumps(rows))


def fill_ingest(base_url: str, tokens: dict[str, str]) -> list[int]:
    """Captures through the real POST /v1/captures: NG ones with boxes, a few OK ones."""
    ids = []
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for i in range(8):
            ng = i < 6
            station = "cam-1" if i % 2 else "cam-2"
            meta = {
                "station": station,
                "line": LINE,
                "captured_at": (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10 * i)).isoformat(),
                "model_version": f"{LINE}.v2",
                "prediction": "scratch" if ng else "ok",
                "verdict": "ng" if ng else "ok",
                "scores": {"scratch": 0.8 if ng else 0.1, "ok": 0.2 if ng else 0.9},
                "boxes": [{"class": "scratch", "box": [20.0 + i, 30.0, 120.0, 150.0 - i], "score": 0.8}] if ng else [],
            }
            ids.append(upload_capture(client, tokens[station], f"f{i}.jpg", make_jpeg(100 + i), meta))
    return ids


def upload_capture(client: httpx.Client, token: str, name: str, jpeg: bytes, meta: dict[str, Any]) -> int:
    """One capture through the real POST /v1/captures as the station of `token`; its id."""
    r = client.post(
        "/v1/captures",
        headers={"Authorization": f"Bearer {token}"},
        files={"image": (name, jpeg, "image/jpeg")},
        data={"metadata": json.dumps(meta)},
    )
    r.raise_for_status()
    return int(r.json()["id"])


def edge_heartbeat(tmp: Path, remote: Path, public_key: Path, ingest_url: str, token: str) -> None:
    """A real edge runtime of LINE (production from the remote) inspects 5 frames, then sends one heartbeat."""
    from crux.edge.heartbeat import HeartbeatSender
    from crux.edge.runtime import EdgeConfig, EdgeRuntime
    from crux.ship.signing import load_public_keys

    frames = tmp / "frames"
    frames.mkdir()
    for i in range(5):
        (frames / f"{i}.jpg").write_bytes(make_jpeg(500 + i, size=64))
    cfg = EdgeConfig(station="cam-1")
    runtime = EdgeRuntime(f"{remote}/{LINE}", LINE, cfg, load_public_keys([public_key]), tmp / "edge-state")
    runtime.run(sorted(frames.glob("*.jpg")), lambda record: None, poll=False)
    sender = HeartbeatSender(ingest_url, token, runtime, None, 30.0)
    try:
        assert sender.beat(), "the heartbeat did not arrive"
    finally:
        sender.stop(final=False)


def build_plant(tmp: Path) -> Plant:
    from crux.collect import IngestSettings, add_station, create_db_engine, migrate
    from crux.collect.ingest_server import running_server

    remote = tmp / "model-remote"
    commits = dataset_versions(tmp / "repo", tmp / "files")
    md5s = [dataset_md5(tmp / "repo", c) for c in commits]
    _, pub = publish_versions(tmp, remote, [None, md5s[-1]])
    workspace_evaluation(tmp / "repo")
    settings = IngestSettings(
        database_url=f"sqlite:///{tmp}/ingest/ingest.db", storage_url=str(tmp / "ingest" / "images")
    )
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    tokens = {name: add_station(engine, name, LINE) for name in ("cam-1", "cam-2", "cam-3")}
    tokens["cam-9"] = add_station(engine, "cam-9", OTHER_LINE)
    tokens["cam-c"] = add_station(engine, "cam-c", DEFECT_LINE)
    with running_server(settings) as url:
        ids = fill_ingest(url, tokens)
        edge_heartbeat(tmp, remote, pub, url, tokens["cam-1"])
        beat = {"model_version": 1, "frames": 100, "ng": 7, "fps": 2.5, "latency_p50_ms": 3.2, "ng_rate": 0.07,
                "outbox_pending": 3, "outbox_bytes": 30000, "interval_s": 30}  # fmt: skip
        for station in ("cam-2", "cam-3"):
            r = httpx.post(f"{url}/v1/heartbeat", json=beat, headers={"Authorization": f"Bearer {tokens[station]}"})
            assert r.status_code == 204, r.text
        every_frame_ng = {"model_version": 1, "frames": 50, "ng": 50, "fps": 1.0, "ng_rate": 1.0, "interval_s": 30}
        r = httpx.post(
            f"{url}/v1/heartbeat", json=every_frame_ng, headers={"Authorization": f"Bearer {tokens['cam-c']}"}
        )
        assert r.status_code == 204, r.text
    # cam-3 then went silent: its last heartbeat is an hour old (the clock is not ours to move; the row is).
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE station_heartbeats SET received_at = ? WHERE station = 'cam-3'",
            ((dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).replace(tzinfo=None),),
        )
    engine.dispose()
    return Plant(tmp, remote, pub, settings.database_url, settings.storage_url, url, tokens, commits, ids)


def console_config(
    plant: Plant,
    *,
    ls_url: str | None = None,
    ls_token: str = "x",
    admin_token: str | None = None,
    cache_dir: Path | None = None,
) -> Any:
    from crux.collect import create_db_engine
    from crux.console.deps import ConsoleConfig, LineInfo
    from crux.console.sources import DatasetReader, IngestReader, LabelStudioReader, ModelReader
    from crux.ship.signing import load_public_keys

    return ConsoleConfig(
        lines=(
            LineInfo(LINE, "Line A", "classify", "ok"),
            LineInfo(OTHER_LINE, "Line B", "detect"),
            LineInfo(DEFECT_LINE, "Line C", "classify"),
        ),
        ingest=IngestReader(create_db_engine(plant.database_url), plant.storage_url),
        models=ModelReader(str(plant.remote), load_public_keys([plant.public_key])),
        datasets=DatasetReader(plant.root / "repo"),
        # Nothing listens there unless a test passes a real server: the page must say so and render the rest.
        labelstudio=LabelStudioReader(ls_url or f"http://127.0.0.1:{free_port()}", ls_token, timeout_s=1.0),
        admin_token=admin_token,
        timeout_s=3.0,
        workspace=plant.root / "repo",
        diff_page_size=DIFF_PAGE,
        # running_app gives a server 20 s to open its port: the warm-up (figures, stores, the diffs of a first
        # start) stops waiting well before; what it has not finished goes on in the background.
        warm_timeout_s=8.0,
        # Each test's console computes its diffs afresh (the cache file is per console here).
        cache_dir=cache_dir,
    )


@contextlib.contextmanager
def running_console(cfg: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """uvicorn with `create_console_app(cfg)` in a thread on a free port; yields the base URL."""
    from crux.collect.ingest_server import running_app
    from crux.console.app import create_console_app

    with running_app(create_console_app(cfg), "console", host=host) as url:
        yield url

"""The `crux` command line: the one place that reads argv, params.yaml and the environment.

Each command turns those into typed config values and calls a library function in `crux/`.
Heavy libraries are imported inside commands so that `crux --help` and the edge stay fast.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from crux.config import ConfigError, DatasetConfig, LabelStudioConfig, from_mapping

app = typer.Typer(
    help="CRUX: label, version, train, ship and inspect — the visual-inspection learning loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
labelstudio_app = typer.Typer(help="Run the Label Studio annotation server.", no_args_is_help=True)
project_app = typer.Typer(help="Inspection projects declared in params.yaml.", no_args_is_help=True)
annotators_app = typer.Typer(help="Accounts for the people who label.", no_args_is_help=True)
app.add_typer(labelstudio_app, name="labelstudio")
app.add_typer(project_app, name="project")
app.add_typer(annotators_app, name="annotators")
data_app = typer.Typer(help="Versioned datasets: reviewer diffs and health checks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
ingest_app = typer.Typer(help="The HTTP ingest service edge stations upload captures to.", no_args_is_help=True)
stations_app = typer.Typer(help="Edge stations and their upload tokens.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(stations_app, name="stations")

console = Console(stderr=True)
out = Console(soft_wrap=True)  # output is pasted into PRs and parsed: never hard-wrapped

ParamsOption = Annotated[
    Path, typer.Option("--params", help="The params file; relative paths in it are from its folder.")
]


@dataclass(frozen=True)
class Context:
    root: Path
    params: dict[str, Any]

    def section(self, name: str) -> Any:
        return self.params.get(name)

    def path(self, value: Path) -> Path:
        return value if value.is_absolute() else (self.root / value)


def load_context(params_path: Path) -> Context:
    import yaml

    if not params_path.exists():
        raise ConfigError(f"{params_path}: params file not found (run crux from the project folder or pass --params)")
    params = yaml.safe_load(params_path.read_text()) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{params_path}: expected a mapping of sections")
    return Context(root=params_path.resolve().parent, params=params)


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


# --------------------------------------------------------------------------------------------------
# Label Studio


def _ls_config(ctx: Context) -> LabelStudioConfig:
    return from_mapping(LabelStudioConfig, ctx.section("labelstudio"), "labelstudio")


def _server_settings(ctx: Context, host: str | None = None, port: int | None = None) -> Any:
    from crux.labelstudio.server import ServerSettings

    cfg = _ls_config(ctx)
    venv = Path(os.environ.get("CRUX_LS_VENV") or ctx.root / ".venv-ls")
    return ServerSettings(
        venv=venv,
        state_dir=ctx.path(cfg.state_dir),
        host=host or cfg.host,
        port=port or int(os.environ.get("CRUX_LS_PORT") or cfg.port),
        files_root=ctx.path(cfg.files_root),
    )


def _credentials(settings: Any) -> tuple[Any, bool]:
    from crux.labelstudio.server import load_or_create_credentials

    given = {
        "username": os.environ.get("CRUX_LS_USERNAME"),
        "password": os.environ.get("CRUX_LS_PASSWORD"),
        "token": os.environ.get("CRUX_LS_TOKEN"),
    }
    return load_or_create_credentials(settings.credentials_path, given)


@dataclass(frozen=True)
class Connection:
    url: str
    token: str
    # Where the server reads local files from, when it is ours and on this machine (no HTTP needed).
    files_root: Path | None


def _connection(ctx: Context) -> Connection:
    """The configured server: CRUX_LS_URL + CRUX_LS_TOKEN for an external one, else ours."""
    if os.environ.get("CRUX_LS_URL"):
        token = os.environ.get("CRUX_LS_TOKEN")
        if not token:
            raise ConfigError("CRUX_LS_URL is set but CRUX_LS_TOKEN is not")
        return Connection(os.environ["CRUX_LS_URL"].rstrip("/"), token, None)
    settings = _server_settings(ctx)
    credentials, _ = _credentials(settings)
    return Connection(settings.url, credentials.token, settings.files_root)


def _client(ctx: Context) -> Any:
    from crux.labelstudio.client import connect

    connection = _connection(ctx)
    return connect(connection.url, connection.token)


def start_labelstudio(ctx: Context, host: str | None = None, port: int | None = None) -> Any:
    from crux.labelstudio import server

    settings = _server_settings(ctx, host, port)
    credentials, written = _credentials(settings)
    if written:
        console.print(f"Admin login and API token stored in [bold]{settings.credentials_path}[/] (mode 0600).")
    with console.status("Starting Label Studio (first start runs migrations, about a minute)…") as spinner:

        def on_wait(elapsed: float) -> None:
            spinner.update(f"Waiting for Label Studio at {settings.url}/health … {elapsed:.0f} s")

        state = server.start(settings, credentials, os.environ, on_wait=on_wait)
    console.print(f"Label Studio is up at [bold]{state.url}[/] (pid {state.pid}, log {state.log_path}).")
    return settings, credentials


@labelstudio_app.command("up")
def labelstudio_up(
    params: ParamsOption = Path("params.yaml"),
    host: Annotated[str | None, typer.Option(help="Bind address; default loopback from params.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; default from params.")] = None,
) -> None:
    """Start Label Studio in the background (idempotent) and wait until it is healthy."""
    ctx = load_context(params)
    settings, credentials = start_labelstudio(ctx, host, port)
    out.print(f"Login: {credentials.username} (password in {settings.credentials_path})")


@labelstudio_app.command("down")
def labelstudio_down(params: ParamsOption = Path("params.yaml")) -> None:
    """Stop the Label Studio server this project started (never another one)."""
    from crux.labelstudio import server

    stopped = server.stop(_server_settings(load_context(params)))
    out.print("Label Studio stopped." if stopped else "Label Studio was not running.")


@labelstudio_app.command("status")
def labelstudio_status(params: ParamsOption = Path("params.yaml")) -> None:
    """Exit 0 when this project's server runs and is healthy, 1 otherwise."""
    from crux.labelstudio import server

    state = server.status(_server_settings(load_context(params)))
    word = "healthy" if state.healthy else ("starting or unhealthy" if state.running else "not running")
    out.print(f"Label Studio {word} at {state.url}" + (f" (pid {state.pid})" if state.pid else ""))
    raise typer.Exit(0 if state.healthy else 1)


@labelstudio_app.command("url")
def labelstudio_url(params: ParamsOption = Path("params.yaml")) -> None:
    """Print the server URL."""
    out.print(_server_settings(load_context(params)).url)


# --------------------------------------------------------------------------------------------------
# Projects, annotators, import


@project_app.command("sync")
def project_sync(
    names: Annotated[list[str] | None, typer.Argument(help="Projects to sync; default all declared.")] = None,
    force: Annotated[bool, typer.Option(help="Allow removing classes that annotations still use.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Create or update the Label Studio projects declared in params.yaml (idempotent)."""
    from crux.labelstudio.projects import sync_project

    ctx = load_context(params)
    cfg = _ls_config(ctx)
    client = _client(ctx)
    for name in names or list(cfg.projects):
        result = sync_project(client, name, cfg.project(name), force=force)
        detail = f" ({', '.join(result.changed_fields)})" if result.action == "updated" else ""
        out.print(f"{name}: {result.action}{detail} — project id {result.project_id}")


@annotators_app.command("add")
def annotators_add(
    emails: Annotated[list[str], typer.Argument(help="E-mail addresses, one account each.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Create annotator accounts; their passwords go to a 0600 file in the state folder."""
    from crux.labelstudio.annotators import add_annotators, invite_link

    ctx = load_context(params)
    settings = _server_settings(ctx)
    credentials, _ = _credentials(settings)
    accounts, path = add_annotators(settings, credentials, emails, os.environ)
    for account in accounts:
        out.print(
            f"{account.email}: {'created' if account.created else 'already a member'} (user id {account.user_id})"
        )
    out.print(
        f"Passwords: {path} — hand each person their line. Sign-up link for others: "
        f"{invite_link(settings.url, credentials.token)}"
    )


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Any]:
    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@app.command("import")
def import_command(
    project: Annotated[str, typer.Argument(help="Project name from params.yaml.")],
    source: Annotated[str, typer.Argument(help="Folder or s3:// prefix with the images.")],
    labels: Annotated[
        str,
        typer.Option(
            help="Existing labels: yolo (images/, labels/, classes.txt), folders (one folder per class) or none."
        ),
    ] = "none",
    predictions: Annotated[
        Path | None, typer.Option(help="`crux predict --json` lines to attach as pre-annotations.")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Import images with their labels (and model pre-annotations) in bulk; re-running adds nothing twice."""
    from crux import importer
    from crux.labelstudio.projects import require_project

    ctx = load_context(params)
    cfg = _ls_config(ctx)
    spec = cfg.project(project)
    if "://" not in source:
        source = str(Path(source).resolve())
    started = time.perf_counter()
    with progress_bar(f"Reading {source}", None) as advance:
        scan = importer.scan_source(source, spec, labels, progress=advance)
    matched = importer.match_predictions(scan, importer.read_predictions(predictions, spec)) if predictions else {}
    client = _client(ctx)
    project_id = require_project(client, project).id
    s3_options = _s3_storage_options() if source.startswith("s3://") else {}
    with progress_bar(f"Importing into {project}", len(scan.items)) as advance:
        report = importer.import_items(
            client, project_id, spec, scan, ctx.path(cfg.files_root), matched, s3_options=s3_options, progress=advance
        )
    elapsed = time.perf_counter() - started
    out.print(
        f"{project}: {report.created} new task(s), {report.already_present} already present, "
        f"{report.annotations} with annotations, {report.predictions} prediction(s), "
        f"{report.duplicates_in_source} duplicate file(s) skipped — {elapsed:.1f} s"
    )


def _s3_storage_options() -> dict[str, Any]:
    """Credentials Label Studio needs to serve an S3 source, from the usual AWS variables."""
    options = {
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "region_name": os.environ.get("AWS_DEFAULT_REGION"),
        "s3endpoint": os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
    }
    return {key: value for key, value in options.items() if value}


# --------------------------------------------------------------------------------------------------
# Datasets


def _dataset_config(ctx: Context) -> DatasetConfig:
    return from_mapping(DatasetConfig, ctx.section("dataset"), "dataset")


def _s3_fetch_options() -> dict[str, Any]:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


@app.command("snapshot")
def snapshot_command(
    project: Annotated[str, typer.Argument(help="Project name from params.yaml.")],
    commit: Annotated[bool, typer.Option("--commit", help="dvc add + dvc push + git commit of data.dvc.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Snapshot a Label Studio project into data/PROJECT (only new images are fetched)."""
    from crux.dataset.snapshot import build_dataset, export_snapshot_to_file
    from crux.dataset.store import make_fetcher
    from crux.labelstudio.projects import require_project

    ctx = load_context(params)
    spec = _ls_config(ctx).project(project)
    cfg = _dataset_config(ctx)
    out_dir = ctx.path(cfg.project_dir(project))
    connection = _connection(ctx)
    client = _client(ctx)
    project_id = require_project(client, project).id
    export_path = ctx.root / ".crux" / "exports" / f"{project}.json"
    with console.status(f"Exporting {project} from Label Studio…"):
        export_snapshot_to_file(client, project_id, export_path, retries=cfg.retries)
    fetch = make_fetcher(
        files_root=connection.files_root,
        ls_url=connection.url,
        token=connection.token,
        storage_options=_s3_fetch_options(),
        retries=cfg.retries,
    )
    with console.status(f"Building {out_dir.relative_to(ctx.root)} (fetching new images)…"):
        summary = build_dataset(
            export_path,
            out_dir,
            spec.kind,
            spec.class_names,
            spec.ok_class,
            fetch,
            cfg.split,
            previous_dir=out_dir,
            project=project,
            workers=cfg.fetch_workers,
        )
    export_path.unlink(missing_ok=True)
    out.print(
        f"{project}: {summary.items} items ({summary.conflicted} conflicted), {summary.skipped} skipped, "
        f"{summary.unlabeled} unlabeled, {len(summary.excluded)} excluded; "
        f"{summary.fetched} images fetched, {summary.reused} reused"
    )
    for excluded in summary.excluded:
        console.print(f"[yellow]excluded[/] task {excluded.task_id}: {excluded.reason}")
    if commit:
        from crux.dataset import versioning

        with console.status("dvc add, dvc push, git commit…"):
            versioning.init_repo(ctx.root)
            result = versioning.commit_version(ctx.root, project=project, data_rel=str(cfg.project_dir(project)))
        out.print(
            "No change: no new dataset version."
            if result is None
            else f"New dataset version {result.commit[:10]}: {result.message.splitlines()[0]}"
        )


@app.command("export-dataset")
def export_dataset_command(
    project: Annotated[str, typer.Argument(help="Project name from params.yaml.")],
    dest: Annotated[Path, typer.Argument(help="Folder to write (one sub-folder per split).")],
    format: Annotated[str, typer.Option("--format", help="yolo | coco | folders | ls-json | voc")],
    rev: Annotated[str | None, typer.Option(help="Git revision of the dataset; default the workspace.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write a dataset version in a training format, images included."""
    import tempfile

    from crux.dataset import versioning
    from crux.dataset.formats import export_dataset
    from crux.dataset.manifest import read_classes, read_manifest

    ctx = load_context(params)
    data_rel = str(_dataset_config(ctx).project_dir(project))
    with tempfile.TemporaryDirectory(prefix="crux-export-") as tmp:
        src = versioning.materialize(ctx.root, rev, Path(tmp), data_rel)
        if not (src / "manifest.jsonl").exists():
            raise ConfigError(f"{data_rel}: no dataset at {rev or 'the workspace'}; run `crux snapshot {project}`")
        summary = export_dataset(
            src, read_manifest(src / "manifest.jsonl"), read_classes(src / "classes.json"), dest, format
        )
    out.print(f"{summary.images} images → {dest} ({summary.per_split})")


def _projects_with_data(ctx: Context, project: str | None) -> list[str]:
    cfg = _ls_config(ctx)
    return [project] if project else list(cfg.projects)


@data_app.command("diff")
def data_diff(
    rev_a: Annotated[
        str | None, typer.Argument(help="Older revision; default: HEAD, or HEAD~1 when the workspace equals HEAD.")
    ] = None,
    rev_b: Annotated[str | None, typer.Argument(help="Newer revision; default the workspace.")] = None,
    project: Annotated[str | None, typer.Option("--project", "-p", help="One project; default all.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """What changed between two dataset versions, per class and split, item by item (Markdown for a PR)."""
    import json

    from crux.dataset import versioning
    from crux.dataset.diff import diff_manifests, diff_to_json, diff_to_markdown

    ctx = load_context(params)
    cfg = _dataset_config(ctx)
    reports: dict[str, Any] = {}
    sections = []
    for name in _projects_with_data(ctx, project):
        data_rel = str(cfg.project_dir(name))
        old_rev, new_rev = rev_a, rev_b
        new = versioning.read_manifest_at(ctx.root, new_rev, data_rel)
        if old_rev is None:
            old_rev = "HEAD"
            if new_rev is None and versioning.read_manifest_at(ctx.root, "HEAD", data_rel) == new:
                old_rev, new_rev = "HEAD~1", "HEAD"
        old = versioning.read_manifest_at(ctx.root, old_rev, data_rel)
        if not old and not new:
            continue
        info = versioning.read_classes_at(ctx.root, new_rev, data_rel) or versioning.read_classes_at(
            ctx.root, old_rev, data_rel
        )
        diff = diff_manifests(old, new, info.classes if info else ())
        reports[name] = {"from": old_rev, "to": new_rev or "workspace", **diff_to_json(diff)}
        sections.append(f"## {name}\n\n" + diff_to_markdown(diff, old_rev, new_rev or "workspace"))
    if as_json:
        out.print_json(json.dumps(reports))
    else:
        out.print("\n\n".join(sections) or "No datasets yet.", markup=False, highlight=False)


@data_app.command("check")
def data_check(
    project: Annotated[str, typer.Argument(help="Project name from params.yaml.")],
    rev: Annotated[str | None, typer.Option(help="Git revision; default the workspace.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Health of a dataset version; exit 1 on errors, 0 when there are only warnings."""
    import tempfile

    from crux.dataset import versioning
    from crux.dataset.health import check_dataset, findings_to_text, has_errors
    from crux.dataset.manifest import read_classes, read_manifest

    ctx = load_context(params)
    cfg = _dataset_config(ctx)
    data_rel = str(cfg.project_dir(project))
    with tempfile.TemporaryDirectory(prefix="crux-check-") as tmp:
        src = versioning.materialize(ctx.root, rev, Path(tmp), data_rel)
        if not (src / "manifest.jsonl").exists():
            raise ConfigError(f"{data_rel}: no dataset at {rev or 'the workspace'}; run `crux snapshot {project}`")
        findings = check_dataset(
            src, read_manifest(src / "manifest.jsonl"), read_classes(src / "classes.json"), cfg.health
        )
    out.print(findings_to_text(findings) or "No findings.", markup=False, highlight=False)
    raise typer.Exit(1 if has_errors(findings) else 0)


# --------------------------------------------------------------------------------------------------
# Ingest


def _ingest_settings(ctx: Context) -> Any:
    """`ingest:` from params, with relative SQLite and storage paths anchored at the project folder."""
    import dataclasses

    from crux.ingest import IngestSettings

    settings = from_mapping(IngestSettings, ctx.section("ingest"), "ingest")
    changes: dict[str, str] = {}
    prefix = "sqlite:///"
    if settings.database_url.startswith(prefix) and not settings.database_url.startswith(prefix + "/"):
        database = ctx.path(Path(settings.database_url[len(prefix) :]))
        database.parent.mkdir(parents=True, exist_ok=True)
        changes["database_url"] = prefix + str(database)
    if "://" not in settings.storage_url:
        changes["storage_url"] = str(ctx.path(Path(settings.storage_url)))
    return dataclasses.replace(settings, **changes)


def _ingest_engine(ctx: Context) -> Any:
    from crux.ingest import create_db_engine, migrate

    engine = create_db_engine(_ingest_settings(ctx).database_url)
    migrate(engine)
    return engine


@ingest_app.command("serve")
def ingest_serve(
    host: Annotated[str, typer.Option(help="Bind address; loopback unless you mean otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8700,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Serve POST /v1/captures for edge stations (FastAPI + uvicorn)."""
    from crux.ingest import serve

    serve(_ingest_settings(load_context(params)), host=host, port=port)


@stations_app.command("add")
def stations_add(
    name: Annotated[str, typer.Argument(help="Station name, e.g. line3-cam1.")],
    line: Annotated[str, typer.Option("--line", help="Inspection line the station belongs to.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Register a station and print its upload token once (only its hash is stored)."""
    from crux.ingest import add_station

    token = add_station(_ingest_engine(load_context(params)), name, line)
    out.print(token, soft_wrap=True)
    console.print(f"Station {name} on line {line}: keep this token now, it cannot be shown again.")


@stations_app.command("revoke")
def stations_revoke(
    name: Annotated[str, typer.Argument(help="Station name.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Revoke a station's token: its uploads are refused from now on."""
    from crux.ingest import revoke_station

    revoke_station(_ingest_engine(load_context(params)), name)
    out.print(f"Station {name} revoked.")


# --------------------------------------------------------------------------------------------------
# The main job


@app.command("demo")
def demo(
    neu: Annotated[Path | None, typer.Option(help="NEU-DET folder; default ../shared/datasets/neu-det.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Start Label Studio, provision the projects, import NEU-DET with its labels, print where to look."""
    from crux import importer
    from crux.labelstudio.client import connect
    from crux.labelstudio.projects import sync_project

    ctx = load_context(params)
    cfg = _ls_config(ctx)
    source = neu or ctx.root.parent / "shared" / "datasets" / "neu-det"
    if not source.exists():
        raise ConfigError(f"{source}: NEU-DET not found; pass --neu PATH (the images/, labels/, classes.txt layout)")
    settings, credentials = start_labelstudio(ctx)
    client = connect(settings.url, credentials.token)
    for name, spec in cfg.projects.items():
        result = sync_project(client, name, spec)
        console.print(f"Project {name}: {result.action} (id {result.project_id})")
    spec = cfg.project("neu-det")
    with progress_bar("Reading NEU-DET", None) as advance:
        scan = importer.scan_source(str(source.resolve()), spec, "yolo", progress=advance)
    project_id = sync_project(client, "neu-det", spec).project_id
    with progress_bar("Importing NEU-DET with its boxes", len(scan.items)) as advance:
        report = importer.import_items(client, project_id, spec, scan, settings.files_root, progress=advance)
    out.print(f"NEU-DET: {report.created} new task(s) with annotations, {report.already_present} already present.")
    out.print(f"\nLabel Studio: {settings.url}/projects/{project_id}/data")
    out.print(f"Login: {credentials.username} — password in {settings.credentials_path}")
    out.print("Stop the server with: .venv/bin/crux labelstudio down")


def main() -> None:
    from crux.errors import CruxError

    try:
        app()
    except CruxError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()

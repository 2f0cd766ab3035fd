"""The `crux` command line: the one place that reads argv, params.yaml and the environment.

Each command turns those into typed config values and calls a library function in `crux/`.
Heavy libraries are imported inside commands so that `crux --help` and the edge stay fast.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
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
keys_app = typer.Typer(help="The Ed25519 keys that sign published models.", no_args_is_help=True)
models_app = typer.Typer(help="Published models of an inspection line.", no_args_is_help=True)
edge_app = typer.Typer(help="The edge inspection runtime.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(edge_app, name="edge")
webhooks_app = typer.Typer(help="The Label Studio webhook receiver that starts cycles.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")
ingest_app = typer.Typer(help="The HTTP ingest service edge stations upload captures to.", no_args_is_help=True)
stations_app = typer.Typer(help="Edge stations and their upload tokens.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(stations_app, name="stations")
from crux.console.cli import register as _register_console  # noqa: E402 - the console's own sub-app

_register_console(app)

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


# The top-level sections of params.yaml; anything else is a typo (`trian:`) that would silently be ignored.
PARAMS_SECTIONS = (
    "labelstudio",
    "ingest",
    "dataset",
    "pipeline",
    "data",
    "augment",
    "train",
    "evaluate",
    "export",
    "gate",
    "edge",
    "deploy",
    "trigger",
    "webhooks",
)


def load_context(params_path: Path) -> Context:
    import difflib

    import yaml

    if not params_path.exists():
        raise ConfigError(f"{params_path}: params file not found (run crux from the project folder or pass --params)")
    try:
        params = yaml.safe_load(params_path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{params_path}{at}: YAML syntax error: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{params_path}: cannot read the params file ({exc})") from None
    if params is None:
        raise ConfigError(f"{params_path}: the params file is empty (expected sections: {', '.join(PARAMS_SECTIONS)})")
    if not isinstance(params, dict):
        raise ConfigError(f"{params_path}: expected a mapping of sections")
    for name in params:
        if name not in PARAMS_SECTIONS:
            close = difflib.get_close_matches(str(name), PARAMS_SECTIONS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(PARAMS_SECTIONS)})"
            raise ConfigError(f"{params_path}: unknown top-level section {name!r}{hint}")
    return Context(root=params_path.resolve().parent, params=params)


# --------------------------------------------------------------------------------------------------
# Label Studio


def labelstudio_config(ctx: Context) -> LabelStudioConfig:
    return from_mapping(LabelStudioConfig, ctx.section("labelstudio"), "labelstudio")


def _server_settings(ctx: Context, host: str | None = None, port: int | None = None) -> Any:
    from crux.label.server import ServerSettings

    cfg = labelstudio_config(ctx)
    venv = Path(os.environ.get("CRUX_LS_VENV") or ctx.root / ".venv-ls")
    return ServerSettings(
        venv=venv,
        state_dir=ctx.path(cfg.state_dir),
        host=host or cfg.host,
        port=port or int(os.environ.get("CRUX_LS_PORT") or cfg.port),
        files_root=ctx.path(cfg.files_root),
        extra_env=None if cfg.block_private_urls else {"SSRF_PROTECTION_ENABLED": "false"},
    )


def _credentials(settings: Any) -> tuple[Any, bool]:
    from crux.label.server import load_or_create_credentials

    given = {
        "username": os.environ.get("CRUX_LS_USERNAME"),
        "password": os.environ.get("CRUX_LS_PASSWORD"),
        "token": os.environ.get("CRUX_LS_TOKEN"),
    }
    return load_or_create_credentials(settings.credentials_path, given)


def labelstudio_access(ctx: Context) -> Any:
    """The configured server: CRUX_LS_URL + CRUX_LS_TOKEN for an external one, else ours."""
    from crux.loop.steps import LabelStudioAccess

    if os.environ.get("CRUX_LS_URL"):
        token = os.environ.get("CRUX_LS_TOKEN")
        if not token:
            raise ConfigError("CRUX_LS_URL is set but CRUX_LS_TOKEN is not")
        return LabelStudioAccess(os.environ["CRUX_LS_URL"].rstrip("/"), token, None)
    settings = _server_settings(ctx)
    credentials, _ = _credentials(settings)
    return LabelStudioAccess(settings.url, credentials.token, settings.files_root)


def _client(ctx: Context) -> Any:
    from crux.label.client import connect

    access = labelstudio_access(ctx)
    return connect(access.url, access.token)


def start_labelstudio(ctx: Context, host: str | None = None, port: int | None = None) -> Any:
    from crux.label import server

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
    from crux.label import server

    stopped = server.stop(_server_settings(load_context(params)))
    out.print("Label Studio stopped." if stopped else "Label Studio was not running.")


@labelstudio_app.command("status")
def labelstudio_status(params: ParamsOption = Path("params.yaml")) -> None:
    """Exit 0 when this project's server runs and is healthy, 1 otherwise."""
    from crux.label import server

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
    webhook: Annotated[bool, typer.Option(help="Register the webhook that reports new labels.")] = True,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Create or update the Label Studio projects declared in params.yaml (idempotent)."""
    from crux.label.projects import sync_project

    ctx = load_context(params)
    cfg = labelstudio_config(ctx)
    client = _client(ctx)
    for name in names or list(cfg.projects):
        result = sync_project(client, name, cfg.project(name), force=force)
        detail = f" ({', '.join(result.changed_fields)})" if result.action == "updated" else ""
        out.print(f"{name}: {result.action}{detail} — project id {result.project_id}")
        if webhook:
            _register_webhook(ctx, client, name, result.project_id)


def _webhooks_config(ctx: Context) -> Any:
    from crux.loop.trigger import WebhooksConfig

    return from_mapping(WebhooksConfig, ctx.section("webhooks"), "webhooks")


def _webhook_secret(ctx: Context) -> str:
    from crux.loop.trigger import load_or_create_secret

    return os.environ.get("CRUX_WEBHOOK_SECRET") or load_or_create_secret(ctx.path(_webhooks_config(ctx).secret_file))


def _register_webhook(ctx: Context, client: Any, name: str, project_id: int) -> None:
    """Label Studio tells our receiver about new labels; a failure here is a warning, not a failed sync."""
    from crux.label.webhook_registration import WebhookRegistrationError, ensure_webhook

    url = _webhooks_config(ctx).url
    try:
        ensure_webhook(client, project_id, url, _webhook_secret(ctx))
    except WebhookRegistrationError as exc:
        console.print(f"[yellow]warning:[/] {name}: webhook to {url} not registered: {exc}")


@annotators_app.command("add")
def annotators_add(
    emails: Annotated[list[str], typer.Argument(help="E-mail addresses, one account each.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Create annotator accounts; their passwords go to a 0600 file in the state folder."""
    from crux.label.annotators import add_annotators, invite_link

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
            help="Existing labels: yolo (images/, labels/, classes.txt; polygons for segment projects), coco "
            "(annotations.json; segmentation for segment projects), folders (one folder per class), masks (segment "
            "projects: NAME.png beside NAME.jpg in class folders, or images/ + masks/ + classes.txt) or none."
        ),
    ] = "none",
    predictions: Annotated[
        Path | None,
        typer.Option(
            help="`crux predict --json` lines to attach as pre-annotations (segment: each line names a mask PNG)."
        ),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Import images with their labels (and model pre-annotations) in bulk; re-running adds nothing twice."""
    from crux.label.projects import require_project

    ctx = load_context(params)
    cfg = labelstudio_config(ctx)
    spec = cfg.project(project)
    if predictions is not None and not predictions.is_file():
        raise ConfigError(f"--predictions {predictions}: file not found (nothing imported)")
    if "://" not in source:
        source = str(Path(source).resolve())
    started = time.perf_counter()
    client = _client(ctx)
    project_id = require_project(client, project).id
    report = _scan_and_import(client, project, project_id, spec, source, labels, ctx.path(cfg.files_root), predictions)
    elapsed = time.perf_counter() - started
    out.print(
        f"{project}: {report.created} new task(s), {report.already_present} already present, "
        f"{report.annotations} with annotations, {report.predictions} prediction(s), "
        f"{report.duplicates_in_source} duplicate file(s) skipped — {elapsed:.1f} s"
    )


def _scan_and_import(
    client: Any,
    project: str,
    project_id: int,
    spec: Any,
    source: str,
    label_format: str,
    files_root: Path,
    predictions: Path | None = None,
) -> Any:
    """Validate the whole source, then bulk-import it, with progress bars (`crux import` and the demo)."""
    from crux.label import importer

    with progress_bar(f"Reading {source}", None) as advance:
        scan = importer.scan_source(source, spec, label_format, progress=advance)
    matched = importer.match_predictions(scan, importer.read_predictions(predictions, spec)) if predictions else {}
    s3_options = s3_storage_options() if source.startswith("s3://") else {}
    with progress_bar(f"Importing into {project}", len(scan.items)) as advance:
        return importer.import_items(
            client, project_id, spec, scan, files_root, matched, s3_options=s3_options, progress=advance
        )


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_storage_options() -> dict[str, Any]:
    """Credentials Label Studio needs to serve an S3 source, from the usual AWS variables."""
    options = {
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "region_name": os.environ.get("AWS_DEFAULT_REGION"),
        "s3endpoint": _s3_endpoint(),
    }
    return {key: value for key, value in options.items() if value}


# --------------------------------------------------------------------------------------------------
# Datasets


def dataset_config(ctx: Context) -> DatasetConfig:
    return from_mapping(DatasetConfig, ctx.section("dataset"), "dataset")


def s3_fetch_options() -> dict[str, Any]:
    endpoint = _s3_endpoint()
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


@app.command("snapshot")
def snapshot_command(
    project: Annotated[str, typer.Argument(help="Project name from params.yaml.")],
    commit: Annotated[bool, typer.Option("--commit", help="dvc add + dvc push + git commit of data.dvc.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Snapshot a Label Studio project into data/PROJECT (only new images are fetched)."""
    from crux.loop.steps import snapshot_project

    ctx = load_context(params)
    spec = labelstudio_config(ctx).project(project)
    with console.status(
        f"Snapshotting {project} (export, new images, {'dvc add/push, git commit' if commit else ''})…"
    ):
        outcome = snapshot_project(
            labelstudio_access(ctx),
            project,
            spec,
            dataset_config(ctx),
            ctx.root,
            commit=commit,
            storage_options=s3_fetch_options(),
        )
    summary = outcome.summary
    out.print(
        f"{project}: {summary.items} items ({summary.conflicted} conflicted), {summary.skipped} skipped, "
        f"{summary.unlabeled} unlabeled, {len(summary.excluded)} excluded; "
        f"{summary.fetched} images fetched, {summary.reused} reused"
    )
    for excluded in summary.excluded:
        console.print(f"[yellow]excluded[/] task {excluded.task_id}: {excluded.reason}")
    if commit:
        version = outcome.version
        out.print(
            "No change: no new dataset version."
            if version is None
            else f"New dataset version {version.commit[:10]}: {version.message.splitlines()[0]}"
        )


@app.command("export-dataset")
def export_dataset_command(
    project: Annotated[str, typer.Argument(help="Project name from params.yaml.")],
    dest: Annotated[Path, typer.Argument(help="Folder to write (one sub-folder per split).")],
    format: Annotated[str, typer.Option("--format", help="yolo | coco | folders | ls-json | voc | masks")],
    rev: Annotated[str | None, typer.Option(help="Git revision of the dataset; default the workspace.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write a dataset version in a training format, images included."""
    import tempfile

    from crux.data import versioning
    from crux.data.formats import export_dataset
    from crux.data.manifest import read_classes, read_manifest

    ctx = load_context(params)
    data_rel = str(dataset_config(ctx).project_dir(project))
    with tempfile.TemporaryDirectory(prefix="crux-export-") as tmp:
        src = versioning.materialize(ctx.root, rev, Path(tmp), data_rel)
        if not (src / "manifest.jsonl").exists():
            raise ConfigError(f"{data_rel}: no dataset at {rev or 'the workspace'}; run `crux snapshot {project}`")
        summary = export_dataset(
            src, read_manifest(src / "manifest.jsonl"), read_classes(src / "classes.json"), dest, format
        )
    out.print(f"{summary.images} images → {dest} ({summary.per_split})")


def _projects_with_data(ctx: Context, project: str | None) -> list[str]:
    cfg = labelstudio_config(ctx)
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

    from crux.data import versioning
    from crux.data.diff import diff_manifests, diff_to_json, diff_to_markdown

    ctx = load_context(params)
    cfg = dataset_config(ctx)
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
        diff = diff_manifests(
            old,
            new,
            info.classes if info else (),
            read_old_mask=versioning.mask_reader(ctx.root, old_rev, data_rel),
            read_new_mask=versioning.mask_reader(ctx.root, new_rev, data_rel),
            mask_relabel_iou=cfg.mask_relabel_iou,
        )
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

    from crux.data import versioning
    from crux.data.health import check_dataset, findings_to_text, has_errors
    from crux.data.manifest import read_classes, read_manifest

    ctx = load_context(params)
    cfg = dataset_config(ctx)
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
# Training pipeline (the dvc.yaml stages)


LineOption = Annotated[
    str | None, typer.Option(help="The line whose params.yaml `pipeline.overrides` apply (dvc.yaml passes it).")
]


def _line_values(params: dict[str, Any], line: str | None) -> dict[str, Any]:
    from crux.train.recipe import line_params

    return params if line is None else line_params(params, line)


@app.command("prepare")
def prepare_command(
    data_dir: Annotated[Path, typer.Argument(help="A dataset version, e.g. data/neu-det.")],
    out_dir: Annotated[Path, typer.Argument(help="Where the training-ready split lists go.")],
    line: LineOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Dataset version → training-ready split lists (checks every image against its hash)."""
    from crux.train.prepare import prepare
    from crux.train.recipe import load_pipeline_config

    cfg = load_pipeline_config(_line_values(load_context(params).params, line), ("data",))
    summary = prepare(data_dir, out_dir, cfg.data)
    out.print(f"Prepared {summary['counts']} ({len(summary['excluded'])} excluded) → {out_dir}")


@app.command("train")
def train_command(
    prepared_dir: Annotated[Path, typer.Argument(help="Output of `crux prepare`.")],
    out_dir: Annotated[Path, typer.Argument(help="Model folder (model.pt, checkpoints, dvclive).")],
    quick: Annotated[bool, typer.Option(help="The quick profile: tiny model, a few steps (CI, demo).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoints/last.ckpt.")] = False,
    line: LineOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Train a model with Lightning (GPU when present); every setting is validated before training starts."""
    from crux.train.recipe import load_pipeline_config, merge_params, quick_profile

    ctx = load_context(params)
    values = quick_profile(ctx.params) if quick else _line_values(ctx.params, line)
    if resume:
        values = merge_params(values, {"train": {"resume": True}})
    cfg = load_pipeline_config(values, ("data", "augment", "train"))
    from crux.train.pipeline import train

    summary = train(prepared_dir, out_dir, cfg)
    out.print(
        f"{summary['monitor']} = {summary['best_val']} after {summary['global_step']} steps "
        f"({summary['train_step_s']} s/step) → {out_dir}/model.pt"
    )


@app.command("evaluate")
def evaluate_command(
    model_dir: Annotated[Path, typer.Argument(help="Model folder from `crux train`.")],
    prepared_dir: Annotated[Path, typer.Argument(help="Output of `crux prepare`.")],
    out_dir: Annotated[Path, typer.Argument(help="Metrics folder (metrics.json, plots, report.md).")],
    previous: Annotated[Path | None, typer.Option(help="A previous metrics.json to compare with.")] = None,
    split: Annotated[str, typer.Option(help="Split to measure; test is the frozen yardstick.")] = "test",
    line: LineOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Measure a model on the frozen test split through the edge's own post-processing."""
    import json

    from crux.train.pipeline import evaluate
    from crux.train.recipe import load_pipeline_config

    cfg = load_pipeline_config(_line_values(load_context(params).params, line), ("evaluate",))
    metrics = evaluate(model_dir, prepared_dir, out_dir, cfg.evaluate, previous, split)
    out.print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict | list)}))


@app.command("export")
def export_command(
    model_dir: Annotated[Path, typer.Argument(help="Model folder from `crux train`.")],
    out_dir: Annotated[Path, typer.Argument(help="Where model.onnx and card.json go.")],
    prepared: Annotated[Path | None, typer.Option(help="Prepared data for parity and INT8 calibration.")] = None,
    metrics: Annotated[Path | None, typer.Option(help="metrics.json of `crux evaluate`, copied into the card.")] = None,
    postprocess: Annotated[Path | None, typer.Option(help="postprocess.json of `crux evaluate`.")] = None,
    line: LineOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """ONNX export with onnx.checker and parity against torch, plus the model card."""
    import json

    from crux.ship.export import ExportConfig, dataset_version, export, git_revision

    ctx = load_context(params)
    line_values = _line_values(ctx.params, line)
    cfg = from_mapping(ExportConfig, line_values.get("export"), "export")
    _check_tta(cfg, line_values.get("augment") or {})

    def read(path: Path | None) -> Any:
        return json.loads(path.read_text()) if path is not None and path.is_file() else None

    lineage = {
        "dataset_version": dataset_version(ctx.root / "data.dvc"),
        "git_revision": git_revision(ctx.root),
        "model_dir": str(model_dir),
    }
    card = export(
        model_dir,
        out_dir,
        cfg,
        prepared_dir=prepared,
        metrics=read(metrics),
        postprocess=read(postprocess),
        lineage=lineage,
    )
    out.print(json.dumps({"parity": card.get("parity"), "quantized": card.get("quantized")}, default=str))


def _check_tta(cfg: Any, augment: Mapping[str, Any]) -> None:
    """export.tta may only average over transforms training already treats as label-preserving."""
    from crux.ship.export import TTA_GENERATORS

    trained = {t.get("name") for t in augment.get("transforms") or [] if isinstance(t, Mapping)}
    missing = [g for g in cfg.tta if TTA_GENERATORS[g] not in trained]
    if missing:
        names = ", ".join(TTA_GENERATORS[g] for g in missing)
        raise ConfigError(f"export.tta: {missing} need {names} in augment.transforms (label-preserving in training)")


# --------------------------------------------------------------------------------------------------
# Signing, publishing, the edge

DEFAULT_PRIVATE_KEY = Path(".crux/keys/publish.key")
DEFAULT_PUBLIC_KEY = Path(".crux/keys/publish.pub")


def edge_config(ctx: Context) -> Any:
    from crux.edge.runtime import EdgeConfig

    return from_mapping(EdgeConfig, ctx.section("edge"), "edge")


def model_remote(ctx: Context, remote: str | None) -> str:
    """The model remote: an fsspec URL, or a folder relative to the project."""
    url = remote or edge_config(ctx).remote
    return url if "://" in url else str(ctx.path(Path(url)))


def signing_key(ctx: Context, path: Path | None) -> Any:
    """The signing key: CRUX_SIGNING_KEY (PEM text, e.g. a CI secret), else a file outside git."""
    from crux.ship.signing import load_private_key

    if os.environ.get("CRUX_SIGNING_KEY"):
        return load_private_key(os.environ["CRUX_SIGNING_KEY"])
    key_file = path or Path(os.environ.get("CRUX_SIGNING_KEY_FILE") or ctx.path(DEFAULT_PRIVATE_KEY))
    if not key_file.is_file():
        raise ConfigError(f"no signing key at {key_file}: run `crux keys init` or set CRUX_SIGNING_KEY")
    return load_private_key(key_file.read_bytes())


def public_keys(ctx: Context) -> list[Any]:
    from crux.ship.signing import load_public_keys

    paths = [ctx.path(Path(p)) for p in edge_config(ctx).public_keys]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"edge.public_keys: {', '.join(missing)} not found (run `crux keys init`)")
    return load_public_keys(paths)


@keys_app.command("init")
def keys_init(
    private: Annotated[Path | None, typer.Option(help="Private key file (0600, git-ignored).")] = None,
    public: Annotated[Path | None, typer.Option(help="Public key file, copied to every edge.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing keys (edges must get the new public key).")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Create the key pair that signs published models."""
    from crux.ship.signing import init_keys

    ctx = load_context(params)
    private_path = private or ctx.path(DEFAULT_PRIVATE_KEY)
    public_path = public or ctx.path(DEFAULT_PUBLIC_KEY)
    key_id = init_keys(private_path, public_path, overwrite)
    out.print(f"Key {key_id}: private {private_path} (0600, never commit it), public {public_path} (give to edges).")


@keys_app.command("rotate")
def keys_rotate(
    private: Annotated[Path | None, typer.Option(help="Private key file (0600, git-ignored).")] = None,
    public: Annotated[Path | None, typer.Option(help="Public key file, copied to every edge.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """A new signing key pair; the old public key stays trusted (edge.public_keys) during the overlap."""
    from crux.ship.signing import rotate_keys

    ctx = load_context(params)
    private_path = private or ctx.path(DEFAULT_PRIVATE_KEY)
    public_path = public or ctx.path(DEFAULT_PUBLIC_KEY)
    old_id, new_id, old_public, retired = rotate_keys(private_path, public_path)
    out.print(f"New key {new_id}: private {private_path}, public {public_path}.")
    out.print(
        f"Old key {old_id}: public kept at {old_public}, private moved to {retired} (delete it after the overlap)."
    )
    configured = [str(ctx.path(Path(p))) for p in edge_config(ctx).public_keys]
    if str(old_public) not in configured:
        out.print(
            f"Next: add {old_public} to edge.public_keys (beside {public_path}) and give both public keys to every "
            "edge BEFORE publishing with the new key; remove the old one when production is signed by the new key."
        )


def trusted_keys(ctx: Context) -> list[Any]:
    """edge.public_keys for verifying production before publish/rollback; files not there are skipped (warned)."""
    from crux.ship.signing import load_public_keys

    paths = [ctx.path(Path(p)) for p in edge_config(ctx).public_keys]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        console.print(f"[yellow]edge.public_keys: {', '.join(missing)} not found; not trusted[/]")
    return load_public_keys([p for p in paths if p.is_file()])


def gate_config(ctx: Context) -> Any:
    from crux.ship.publish import GateConfig

    return from_mapping(GateConfig, ctx.section("gate"), "gate")


def check_model_fits_line(ctx: Context, line: str, export_dir: Path) -> None:
    """Refuse a model made for another line: its card's kind, classes (in order), OK class and input channels must
    be the line's project (`labelstudio.projects.LINE`, channels from `data` with the line's overrides)."""
    import json

    from crux.train.recipe import line_params

    projects = labelstudio_config(ctx).projects
    if not projects:
        console.print(f"[yellow]labelstudio.projects is empty: {line}'s model is not checked against a project[/]")
        return
    spec = labelstudio_config(ctx).project(line)  # ConfigError naming the known projects
    card_path = Path(export_dir) / "card.json"
    try:
        card = json.loads(card_path.read_text())
        kind, classes = card["kind"], list(card["classes"])
        channels = int(card["input"]["channels"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{card_path}: not a model card of `crux export` ({type(exc).__name__}: {exc})") from None
    data = line_params(ctx.params, line).get("data") or {}
    want_channels = int(data.get("channels", 1))
    problems = []
    if kind != spec.kind:
        problems.append(f"kind {kind!r}, the line is {spec.kind!r}")
    if classes != list(spec.classes):
        problems.append(f"classes {classes}, the line has {list(spec.classes)}")
    if card.get("ok_class") != spec.ok_class:
        problems.append(f"OK class {card.get('ok_class')!r}, the line's is {spec.ok_class!r}")
    if channels != want_channels:
        problems.append(f"{channels} input channel(s), the line's data has {want_channels}")
    if problems:
        raise ConfigError(
            f"{card_path} is not a model for line {line!r} (labelstudio.projects.{line}): " + "; ".join(problems)
        )


@app.command("publish")
def publish_command(
    line: Annotated[str, typer.Argument(help="Inspection line (the project name).")],
    export_dir: Annotated[Path, typer.Argument(help="Output of `crux export` (model.onnx + card.json).")],
    remote: Annotated[str | None, typer.Option(help="fsspec URL; default edge.remote.")] = None,
    force: Annotated[bool, typer.Option(help="Publish although the gate refuses; needs --reason.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why the gate is overridden; recorded.")] = None,
    int8: Annotated[bool, typer.Option(help="Publish the INT8 model instead of float32.")] = False,
    key: Annotated[Path | None, typer.Option(help="Private key file.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The decision as JSON: every criterion, published version or refusal.")
    ] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Gate the candidate (absolute floors, then vs production), then publish it signed: version folder first,
    pointer last. Exit 1 when the gate refuses; the decision lists every criterion either way."""
    import json

    from crux.ship.publish import GateRefused, publish

    ctx = load_context(params)
    gate = gate_config(ctx)
    check_model_fits_line(ctx, line, export_dir)
    try:
        result = publish(
            model_remote(ctx, remote),
            line,
            export_dir,
            signing_key(ctx, key),
            gate,
            force=force,
            reason=reason,
            model_file="model.int8.onnx" if int8 else "model.onnx",
            trusted_keys=trusted_keys(ctx),
        )
    except GateRefused as refused:
        if as_json:
            print(json.dumps({"line": line, "published": False, "forced": False, "gate": refused.result.to_dict()}))
        else:
            _print_criteria(refused.result.to_dict())
        raise
    if as_json:
        doc = {
            "line": line,
            "published": True,
            "version": result.version,
            "sequence": result.sequence,
            "url": result.url,
            "forced": result.forced,
            "reason": reason if result.forced else None,
            "gate": result.gate.to_dict(),
        }
        print(json.dumps(doc))
        return
    _print_criteria(result.gate.to_dict())
    out.print(f"{line} v{result.version} published — {result.gate.report()}{' (FORCED)' if result.forced else ''}")


def _print_criteria(gate: Mapping[str, Any]) -> None:
    from crux.ship.publish import criteria_lines

    for text in criteria_lines(gate):
        out.print(f"  {text}", markup=False, highlight=False)


@app.command("rollback")
def rollback_command(
    line: Annotated[str, typer.Argument(help="Inspection line.")],
    to: Annotated[int | None, typer.Option("--to", help="Version to return to; default the previous one.")] = None,
    reason: Annotated[str | None, typer.Option(help="Why; recorded in the signed rollback record.")] = None,
    remote: Annotated[str | None, typer.Option(help="fsspec URL; default edge.remote.")] = None,
    key: Annotated[Path | None, typer.Option(help="Private key file.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Point production back at an earlier version with a signed rollback record edges accept."""
    from crux.ship.publish import rollback

    ctx = load_context(params)
    pointer = rollback(
        model_remote(ctx, remote),
        line,
        signing_key(ctx, key),
        to_version=to,
        reason=reason,
        trusted_keys=trusted_keys(ctx),
    )
    out.print(f"{line}: production is now v{pointer['version']} (was v{pointer['previous_version']}).")


@models_app.command("list")
def models_list(
    line: Annotated[str, typer.Argument(help="Inspection line.")],
    remote: Annotated[str | None, typer.Option(help="fsspec URL; default edge.remote.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Every published version with its gate metric, override reason and lineage."""
    import json

    from rich.table import Table

    from crux.ship.publish import list_models

    ctx = load_context(params)
    history = list_models(model_remote(ctx, remote), line, public_keys(ctx))
    if as_json:
        out.print_json(json.dumps(history, default=str))
        return
    from crux.ship.publish import criteria_lines

    current = (history.get("current") or {}).get("version")
    table = Table(title=f"{line} models", show_lines=True)
    for column in ("version", "live", "published", "gate criteria", "forced", "dataset", "git", "signed"):
        table.add_column(column)
    for version in history.get("versions", []):
        lineage = version.get("lineage") or {}
        table.add_row(
            str(version["version"]),
            "●" if version["version"] == current else "",
            str(version.get("published_at", ""))[:19],
            "\n".join(criteria_lines(version.get("gate"))),
            str(version.get("reason") or "") if version.get("forced") else "",
            str(lineage.get("dataset_version") or "")[:10],
            str(lineage.get("git_revision") or "")[:10],
            "yes" if version.get("verified") else "NO",
        )
    out.print(table)


@app.command("predict")
def predict_command(
    model_or_remote: Annotated[str, typer.Argument(help="A model folder, or a published line URL.")],
    images: Annotated[list[str], typer.Argument(help="Image files.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line (the stable contract).")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Inspect images with the edge's own code path; `--json` prints the stable contract."""
    import json

    from crux.edge.predict import open_model, predict_paths

    # A local model folder needs no params; a published line is verified with the trusted keys from params.
    is_folder = (Path(model_or_remote) / "card.json").is_file()
    keys = [] if is_folder else public_keys(load_context(params))
    model = open_model(model_or_remote, public_keys=keys)
    for record in predict_paths(model, images):
        if as_json:
            print(json.dumps(record), flush=True)
        else:
            out.print(f"{record['image']}: {record.get('label', record.get('error'))} {record.get('score', '')}")


@edge_app.command("run")
def edge_run(
    line: Annotated[str, typer.Argument(help="Inspection line whose published model to run.")],
    watch: Annotated[Path | None, typer.Option(help="Folder to watch for new images.")] = None,
    glob: Annotated[str | None, typer.Option(help="Glob of images to inspect once.")] = None,
    view: Annotated[bool, typer.Option(help="A live rich view on stderr.")] = False,
    poll: Annotated[bool, typer.Option(help="Poll the remote and hot-swap new models.")] = True,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Inspect frames (watched folder, glob, or paths on stdin) as JSON lines; hot-swap published models."""
    import json
    import threading

    from crux.edge.heartbeat import start_heartbeat
    from crux.edge.runtime import EdgeRuntime, LiveView, glob_source, stdin_source, watch_folder

    ctx = load_context(params)
    cfg = edge_config(ctx)
    outbox = None
    if cfg.ingest_url:
        from crux.edge.outbox import Outbox

        token = os.environ.get("CRUX_STATION_TOKEN")
        if not token:
            raise ConfigError("edge.ingest_url is set: put this station's token in CRUX_STATION_TOKEN")
        outbox = Outbox(ctx.path(Path(cfg.outbox_dir)), cfg.ingest_url, token, quota_bytes=cfg.outbox_quota_mb << 20)
        outbox.start()
    runtime = EdgeRuntime(
        f"{model_remote(ctx, None)}/{line}",
        line,
        cfg,
        public_keys(ctx),
        ctx.path(Path(cfg.state_dir)),
        outbox=outbox,
        on_event=lambda name, detail: console.print(f"[yellow]{name}[/] {detail}"),
    )
    heartbeat = start_heartbeat(cfg, os.environ.get("CRUX_STATION_TOKEN"), runtime, outbox)
    stop = threading.Event()
    if watch:
        frames = watch_folder(watch, stop, cfg.watch_interval_s)
    elif glob:
        frames = glob_source(glob)
    else:
        frames = stdin_source(sys.stdin)
    live_view = LiveView(overlay_path=ctx.path(Path(cfg.state_dir)) / "last-ng-overlay.png" if view else None)

    def emit(record: dict[str, Any]) -> None:
        print(json.dumps(record), flush=True)
        live_view.update(record)

    try:
        if view:
            from rich.live import Live

            with Live(live_view.render(), console=console, refresh_per_second=4) as live:
                runtime.run(frames, lambda record: (emit(record), live.update(live_view.render())), poll=poll)
        else:
            runtime.run(frames, emit, poll=poll)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if heartbeat:
            heartbeat.stop()
        if outbox:
            outbox.stop()


# --------------------------------------------------------------------------------------------------
# Ingest


def ingest_settings(ctx: Context) -> Any:
    """`ingest:` from params, with relative SQLite and storage paths anchored at the project folder."""
    import dataclasses

    from crux.collect import IngestSettings

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
    from crux.collect import create_db_engine, migrate

    engine = create_db_engine(ingest_settings(ctx).database_url)
    migrate(engine)
    return engine


@app.command("collect")
def collect_command(
    project: Annotated[str, typer.Argument(help="Project (inspection line) from params.yaml.")],
    batch_size: Annotated[int, typer.Option(help="Tasks per import request.")] = 500,
    max_tasks: Annotated[int | None, typer.Option(help="Import at most this many (most important first).")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Edge captures not yet in Label Studio → tasks of their line's project, NG and most uncertain first."""
    from crux.collect.labeling import collect
    from crux.collect.storage import ImageStore

    ctx = load_context(params)
    spec = labelstudio_config(ctx).project(project)
    settings = ingest_settings(ctx)
    s3 = s3_storage_options() if settings.storage_url.startswith("s3://") else {}
    report = collect(
        _ingest_engine(ctx),
        _client(ctx),
        project,
        spec,
        ImageStore(settings.storage_url, settings.storage_options),
        labelstudio_access(ctx).files_root,
        batch_size,
        s3_options=s3,
        max_tasks=max_tasks,
    )
    out.print(report.summary())


@ingest_app.command("serve")
def ingest_serve(
    host: Annotated[str, typer.Option(help="Bind address; loopback unless you mean otherwise.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8700,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Serve POST /v1/captures for edge stations (FastAPI + uvicorn)."""
    from crux.collect import serve

    serve(ingest_settings(load_context(params)), host=host, port=port)


@stations_app.command("add")
def stations_add(
    name: Annotated[str, typer.Argument(help="Station name, e.g. line3-cam1.")],
    line: Annotated[str, typer.Option("--line", help="Inspection line the station belongs to.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Register a station and print its upload token once (only its hash is stored)."""
    from crux.collect import add_station
    from crux.collect.names import check_name

    ctx = load_context(params)
    check_name(name, "station")
    labelstudio_config(ctx).project(line)  # a station of a line that is not a project would upload into nothing
    token = add_station(_ingest_engine(ctx), name, line)
    out.print(token, soft_wrap=True)
    console.print(f"Station {name} on line {line}: keep this token now, it cannot be shown again.")


@stations_app.command("revoke")
def stations_revoke(
    name: Annotated[str, typer.Argument(help="Station name.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Revoke a station's token: its uploads are refused from now on."""
    from crux.collect import revoke_station

    revoke_station(_ingest_engine(load_context(params)), name)
    out.print(f"Station {name} revoked.")


# --------------------------------------------------------------------------------------------------
# The main job


def _prefect_defaults(ctx: Context) -> None:
    """A local Prefect (ephemeral API on SQLite under .crux/prefect) unless the user configured one."""
    os.environ.setdefault("PREFECT_HOME", str(ctx.root / ".crux" / "prefect"))
    # The 20 s default start-up budget of the ephemeral server is tight on 2 cores.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@app.command("cycle")
def cycle_command(
    project: Annotated[str, typer.Argument(help="Project (inspection line) from params.yaml.")],
    quick: Annotated[bool, typer.Option(help="Train with the quick profile (CI: a few steps).")] = False,
    profile: Annotated[
        str | None, typer.Option(help="A training profile: quick, or demo (5-minute training budget).")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Run the improvement cycle once, as a Prefect flow: snapshot → train → evaluate → gate → publish."""
    from crux.train.recipe import PROFILES

    if profile is not None and profile not in PROFILES:
        raise ConfigError(f"--profile {profile}: choose one of {', '.join(PROFILES)}")
    ctx = load_context(params)
    _prefect_defaults(ctx)
    from flows.cycle import cycle

    result = cycle(project, params_path=str(params), quick=quick, profile=profile)
    out.print_json(data=result)


@app.command("deploy")
def deploy_command(
    projects: Annotated[list[str] | None, typer.Argument(help="Projects; default all declared.")] = None,
    serve: Annotated[bool, typer.Option(help="Run the schedules in this process (no worker).")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Register the cycle-PROJECT deployments (cron from params `deploy:`) with the Prefect API."""
    import dataclasses

    ctx = load_context(params)
    _prefect_defaults(ctx)
    from flows import deploy

    cfg = from_mapping(deploy.DeployConfig, ctx.section("deploy"), "deploy")
    declared = list(labelstudio_config(ctx).projects)
    names = projects or declared
    if not os.environ.get("PREFECT_API_URL"):
        console.print("[yellow]PREFECT_API_URL is not set: registering with the local ephemeral API.[/]")
    if serve:
        local = dataclasses.replace(cfg, work_pool=None, work_queue=None)
        deploy.serve(deploy.deployments_from_config(names, local, working_dir=ctx.root))
        return
    ids = deploy.register(deploy.deployments_from_config(names, cfg, working_dir=ctx.root), cfg.work_pool)
    for name, deployment_id in zip(names, ids, strict=True):
        out.print(f"cycle/cycle-{name}: {deployment_id} — {cfg.schedule_cron} {cfg.timezone}, pool {cfg.work_pool}")
    for name in [] if projects else deploy.prune(declared):
        out.print(f"{name}: removed (no longer declared)")


@app.command("trigger")
def trigger_command(
    project: Annotated[str, typer.Argument(help="Project (inspection line).")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Start the cycle deployment of PROJECT now (refused while one is queued or running)."""
    ctx = load_context(params)
    labelstudio_config(ctx).project(project)
    _prefect_defaults(ctx)
    from flows.deploy import trigger_cycle

    run_id = trigger_cycle(project)
    out.print(f"Started flow run {run_id}." if run_id else f"A cycle of {project} is already queued or running.")


@webhooks_app.command("serve")
def webhooks_serve(params: ParamsOption = Path("params.yaml")) -> None:
    """Receive Label Studio webhooks; start cycle-PROJECT after trigger.min_new_labels label changes."""
    from crux.label.webhook_registration import project_names
    from crux.loop.trigger import ReceiverSettings, TriggerConfig, serve

    ctx = load_context(params)
    _prefect_defaults(ctx)
    from flows.deploy import trigger_cycle

    webhooks = _webhooks_config(ctx)
    trigger = from_mapping(TriggerConfig, ctx.section("trigger"), "trigger")
    declared = set(labelstudio_config(ctx).projects)
    client = _client(ctx)
    settings = ReceiverSettings.from_config(webhooks, trigger, _webhook_secret(ctx))
    serve(
        settings,
        lambda project: trigger_cycle(project, reason="labels"),
        lambda: {i: n for i, n in project_names(client).items() if n in declared},
        host=webhooks.host,
        port=webhooks.port,
    )


DEMO_LINE = "neu-cls"


def _neu_class_folders(source: Path, dest: Path) -> Path:
    """NEU-DET's images laid out as `dest/<class>/<file>` (the class is the file name's prefix, as in NEU-CLS),
    hard links where the file system allows (copies otherwise), for `crux import --labels folders`."""
    classes = (source / "classes.txt").read_text().split()
    for image in sorted((source / "images").glob("*.jpg")):
        cls = image.stem.rsplit("_", 1)[0]
        if cls not in classes:
            raise ConfigError(f"{image}: file name does not start with one of {classes}")
        target = dest / cls / image.name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(image, target)
        except OSError:
            import shutil

            shutil.copyfile(image, target)
    return dest


class _DemoProgress:
    """Stage, epoch and time left of the running cycle, read from the files the pipeline writes (dvc captures
    the commands' own output): a status line that changes every few seconds instead of one long spinner."""

    def __init__(self, root: Path, line: str, budget_s: float | None, epochs: int) -> None:
        self.root, self.line, self.budget_s, self.epochs = root, line, budget_s, epochs
        self.started = time.time()
        self.train_started: float | None = None

    def _fresh(self, rel: str) -> Path | None:
        path = self.root / rel
        return path if path.exists() and path.stat().st_mtime >= self.started else None

    def text(self) -> str:
        import json

        line = self.line
        elapsed = time.time() - self.started
        if self._fresh(f"models/{line}/export/card.json"):
            return "gate → signed publish…"
        if self._fresh(f"metrics/{line}/metrics.json"):
            return "export: ONNX, onnx.checker, parity with torch, model card…"
        if self._fresh(f"models/{line}/candidate/train.json"):
            return "evaluate: the frozen test split through the edge's post-processing…"
        live = self._fresh(f"models/{line}/candidate/dvclive/metrics.json")
        if live is not None:
            self.train_started = self.train_started or live.stat().st_mtime
            try:
                doc = json.loads(live.read_text())
            except ValueError:
                doc = {}
            val = (doc.get("val") or {}).get("macro_f1")
            spent = time.time() - self.train_started
            eta = (
                f", ≤{max(self.budget_s - spent, 0):.0f} s left of the {self.budget_s:.0f} s budget"
                if self.budget_s
                else ""
            )
            score = f", val macro-F1 {val:.3f}" if isinstance(val, int | float) else ""
            return f"train: epoch {int(doc.get('epoch', 0)) + 1}/{self.epochs}{score}{eta}"
        if self._fresh(f"build/{line}/prepared"):
            return "train: starting (Lightning, albumentations)…"
        if self._fresh(f"data/{line}/manifest.jsonl"):
            return f"dvc exp run: prepare (hash-checking every image)… {elapsed:.0f} s"
        return f"snapshot: Label Studio export → DVC dataset version… {elapsed:.0f} s"


@app.command("demo")
def demo(
    neu: Annotated[Path | None, typer.Option(help="NEU-DET folder; default ../shared/datasets/neu-det.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """The whole loop on embedded defaults: Label Studio with NEU's images and their defect types (standing in for
    a team of annotators) → the Prefect cycle (demo profile: a 5-minute training budget) → the
    gate → a signed model in the local remote → the edge runtime on test-split images the model never trained on
    → a verdict per defect class. Exit 1 when the gate refuses the model."""
    import json
    import shutil
    import threading

    from crux.label.client import connect
    from crux.label.projects import sync_project
    from crux.train.recipe import DEMO_PROFILE, max_time_seconds

    started = time.perf_counter()
    ctx = load_context(params)
    cfg = labelstudio_config(ctx)
    line = DEMO_LINE
    spec = cfg.project(line)
    source = neu or ctx.root.parent / "shared" / "datasets" / "neu-det"
    if not (source / "images").is_dir() or not (source / "classes.txt").is_file():
        raise ConfigError(f"{source}: NEU-DET not found; pass --neu PATH (the images/, labels/, classes.txt layout)")
    console.rule("1/5 Label Studio")
    settings, credentials = start_labelstudio(ctx)
    client = connect(settings.url, credentials.token)
    project_ids = {}
    for name, project_spec in cfg.projects.items():
        result = sync_project(client, name, project_spec)
        project_ids[name] = result.project_id
        console.print(f"Project {name}: {result.action} (id {result.project_id})")
    project_id = project_ids[line]
    folders = _neu_class_folders(source.resolve(), ctx.root / ".crux" / "demo-sources" / line)
    report = _scan_and_import(client, line, project_id, spec, str(folders), "folders", settings.files_root)
    console.print(
        f"{line}: {report.created} new task(s) labelled with their defect type, {report.already_present} already there."
    )

    train_cfg = DEMO_PROFILE["train"]
    budget = max_time_seconds(train_cfg["max_time"])
    console.rule(f"2/5 The cycle (Prefect flow, demo profile: {budget / 60:.0f}-minute training budget)")
    private = ctx.path(DEFAULT_PRIVATE_KEY)
    if not private.exists() and not os.environ.get("CRUX_SIGNING_KEY"):
        from crux.ship.signing import init_keys

        init_keys(private, ctx.path(DEFAULT_PUBLIC_KEY))
        console.print(f"Signing key created: {private} (0600)")
    _prefect_defaults(ctx)
    progress = _DemoProgress(ctx.root, line, budget, int(train_cfg["epochs"]))
    done = threading.Event()
    cycle_started = time.perf_counter()
    with console.status(progress.text()) as status:

        def tick() -> None:
            while not done.wait(2.0):
                status.update(f"{progress.text()}  [{time.perf_counter() - cycle_started:.0f} s]")

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            from flows.cycle import cycle

            result = cycle(line, params_path=str(ctx.root / "params.yaml"), profile="demo")
        finally:
            done.set()
            ticker.join()
    dataset, published = result["dataset"], result["published"]
    console.print(f"Dataset: {dataset['message'].splitlines()[0] if dataset else 'no change since the last version'}")
    train_json = ctx.root / "models" / line / "candidate" / "train.json"
    if dataset and train_json.is_file():
        summary = json.loads(train_json.read_text())
        console.print(
            f"Trained {summary['epochs']} epoch(s), {summary['global_step']} steps in {summary['wall_s']:.0f} s "
            f"({summary['precision']}; stopped by {summary.get('stopped_by')}), best val {summary['monitor']} "
            f"{summary['best_val']:.4f}"
        )
    if result.get("gate") is not None:
        from crux.ship.publish import criteria_lines

        verdict = "published v" + str(published["version"]) if published else "NOT published"
        console.print(f"Gate: {verdict}")
        for text in criteria_lines(result["gate"]):
            out.print(f"  {text}", markup=False, highlight=False)

    console.rule("3/5 The edge runtime on unseen images")
    from crux.data.manifest import read_manifest
    from crux.edge.runtime import EdgeRuntime
    from crux.ship.publish import list_models, read_pointer

    remote = f"{model_remote(ctx, None)}/{line}"
    keys = public_keys(ctx)
    if read_pointer(remote, keys) is None:
        console.print(f"[bold red]No model in production for {line}: the gate refused it (above). Nothing to run.[/]")
        raise typer.Exit(1)
    data_dir = ctx.path(dataset_config(ctx).project_dir(line))
    frames_dir = ctx.root / ".crux" / "demo-frames"
    shutil.rmtree(frames_dir, ignore_errors=True)
    frames_dir.mkdir(parents=True)
    truth: dict[str, list[str]] = {}
    for item in (i for i in read_manifest(data_dir / "manifest.jsonl") if i.split == "test"):
        shutil.copy(data_dir / item.image, frames_dir / item.original_name)
        truth[item.original_name] = [label.cls for label in item.labels]
    edge = edge_config(ctx)
    runtime = EdgeRuntime(remote, line, edge, keys, ctx.path(Path(edge.state_dir)), on_event=lambda name, detail: None)
    records: list[dict[str, Any]] = []
    log = ctx.root / ".crux" / "demo-edge.jsonl"
    runtime.run(sorted(frames_dir.iterdir()), records.append, poll=False)
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    latencies = sorted(r["latency_ms"] for r in records if "latency_ms" in r)
    version = records[0]["model_version"]
    console.print(
        f"{len(records)} test-split frames inspected by model v{version}, "
        f"median latency {latencies[len(latencies) // 2]:.1f} ms/frame (1 thread) → {log}"
    )

    console.rule(f"4/5 Verdict: model v{version} on {len(records)} frames it never trained on")
    from crux.ship.publish import criteria_lines
    from crux.verdict import edge_verdict, verdict_lines

    history = list_models(model_remote(ctx, None), line, keys)
    release = next(v for v in history["versions"] if v["version"] == version)
    verdict = edge_verdict(
        records,
        truth,
        list(spec.class_names),
        release["kind"],
        spec.ok_class,
        name_of=lambda r: Path(r["image"]).name,
    )
    for text in verdict_lines(verdict):
        out.print(text, markup=False, highlight=False)
    metrics = release.get("metrics") or {}
    shown = {k: metrics[k] for k in ("accuracy", "macro_f1", "map50", "map50_95", "n_images") if k in metrics}
    out.print("")
    out.print(
        "Model test metrics (crux evaluate, frozen test split): "
        + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()),
        markup=False,
        highlight=False,
    )
    gate = release.get("gate") or {}
    forced = f" — FORCED: {release.get('reason')}" if release.get("forced") else ""
    out.print(f"Gate decision for v{version}: {'passed' if gate.get('passed') else 'REFUSED'}{forced}")
    for text in criteria_lines(gate):
        out.print(f"  {text}", markup=False, highlight=False)
    plots = ctx.root / "metrics" / line / "plots"
    out.print(f"Confusion matrix: {plots / 'confusion_matrix.png'}")
    out.print(f"Curves (JSON for dvc plots; PR curve on detection lines): {plots}/  → .venv/bin/dvc plots show")

    console.rule("5/5 Where to look")
    card = ctx.root / "models" / line / "export" / "card.json"
    out.print(f"Label Studio:   {settings.url}/projects/{project_id}/data")
    out.print(f"Login:          {credentials.username} — password in {settings.credentials_path}")
    out.print(f"Prefect UI:     PREFECT_HOME={os.environ['PREFECT_HOME']} .venv/bin/prefect server start")
    out.print(f"Model card:     {card}")
    out.print(f"Model history:  .venv/bin/crux models list {line}")
    out.print("Dataset diff:   .venv/bin/crux data diff  (metrics: .venv/bin/dvc metrics show)")
    out.print(f"Edge frames:    {log}")
    out.print(f"Done in {time.perf_counter() - started:.0f} s. Stop Label Studio with: make down")


def main() -> None:
    from crux.errors import CruxError

    try:
        app()
    except CruxError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()

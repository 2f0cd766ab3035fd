"""`crux labelstudio|project|annotators|import`: the annotation server, projects from params.yaml, people, imports."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from crux.cli.root import app
from crux.cli.terminal import ParamsOption, console, escape, out, progress_bar
from crux.config import ConfigError
from crux.settings import (
    Context,
    dataset_config,
    labelstudio_client,
    labelstudio_config,
    labelstudio_credentials,
    load_context,
    s3_storage_options,
    server_settings,
    webhook_secret,
    webhooks_config,
)

labelstudio_app = typer.Typer(help="Run the Label Studio annotation server.", no_args_is_help=True)
app.add_typer(labelstudio_app, name="labelstudio")


project_app = typer.Typer(help="Inspection projects declared in params.yaml.", no_args_is_help=True)
app.add_typer(project_app, name="project")


annotators_app = typer.Typer(help="Accounts for the people who label.", no_args_is_help=True)
app.add_typer(annotators_app, name="annotators")


def start_labelstudio(ctx: Context, host: str | None = None, port: int | None = None) -> Any:
    from crux.label import server

    settings = server_settings(ctx, host, port)
    credentials, written = labelstudio_credentials(settings)
    if written:
        console.print(
            f"Admin login and API token stored in [bold]{escape(str(settings.credentials_path))}[/] (mode 0600)."
        )
    with console.status("Starting Label Studio (first start runs migrations, about a minute)…") as spinner:

        def on_wait(elapsed: float) -> None:
            spinner.update(f"Waiting for Label Studio at {settings.url}/health … {elapsed:.0f} s")

        state = server.start(settings, credentials, os.environ, on_wait=on_wait)
    console.print(
        f"Label Studio is up at [bold]{escape(settings.public)}[/] "
        f"(pid {state.pid}, log {escape(str(state.log_path))})."
    )
    return settings, credentials


@labelstudio_app.command("up")
def labelstudio_up(
    params: ParamsOption = Path("params.yaml"),
    host: Annotated[str | None, typer.Option(help="Bind address; default loopback from params.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; default from params.", min=1, max=65535)] = None,
) -> None:
    """Start Label Studio in the background (idempotent) and wait until it is healthy."""
    ctx = load_context(params)
    settings, credentials = start_labelstudio(ctx, host, port)
    out.print(f"Login: {credentials.username} (password in {settings.credentials_path})")


@labelstudio_app.command("down")
def labelstudio_down(params: ParamsOption = Path("params.yaml")) -> None:
    """Stop the Label Studio server this project started (never another one)."""
    from crux.label import server

    stopped = server.stop(server_settings(load_context(params)))
    out.print("Label Studio stopped." if stopped else "Label Studio was not running.")


@labelstudio_app.command("status")
def labelstudio_status(params: ParamsOption = Path("params.yaml")) -> None:
    """Exit 0 when this project's server runs and is healthy, 1 otherwise."""
    from crux.label import server

    settings = server_settings(load_context(params))
    state = server.status(settings)
    word = "healthy" if state.healthy else ("starting or unhealthy" if state.running else "not running")
    out.print(f"Label Studio {word} at {settings.public}" + (f" (pid {state.pid})" if state.pid else ""))
    raise typer.Exit(0 if state.healthy else 1)


@labelstudio_app.command("url")
def labelstudio_url(params: ParamsOption = Path("params.yaml")) -> None:
    """Print the server URL (labelstudio.public_url when set: the address annotators use)."""
    out.print(server_settings(load_context(params)).public)


@project_app.command("sync")
def project_sync(
    names: Annotated[list[str] | None, typer.Argument(help="Projects to sync; default all declared.")] = None,
    force: Annotated[bool, typer.Option(help="Allow removing classes that annotations still use.")] = False,
    webhook: Annotated[bool, typer.Option(help="Register the webhook that reports new labels.")] = True,
    check: Annotated[bool, typer.Option(help="Change nothing; exit 1 printing what differs from params.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Create or update the Label Studio projects declared in params.yaml (idempotent)."""
    from crux.label.projects import sync_project

    ctx = load_context(params)
    if check:
        from crux.cli.team import sync_check

        return sync_check(ctx, names)
    cfg = labelstudio_config(ctx)
    client = labelstudio_client(ctx)
    for name in names or list(cfg.projects):
        result = sync_project(client, name, cfg.project(name), force=force)
        detail = f" ({', '.join(result.changed_fields)})" if result.action == "updated" else ""
        out.print(f"{name}: {result.action}{detail} — project id {result.project_id}")
        if result.action == "created":
            _warn_if_restorable(ctx, client, name, result.project_id)
        if webhook:
            _register_webhook(ctx, client, name, result.project_id)


def _warn_if_restorable(ctx: Context, client: Any, name: str, project_id: int) -> None:
    """A project created again while its dataset holds labels was deleted: say how to get the labels back."""
    from crux.label.restore import restore_needed, version_items

    lost = restore_needed(client, name, project_id, version_items(ctx.root, str(dataset_config(ctx).project_dir(name))))
    if lost:
        console.print(f"[yellow]warning:[/] {escape(lost)}")


def _register_webhook(ctx: Context, client: Any, name: str, project_id: int) -> None:
    """Label Studio tells our receiver about new labels; a failure here is a warning, not a failed sync."""
    from crux.label.webhook_registration import WebhookRegistrationError, ensure_webhook

    url = webhooks_config(ctx).url
    try:
        ensure_webhook(client, project_id, url, webhook_secret(ctx))
    except WebhookRegistrationError as exc:
        console.print(f"[yellow]warning:[/] {escape(f'{name}: webhook to {url} not registered: {exc}')}")


@project_app.command("restore")
def project_restore(
    line: Annotated[str, typer.Argument(help="Project (inspection line) from params.yaml.")],
    rev: Annotated[
        str | None, typer.Option(help="Git revision of the dataset version; default HEAD's (else the workspace's).")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="The project exists and holds tasks: add only the images it lacks.")
    ] = False,
    images: Annotated[
        Path | None,
        typer.Option(help="Where the version's images are kept for Label Studio (below labelstudio.files_root)."),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Recreate a deleted or emptied Label Studio project from a dataset version: tasks, every annotator's labels,
    provenance and predictions."""
    import tempfile

    from crux.data import versioning
    from crux.label.restore import restore_project

    ctx = load_context(params)
    cfg = labelstudio_config(ctx)
    spec = cfg.project(line)
    data_rel = str(dataset_config(ctx).project_dir(line))
    if rev is not None:
        versioning.check_revision(ctx.root, rev)
    elif (ctx.root / ".git").exists() and versioning.read_classes_at(ctx.root, "HEAD", data_rel) is not None:
        rev = "HEAD"  # the last committed version, not a workspace a later snapshot may have emptied
    version = rev or "the workspace"
    items = versioning.read_manifest_at(ctx.root, rev, data_rel)
    info = versioning.read_classes_at(ctx.root, rev, data_rel)
    if info is None:
        raise ConfigError(f"{data_rel}: no dataset version of {line} at {version}: nothing to restore from")
    image_dir = (images or ctx.path(Path(".crux") / "restored" / line)).resolve()
    client = labelstudio_client(ctx)
    with tempfile.TemporaryDirectory(prefix="crux-restore-") as tmp:
        dataset_dir = versioning.materialize(ctx.root, rev, Path(tmp), data_rel)
        with progress_bar(f"Restoring {line} from {version}", len(items)) as advance:
            report = restore_project(
                client,
                line,
                spec,
                items,
                info,
                dataset_dir,
                image_dir,
                ctx.path(cfg.files_root),
                version=version,
                force=force,
                create_members=_member_maker(ctx),
                progress=advance,
            )
    out.print(
        f"{line}: project {report.project_action} (id {report.project_id}); {report.tasks} task(s) restored from "
        f"{version} with {report.annotations} annotation(s) and {report.predictions} prediction(s), "
        f"{report.already_present} already present; images in {image_dir}"
    )
    if report.members_created:
        out.print(f"Accounts created for: {', '.join(report.members_created)}")
    if report.uncredited:
        console.print(
            "[yellow]warning:[/] "
            + escape(f"no e-mail for {', '.join(report.uncredited)}: their labels are credited to your account")
        )
    if report.provenance_lost:
        console.print(
            "[yellow]warning:[/] "
            + escape(
                f"'edited' provenance not reproducible (prediction not in the version) for old task(s) "
                f"{', '.join(map(str, report.provenance_lost))}"
            )
        )


def _member_maker(ctx: Context) -> Any:
    """Missing annotators get logins as `crux annotators add` makes them, on the server this project runs; an
    external server (CRUX_LS_URL) gets members without a password (restore then falls back to the API)."""
    if os.environ.get("CRUX_LS_URL"):
        return None
    from crux.label.annotators import add_annotators

    settings = server_settings(ctx)
    credentials, _ = labelstudio_credentials(settings)
    return lambda emails: add_annotators(settings, credentials, emails, os.environ)


@annotators_app.command("add")
def annotators_add(
    emails: Annotated[list[str], typer.Argument(help="E-mail addresses, one account each.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Create annotator accounts; their passwords go to a 0600 file in the state folder."""
    from crux.label.annotators import add_annotators, invite_link

    ctx = load_context(params)
    settings = server_settings(ctx)
    credentials, _ = labelstudio_credentials(settings)
    accounts, path = add_annotators(settings, credentials, emails, os.environ)
    for account in accounts:
        out.print(
            f"{account.email}: {'created' if account.created else 'already a member'} (user id {account.user_id})"
        )
    out.print(
        f"Passwords: {path} — hand each person their line. Sign-up link for others: "
        f"{invite_link(settings.url, credentials.token, settings.public)}"
    )


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
    client = labelstudio_client(ctx)
    project_id = require_project(client, project).id
    report = _scan_and_import(client, project, project_id, spec, source, labels, ctx.path(cfg.files_root), predictions)
    elapsed = time.perf_counter() - started
    out.print(
        f"{project}: {report.created} new task(s), {report.already_present} already present, "
        f"{report.annotations} with annotations, {report.predictions} prediction(s), "
        f"{report.duplicates_in_source} duplicate file(s) skipped — {elapsed:.1f} s"
    )
    for conflict in report.conflicts:
        console.print(f"[yellow]conflict:[/] {escape(conflict)}")


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

"""`crux snapshot|export-dataset|data`: Label Studio exports as versioned datasets, reviewer diffs, health checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from crux.cli.root import app
from crux.cli.terminal import ParamsOption, console, escape, out
from crux.config import ConfigError
from crux.settings import (
    Context,
    dataset_config,
    labelstudio_access,
    labelstudio_config,
    load_context,
    s3_fetch_options,
)

data_app = typer.Typer(help="Versioned datasets: reviewer diffs and health checks.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.command("snapshot")
def snapshot_command(
    project: Annotated[str, typer.Argument(help="Project name from params.yaml.")],
    commit: Annotated[
        bool, typer.Option("--commit", help="dvc add + dvc push + git commit of data/PROJECT.dvc.")
    ] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Snapshot a Label Studio project into data/PROJECT (only new images are fetched)."""
    from crux.loop.steps import snapshot_project

    ctx = load_context(params)
    spec = labelstudio_config(ctx).project(project)
    with console.status(
        f"Snapshotting {escape(project)} (export, new images, {'dvc add/push, git commit' if commit else ''})…"
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
        console.print(f"[yellow]excluded[/] task {excluded.task_id}: {escape(str(excluded.reason))}")
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
    labelstudio_config(ctx).project(project)  # a ConfigError naming the declared projects
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
    if project:
        cfg.project(project)  # a ConfigError naming the declared projects
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
    from crux.data.provenance import provenance_markdown as provenance_md
    from crux.data.provenance import provenance_mix

    ctx = load_context(params)
    cfg = dataset_config(ctx)
    for rev in (rev_a, rev_b):
        if rev is not None:
            versioning.check_revision(ctx.root, rev)
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
        mix = provenance_mix(new, info.classes if info else ())
        reports[name] = {"from": old_rev, "to": new_rev or "workspace", **diff_to_json(diff), "provenance": mix}
        sections.append(f"## {name}\n\n" + diff_to_markdown(diff, old_rev, new_rev or "workspace") + provenance_md(mix))
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
    from crux.data.provenance import provenance_markdown, provenance_mix

    ctx = load_context(params)
    labelstudio_config(ctx).project(project)  # a ConfigError naming the declared projects ("did you mean")
    cfg = dataset_config(ctx)
    data_rel = str(cfg.project_dir(project))
    with tempfile.TemporaryDirectory(prefix="crux-check-") as tmp:
        src = versioning.materialize(ctx.root, rev, Path(tmp), data_rel)
        if not (src / "manifest.jsonl").exists():
            raise ConfigError(f"{data_rel}: no dataset at {rev or 'the workspace'}; run `crux snapshot {project}`")
        items, info = read_manifest(src / "manifest.jsonl"), read_classes(src / "classes.json")
        findings = check_dataset(src, items, info, cfg.health)
    out.print(findings_to_text(findings) or "No findings.", markup=False, highlight=False)
    out.print(provenance_markdown(provenance_mix(items, info.classes)), markup=False, highlight=False)
    raise typer.Exit(1 if has_errors(findings) else 0)


@data_app.command("remote")
def data_remote(
    url: Annotated[str, typer.Argument(help="s3://bucket/prefix (AWS, MinIO, any S3 API) or a folder path.")],
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3 API endpoint other than AWS: MinIO, a test S3.")
    ] = None,
    name: Annotated[str, typer.Option(help="The DVC remote's name.")] = "storage",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Set the DVC remote every worker pushes dataset versions and pipeline outputs to (.dvc/config, committed so
    every clone shares it). Credentials are never written: DVC reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or
    an AWS profile or instance role) from each machine's environment."""
    from crux.data import versioning

    ctx = load_context(params)
    if url.startswith("s3://"):
        if len(url) <= len("s3://") or url[len("s3://")] == "/":
            raise ConfigError(f"{url}: expected s3://BUCKET/PREFIX")
    elif "://" in url:
        raise ConfigError(f"{url}: DVC remotes here are s3://BUCKET/PREFIX or a folder path")
    if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
        raise ConfigError(f"--endpoint-url {endpoint_url!r} is not an http(s) URL")
    if endpoint_url is not None and not url.startswith("s3://"):
        raise ConfigError("--endpoint-url only applies to an s3:// remote")
    versioning.init_repo(ctx.root, str(dataset_config(ctx).root))
    versioning.set_remote(ctx.root, url, name=name, options={"endpointurl": endpoint_url} if endpoint_url else None)
    out.print(f"DVC remote {name!r} = {url}{f' at {endpoint_url}' if endpoint_url else ''} (default).")
    out.print("Commit .dvc/config so every worker's clone uses it: git commit -m 'DVC remote' .dvc/config")

"""Labelling as a team: `crux data agreement`, `crux review`, and `crux project sync --check`'s report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from crux.cli.data import data_app
from crux.cli.root import app
from crux.cli.terminal import ParamsOption, out
from crux.settings import (
    dataset_config,
    labelstudio_client,
    labelstudio_config,
    labelstudio_public_url,
    load_context,
    public_keys,
)


def sync_check(ctx: Any, names: list[str] | None) -> None:
    """`crux project sync --check`: exit 1, printing the difference, when a project was edited in the UI."""
    from crux.label.projects import check_project
    from crux.label.restore import restore_needed, version_items
    from crux.label.team import differences_to_text

    cfg = labelstudio_config(ctx)
    data = dataset_config(ctx)
    client = labelstudio_client(ctx)
    drifted = False
    for name in names or list(cfg.projects):
        project_id, differences = check_project(client, name, cfg.project(name))
        # Deleted or emptied (any member of Label Studio Community can): a restore, not a sync, is the fix.
        lost = restore_needed(client, name, project_id, version_items(ctx.root, str(data.project_dir(name))))
        if lost:
            drifted = True
            out.print(f"{name}: {lost}", markup=False, highlight=False)
            continue
        if differences:
            drifted = True
            out.print(differences_to_text(name, project_id or 0, differences), markup=False, highlight=False)
        else:
            out.print(f"{name}: matches params.yaml (project id {project_id})")
    if drifted:
        out.print("Run `crux project sync` to restore params.yaml's settings (or edit params.yaml to match).")
        raise typer.Exit(1)


def _manifest_at(ctx: Any, project: str, rev: str | None) -> tuple[list[Any], Any, Any]:
    from crux.config import ConfigError
    from crux.data import versioning

    data_rel = str(dataset_config(ctx).project_dir(project))
    items = versioning.read_manifest_at(ctx.root, rev, data_rel)
    info = versioning.read_classes_at(ctx.root, rev, data_rel)
    if info is None:
        raise ConfigError(f"{data_rel}: no dataset at {rev or 'the workspace'}; run `crux snapshot {project}`")
    return items, info, versioning.mask_reader(ctx.root, rev, data_rel)


def data_agreement(
    project: Annotated[str, typer.Argument(help="Project name from params.yaml.")],
    rev: Annotated[str | None, typer.Argument(help="Git revision of the dataset; default the workspace.")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Item agreement (0..1) below which an image is flagged; default the project's min_item."),
    ] = None,
    annotator: Annotated[str | None, typer.Option(help="Only the pairs this annotator is part of.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Also write agreement.md and .json here.")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Agreement between annotators of the same images, per class and per annotator pair (Markdown; --json)."""
    from crux.data.agreement import agreement_report, report_to_markdown
    from crux.masks import decode_png

    ctx = load_context(params)
    spec = labelstudio_config(ctx).project(project)
    items, info, read_mask = _manifest_at(ctx, project, rev)
    report = agreement_report(
        items,
        info.kind,
        info.classes,
        threshold=spec.min_item_agreement if threshold is None else threshold,
        match_iou=spec.agreement.match_iou,
        annotator=annotator,
        load_mask=lambda rel: decode_png(read_mask(rel)),
    )
    markdown = report_to_markdown(report, f"{project} at {rev or 'the workspace'}")
    data = {"project": project, "rev": rev or "workspace", **report.to_json()}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "agreement.md").write_text(markdown)
        (out_dir / "agreement.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if as_json:
        out.print_json(json.dumps(data))
    else:
        out.print(markdown, markup=False, highlight=False)


def review(
    project: Annotated[str, typer.Argument(help="Project name from params.yaml.")],
    rev: Annotated[str | None, typer.Option(help="Git revision of the dataset; default the workspace.")] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Rank by this model (folder or published line URL) on its val/test images instead of CV."),
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds for out-of-sample probabilities.")] = 5,
    top: Annotated[int | None, typer.Option(help="Keep only the first N entries.")] = None,
    view: Annotated[bool, typer.Option(help="Publish the queue as a Label Studio tab and print its link.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Images worth a second look: low agreement first, then suspected label errors (cleanlab), as one link."""
    import tempfile

    from crux.data import versioning
    from crux.label.projects import require_project
    from crux.label.review import (
        ReviewError,
        build_queue,
        cross_val_source,
        model_source,
        publish_view,
        queue_to_markdown,
        view_url,
    )

    ctx = load_context(params)
    spec = labelstudio_config(ctx).project(project)
    if folds < 2:
        raise ReviewError(f"--folds {folds}: cross-validation needs at least 2 folds")
    data_rel = str(dataset_config(ctx).project_dir(project))
    items, info, _ = _manifest_at(ctx, project, rev)
    with tempfile.TemporaryDirectory(prefix="crux-review-") as tmp:
        data_dir = versioning.materialize(ctx.root, rev, Path(tmp), data_rel)
        if info.kind == "detect":
            source = None  # boxes: agreement only (cleanlab's label issues here are for one class per image)
        elif model is not None:
            from crux.edge.predict import open_model

            keys = [] if (Path(model) / "card.json").is_file() else public_keys(ctx)
            source = model_source(data_dir, open_model(model, public_keys=keys), info.classes)
        else:
            source = cross_val_source(data_dir, len(info.classes), folds=folds)
        entries = build_queue(items, info.classes, threshold=spec.min_item_agreement, probabilities=source, limit=top)
    link = None
    if view:
        client = labelstudio_client(ctx)
        project_id = require_project(client, project).id
        view_id = publish_view(client, project_id, [e.task_id for e in entries])
        link = view_url(labelstudio_public_url(ctx), project_id, view_id)
    if as_json:
        out.print_json(json.dumps({"project": project, "link": link, "queue": [e.to_json() for e in entries]}))
    else:
        out.print(queue_to_markdown(entries, link), markup=False, highlight=False)


data_app.command("agreement")(data_agreement)
app.command("review")(review)

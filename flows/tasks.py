"""Prefect tasks: one side effect each, with retries where repeating is safe. They resolve config through
`crux.settings` (the only reader of params.yaml and the environment) and call `crux.loop.steps`; no ML logic here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact


def _context(params_path: str) -> Any:
    from crux.settings import load_context

    return load_context(Path(params_path))


def _retry_unless_config_drift(task: Any, task_run: Any, state: Any) -> bool:
    """A project edited in Label Studio stays edited until someone syncs it: no point in retrying that."""
    from crux.loop.steps import ProjectDriftError

    try:
        state.result()
    except ProjectDriftError:
        return False
    except Exception:
        return True
    return True


@task(retries=2, retry_delay_seconds=15, retry_condition_fn=_retry_unless_config_drift)
def snapshot_task(project: str, params_path: str) -> dict[str, Any] | None:
    """Label Studio → a new dataset version (git commit of data/PROJECT.dvc), or None when nothing changed.

    Stops first (crux.loop.steps.ProjectDriftError, no retry) when the project was edited in Label Studio so that it no
    longer matches params.yaml: `crux project sync --check` inside `snapshot_project`."""
    from crux.data.diff import diff_to_markdown
    from crux.loop.steps import snapshot_project
    from crux.settings import dataset_config, labelstudio_access, labelstudio_config, s3_fetch_options

    ctx = _context(params_path)
    outcome = snapshot_project(
        labelstudio_access(ctx),
        project,
        labelstudio_config(ctx).project(project),
        dataset_config(ctx),
        ctx.root,
        commit=True,
        storage_options=s3_fetch_options(),
    )
    if outcome.version is None:
        create_markdown_artifact(
            key=f"{project}-dataset", markdown=f"# {project}: no change in Label Studio\n", description="Dataset diff"
        )
        return None
    version = outcome.version
    markdown = diff_to_markdown(version.diff, "previous version", version.commit[:10])
    create_markdown_artifact(
        key=f"{project}-dataset",
        markdown=f"# {project} dataset {version.commit[:10]}\n\n{markdown}",
        description="Dataset diff",
    )
    return {"commit": version.commit, "message": version.message, "items": outcome.summary.items}


@task  # no retries: training is deterministic, a retry repeats the same failure at full cost
def reproduce_task(line: str, params_path: str, quick: bool, profile: str | None = None) -> str:
    """`dvc repro`, or `dvc exp run` with a training profile's overrides (quick: CI; demo: `crux demo`)."""
    from crux.loop.steps import metrics_report, reproduce
    from crux.train.recipe import profile_overrides

    ctx = _context(params_path)
    profile = profile or ("quick" if quick else None)
    output = reproduce(ctx.root, line, quick_overrides=profile_overrides(profile) if profile else None)
    report = metrics_report(ctx.root, line)
    if report:
        create_markdown_artifact(key=f"{line}-evaluation", markdown=report, description="Test-split metrics")
    return output


@task(retries=2, retry_delay_seconds=15)
def push_task(params_path: str, line: str | None = None) -> None:
    """Dataset and pipeline outputs (of `line` only, when given) to the DVC remote, so a clean clone can `dvc pull`
    this state; before any git push, so no commit in the shared remote names data that is not there."""
    from crux.loop.steps import push

    push(_context(params_path).root, line)


def check_line(line: str, params_path: str) -> None:
    """Before any side effect: the line must be declared and in pipeline.lines (crux.settings.require_trainable)."""
    from crux.settings import require_trainable

    require_trainable(_context(params_path), line)


@task(retries=2, retry_delay_seconds=10)
def git_sync_task(params_path: str) -> dict[str, Any] | None:
    """`git pull --rebase` from git.remote before the snapshot (None without a shared remote)."""
    from crux.data.gitsync import sync
    from crux.settings import git_config

    ctx = _context(params_path)
    cfg = git_config(ctx)
    if not cfg.shared:
        return None
    result = sync(ctx.root, cfg)
    return {"head": result.head, "upstream": result.upstream, "replayed": result.replayed}


@task(retries=2, retry_delay_seconds=15)
def line_data_task(line: str, params_path: str) -> bool:
    """`dvc pull` of this line's dataset only (data/LINE.dvc) when the worker's cache or workspace lacks it, so the
    snapshot reuses its images and the diff reads the previous version locally."""
    from crux.data.versioning import ensure_line_data
    from crux.settings import dataset_config

    ctx = _context(params_path)
    return ensure_line_data(ctx.root, str(dataset_config(ctx).project_dir(line)))


def pending_version(line: str, params_path: str) -> str | None:
    """A version of the line committed in this checkout and never pushed (a cycle that died): the cycle trains it."""
    from crux.data.gitsync import pending_version as pending
    from crux.settings import dataset_config, git_config

    ctx = _context(params_path)
    return pending(ctx.root, git_config(ctx), str(dataset_config(ctx).project_dir(line)))


@task
def commit_lock_task(line: str, params_path: str) -> str | None:
    """Commit the line's dvc.lock entries (only them, only dvc.lock) when a shared remote is configured."""
    from crux.data.gitsync import commit_lock
    from crux.settings import git_config

    ctx = _context(params_path)
    return commit_lock(ctx.root, line) if git_config(ctx).shared else None


@task  # its own bounded retries (fetch, rebase, push again): a Prefect retry would only repeat them
def git_push_task(params_path: str) -> dict[str, Any] | None:
    """Push the version and dvc.lock commits to git.remote; a lost race rebases and pushes again, never forces."""
    from crux.data.gitsync import push
    from crux.settings import git_config

    ctx = _context(params_path)
    cfg = git_config(ctx)
    if not cfg.shared:
        return None
    result = push(ctx.root, cfg)
    return {"head": result.head, "attempts": result.attempts}


@task(retries=2, retry_delay_seconds=15)
def publish_task(line: str, params_path: str, remote: str | None) -> dict[str, Any] | None:
    """Gate the candidate (absolute floors, then vs production); publish when it passes. A refusal is a decision,
    not a failure: {"published": False, "gate": …} with the criteria in the `LINE-gate` Markdown artifact."""
    from crux.loop.steps import export_dir, publish_candidate
    from crux.settings import check_model_fits_line, gate_config, model_remote, signing_key, trusted_keys
    from crux.ship.publish import GateRefused

    ctx = _context(params_path)
    check_model_fits_line(ctx, line, export_dir(ctx.root, line))
    try:
        result = publish_candidate(
            ctx.root,
            line,
            model_remote(ctx, remote),
            signing_key(ctx, None),
            gate_config(ctx),
            trusted_keys=trusted_keys(ctx),
        )
    except GateRefused as refused:
        create_markdown_artifact(
            key=f"{line}-gate",
            markdown=f"# {line}: not published\n\n{refused.result.markdown()}",
            description="Gate decision",
        )
        return {"published": False, "version": None, "gate": refused.result.to_dict()}
    create_markdown_artifact(
        key=f"{line}-gate",
        markdown=f"# {line}: published v{result.version}\n\n{result.gate.markdown()}",
        description="Gate decision and published version",
    )
    return {"published": True, "version": result.version, "gate": result.gate.to_dict()}

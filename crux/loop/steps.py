"""The steps of the improvement cycle as plain functions of typed values.

The CLI and the Prefect flows both call these, so a flow only orders steps and owns no logic:
snapshot a project into a dataset version, reproduce a line's pipeline (`dvc repro`), publish the
exported candidate through the gate.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crux.errors import CruxError

if TYPE_CHECKING:
    from crux.config import DatasetConfig, ProjectSpec
    from crux.data.snapshot import DatasetSummary
    from crux.data.versioning import VersionResult
    from crux.ship.gate import GateConfig
    from crux.ship.publish import PublishResult


class PipelineError(CruxError, RuntimeError):
    """`dvc repro` (or `dvc exp run`) of a line failed; the message ends with DVC's own output."""


@dataclass(frozen=True)
class LabelStudioAccess:
    url: str
    token: str
    # Where the server reads local files from when it runs on this machine (images are then read from
    # disk instead of over HTTP); None for a remote server.
    files_root: Path | None


@dataclass(frozen=True)
class SnapshotOutcome:
    project: str
    summary: DatasetSummary
    # The git commit of the new dataset version; None when not committing or when nothing changed.
    version: VersionResult | None


def snapshot_project(
    access: LabelStudioAccess,
    project: str,
    spec: ProjectSpec,
    cfg: DatasetConfig,
    root: Path,
    *,
    commit: bool,
    storage_options: dict[str, Any] | None = None,
    check_config: bool = True,
) -> SnapshotOutcome:
    """Label Studio project → `root/data/<project>`; with `commit`, a new DVC version when anything changed.

    With `check_config` it first stops (ProjectDriftError) when the project's label config, title, instructions
    or overlap settings were changed in Label Studio: labels made under another config are not versioned."""
    from crux.data import versioning
    from crux.data.snapshot import build_dataset, export_snapshot_to_file
    from crux.data.store import make_fetcher
    from crux.label.client import connect
    from crux.label.projects import require_project

    client = connect(access.url, access.token)
    guard_project_present(client, project, root, str(cfg.project_dir(project)))
    project_id = require_project(client, project).id
    if check_config:
        guard_project_config(client, project, spec)
    out_dir = root / cfg.project_dir(project)
    export_path = root / ".crux" / "exports" / f"{project}.json"
    export_snapshot_to_file(client, project_id, export_path, retries=cfg.retries)
    fetch = make_fetcher(
        files_root=access.files_root,
        ls_url=access.url,
        token=access.token,
        storage_options=storage_options or {},
        retries=cfg.retries,
    )
    try:
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
            match_iou=spec.agreement.match_iou,
            min_agreement=spec.min_item_agreement,
        )
    finally:
        export_path.unlink(missing_ok=True)
    version = None
    if commit:
        versioning.init_repo(root, str(cfg.root))
        version = versioning.commit_version(
            root, project=project, data_rel=str(cfg.project_dir(project)), mask_relabel_iou=cfg.mask_relabel_iou
        )
    return SnapshotOutcome(project=project, summary=summary, version=version)


class ProjectDriftError(CruxError, RuntimeError):
    """A Label Studio project no longer matches params.yaml (edited in the UI); the message shows the difference."""


class ProjectLostError(ProjectDriftError):
    """A project was deleted or emptied in Label Studio while its dataset holds labels: restore, don't snapshot."""


def guard_project_present(client: Any, project: str, root: Path, data_rel: str) -> None:
    """Stop (ProjectLostError, naming `crux project restore`) before a deleted or emptied project is snapshotted
    into an empty dataset version, or synced back as an empty project."""
    from crux.label.projects import find_project
    from crux.label.restore import restore_needed, version_items

    existing = find_project(client, project)
    lost = restore_needed(client, project, None if existing is None else existing.id, version_items(root, data_rel))
    if lost:
        raise ProjectLostError(lost)


def guard_project_config(client: Any, project: str, spec: ProjectSpec) -> None:
    """`crux project sync --check` for one project: raise ProjectDriftError with the difference, if any."""
    from crux.label.projects import check_project
    from crux.label.team import differences_to_text

    project_id, differences = check_project(client, project, spec)
    if differences:
        raise ProjectDriftError(
            differences_to_text(project, project_id or 0, differences)
            + "\nNot snapshotting labels made under another config: restore it with `crux project sync` "
            "(or change params.yaml to match and sync), then run again."
        )


def _tool(name: str) -> str:
    """A console script of this environment (dvc), found beside the running Python first."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def reproduce(root: Path, line: str, *, quick_overrides: list[str] | None = None) -> str:
    """Run the line's stages up to `export@<line>`; returns DVC's output.

    With `quick_overrides` (`-S key=value` pairs) the run is a `dvc exp run` whose params are applied to
    the workspace; params.yaml is put back byte for byte afterwards (DVC rewrites it without comments),
    so dvc.lock records the quick values and the next full `dvc repro` knows to retrain.
    """
    from crux.data.versioning import identity_env

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(identity_env(root))  # `dvc exp run` commits the experiment
    target = f"export@{line}"
    params_file = root / "params.yaml"
    original = params_file.read_bytes()
    command = (
        [_tool("dvc"), "exp", "run", *quick_overrides, target] if quick_overrides else [_tool("dvc"), "repro", target]
    )
    try:
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    finally:
        params_file.write_bytes(original)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise PipelineError(f"`{' '.join(command[1:])}` failed for line {line!r}:\n{tail}")
    return result.stdout


def push(root: Path, line: str | None = None) -> None:
    """`dvc push`: the dataset and the pipeline's cached outputs to the configured DVC remote. With `line`, only that
    line's pipeline (`export@LINE` and everything upstream, its `data/LINE.dvc` included): a worker holds only the
    lines it trained, and must not fail on the others' missing outputs."""
    command = [_tool("dvc"), "push", "-q"] + (["--with-deps", f"export@{line}"] if line else [])
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PipelineError(f"`{' '.join(command[1:])}` failed: {(result.stdout + result.stderr).strip()[-2000:]}")


def export_dir(root: Path, line: str) -> Path:
    return root / "models" / line / "export"


def metrics_report(root: Path, line: str) -> str:
    report = root / "metrics" / line / "report.md"
    return report.read_text() if report.exists() else ""


def publish_candidate(
    root: Path,
    line: str,
    remote: str,
    private_key: Any,
    gate: GateConfig,
    *,
    force: bool = False,
    reason: str | None = None,
    storage_options: dict[str, Any] | None = None,
    trusted_keys: Sequence[Any] = (),
) -> PublishResult:
    """Gate the line's exported candidate against production and publish it (raises GateRefused); production is
    verified against `trusted_keys` (edge.public_keys) and the signing key."""
    from crux.ship.candidate import CHECK_IMAGES
    from crux.ship.export import validation_images
    from crux.ship.publish import publish

    return publish(
        remote,
        line,
        export_dir(root, line),
        private_key,
        gate,
        force=force,
        reason=reason,
        storage_options=storage_options,
        trusted_keys=trusted_keys,
        # The candidate runs on the val images of the data it was trained from before it may ship.
        check_images=validation_images(root / "build" / line / "prepared", CHECK_IMAGES),
    )

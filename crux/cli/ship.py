"""`crux export|keys|publish|rollback|models`: ONNX export, signing keys, the gated signed publish."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from crux.cli.root import app
from crux.cli.terminal import LineOption, ParamsOption, json_text, out
from crux.config import ConfigError, from_mapping
from crux.settings import (
    DEFAULT_PRIVATE_KEY,
    DEFAULT_PUBLIC_KEY,
    Context,
    check_model_fits_line,
    dataset_config,
    edge_config,
    gate_config,
    load_context,
    model_remote,
    params_for_line,
    public_keys,
    signing_key,
    trusted_keys,
)


def _dataset_dvc_file(ctx: Context, line: str | None) -> Path:
    """The .dvc file of the line's dataset version (data/LINE.dvc); a checkout from before per-line versioning has
    one data.dvc for every line."""
    cfg = dataset_config(ctx)
    per_line = ctx.root / f"{cfg.project_dir(line)}.dvc" if line is not None else None
    return per_line if per_line is not None and per_line.is_file() else ctx.root / f"{cfg.root}.dvc"


keys_app = typer.Typer(help="The Ed25519 keys that sign published models.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


models_app = typer.Typer(help="Published models of an inspection line.", no_args_is_help=True)
app.add_typer(models_app, name="models")


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
    line_values = params_for_line(ctx.params, line)
    cfg = from_mapping(ExportConfig, line_values.get("export"), "export")
    _check_tta(cfg, line_values.get("augment") or {})

    def read(path: Path | None) -> Any:
        return json.loads(path.read_text()) if path is not None and path.is_file() else None

    lineage = {
        "dataset_version": dataset_version(_dataset_dvc_file(ctx, line)),
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
    out.print(json_text({"parity": card.get("parity"), "quantized": card.get("quantized")}))


def _check_tta(cfg: Any, augment: Mapping[str, Any]) -> None:
    """export.tta may only average over transforms training already treats as label-preserving."""
    from crux.ship.export import TTA_GENERATORS

    trained = {t.get("name") for t in augment.get("transforms") or [] if isinstance(t, Mapping)}
    missing = [g for g in cfg.tta if TTA_GENERATORS[g] not in trained]
    if missing:
        names = ", ".join(TTA_GENERATORS[g] for g in missing)
        raise ConfigError(f"export.tta: {missing} need {names} in augment.transforms (label-preserving in training)")


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


@app.command("publish")
def publish_command(
    line: Annotated[str, typer.Argument(help="Inspection line (the project name).")],
    export_dir: Annotated[Path, typer.Argument(help="Output of `crux export` (model.onnx + card.json).")],
    remote: Annotated[str | None, typer.Option(help="fsspec URL; default edge.remote.")] = None,
    force: Annotated[bool, typer.Option(help="Publish although the gate refuses; needs --reason.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why the gate is overridden; recorded.")] = None,
    int8: Annotated[bool, typer.Option(help="Publish the INT8 model instead of float32.")] = False,
    prepared: Annotated[
        Path | None,
        typer.Option(help="Prepared data whose val images the model must run on; default build/LINE/prepared."),
    ] = None,
    key: Annotated[Path | None, typer.Option(help="Private key file.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The decision as JSON: every criterion, published version or refusal.")
    ] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Gate the candidate (absolute floors, then vs production), then publish it signed: version folder first,
    pointer last. Exit 1 when the gate refuses; the decision lists every criterion either way."""

    from crux.ship.candidate import CHECK_IMAGES
    from crux.ship.export import validation_images
    from crux.ship.publish import GateRefused, publish

    ctx = load_context(params)
    gate = gate_config(ctx)
    check_model_fits_line(ctx, line, export_dir)
    images = validation_images(prepared or ctx.root / "build" / line / "prepared", CHECK_IMAGES)
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
            check_images=images,
        )
    except GateRefused as refused:
        if as_json:
            print(json_text({"line": line, "published": False, "forced": False, "gate": refused.result.to_dict()}))
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
        print(json_text(doc))
        return
    _print_criteria(result.gate.to_dict())
    out.print(f"{line} v{result.version} published — {result.gate.report()}{' (FORCED)' if result.forced else ''}")


def _print_criteria(gate: Mapping[str, Any]) -> None:
    from crux.ship.gate import criteria_lines

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

    from crux.ship.listing import list_models

    ctx = load_context(params)
    history = list_models(model_remote(ctx, remote), line, public_keys(ctx))
    if as_json:
        out.print_json(json.dumps(history, default=str))
        return
    from crux.ship.gate import criteria_lines

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

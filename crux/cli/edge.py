"""`crux predict|edge`: inference on files, and the edge inspection runtime."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from crux.cli.root import app
from crux.cli.terminal import ParamsOption, console, escape, json_text, out
from crux.config import ConfigError
from crux.settings import (
    edge_config,
    load_context,
    model_remote,
    public_keys,
    station_token,
)

edge_app = typer.Typer(help="The edge inspection runtime.", no_args_is_help=True)
app.add_typer(edge_app, name="edge")


@app.command("predict")
def predict_command(
    model_or_remote: Annotated[str, typer.Argument(help="A model folder, or a published line URL.")],
    images: Annotated[list[str], typer.Argument(help="Image files.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line (the stable contract).")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Inspect images with the edge's own code path; `--json` prints the stable contract."""

    from crux.edge.predict import open_model
    from crux.inference import predict_paths

    # A local model folder needs no params; a published line is verified with the trusted keys from params.
    is_folder = (Path(model_or_remote) / "card.json").is_file()
    keys = [] if is_folder else public_keys(load_context(params))
    model = open_model(model_or_remote, public_keys=keys)
    for record in predict_paths(model, images):
        if as_json:
            print(json_text(record), flush=True)
        else:
            out.print(f"{record['image']}: {record.get('label', record.get('error'))} {record.get('score', '')}")


def _require_line(ctx: Any, line: str, remote: str, state_dir: Path) -> None:
    """`edge run` on a line it can never get a model for would wait forever: a line this params file does not declare,
    or one the remote has no release of while this box has none installed, is an error naming what is there."""
    import json

    from crux.config import unknown_name
    from crux.settings import declared_lines, s3_fetch_options
    from crux.ship.listing import published_lines

    declared = declared_lines(ctx.params)
    if declared and line not in declared:
        raise unknown_name("line", line, declared)
    try:
        installed = json.loads((state_dir / "installed.json").read_text()).get("pointer", {}).get("line")
    except (OSError, ValueError, AttributeError):
        installed = None
    if installed == line:
        return  # runs its installed model while the remote is empty or away
    lines = published_lines(remote, s3_fetch_options() if remote.startswith("s3://") else None)
    if lines is not None and line not in lines:
        there = ", ".join(lines) or "none"
        raise ConfigError(f"no model of line {line!r} published at {remote} (lines there: {there}); `crux publish` one")


@edge_app.command("run")
def edge_run(
    line: Annotated[str, typer.Argument(help="Inspection line whose published model to run.")],
    watch: Annotated[Path | None, typer.Option(help="Folder to watch for new images.")] = None,
    glob: Annotated[str | None, typer.Option(help="Glob of images to inspect once.")] = None,
    view: Annotated[bool, typer.Option(help="A live rich view on stderr.")] = False,
    poll: Annotated[bool, typer.Option(help="Poll the remote and hot-swap new models.")] = True,
    ingest_url: Annotated[
        str | None,
        typer.Option(help="Ingest service to upload to (else CRUX_INGEST_URL, else edge.ingest_url)."),
    ] = None,
    station: Annotated[
        str | None,
        typer.Option(
            help="This box's station name, as registered with `crux stations add` (else CRUX_STATION, "
            "else edge.station)."
        ),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Inspect frames (watched folder, glob, or paths on stdin) as JSON lines; hot-swap published models."""
    import threading

    from crux.edge.heartbeat import check_station, start_heartbeat
    from crux.edge.runtime import EdgeRuntime, LiveView, glob_source, stdin_source, watch_folder

    ctx = load_context(params)
    cfg = edge_config(ctx, ingest_url=ingest_url, station=station)
    token = None
    if cfg.ingest_url:
        token = station_token()
        # Before anything else: a station the ingest refuses would inspect all day and upload nothing.
        warning = check_station(cfg.ingest_url, token, cfg.station, line)
        if warning:
            console.print(f"[yellow]warning:[/] {escape(warning)}")
    _require_line(ctx, line, model_remote(ctx, None), ctx.path(Path(cfg.state_dir)))
    outbox = None
    if cfg.ingest_url and token:
        from crux.edge.outbox import Outbox

        outbox = Outbox(ctx.path(Path(cfg.outbox_dir)), cfg.ingest_url, token, quota_bytes=cfg.outbox_quota_mb << 20)
        outbox.start()
    runtime = EdgeRuntime(
        f"{model_remote(ctx, None)}/{line}",
        line,
        cfg,
        public_keys(ctx),
        ctx.path(Path(cfg.state_dir)),
        outbox=outbox,
        on_event=lambda name, detail: console.print(f"[yellow]{name}[/] {escape(str(detail))}"),
    )
    heartbeat = start_heartbeat(cfg, token, runtime, outbox)  # best effort: never blocks a frame
    stop = threading.Event()
    if watch:
        frames = watch_folder(watch, stop, cfg.watch_interval_s)
    elif glob:
        frames = glob_source(glob)
    else:
        frames = stdin_source(sys.stdin)
    live_view = LiveView(overlay_path=ctx.path(Path(cfg.state_dir)) / "last-ng-overlay.png" if view else None)

    def emit(record: dict[str, Any]) -> None:
        print(json_text(record), flush=True)
        live_view.update(record)

    try:
        if view:
            from rich.live import Live

            with Live(live_view.render(), console=console, refresh_per_second=4) as live:

                def emit_and_draw(record: dict[str, Any]) -> None:
                    emit(record)
                    live.update(live_view.render())

                runtime.run(frames, emit_and_draw, poll=poll)
        else:
            runtime.run(frames, emit, poll=poll)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if heartbeat:
            heartbeat.stop()
        if outbox:
            outbox.stop()

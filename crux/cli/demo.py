"""`crux demo`: the whole loop on embedded defaults."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from crux.cli.label import (
    _scan_and_import,
    start_labelstudio,
)
from crux.cli.root import app
from crux.cli.terminal import ParamsOption, console, escape, out
from crux.config import ConfigError
from crux.settings import (
    DEFAULT_PRIVATE_KEY,
    DEFAULT_PUBLIC_KEY,
    dataset_config,
    edge_config,
    labelstudio_config,
    load_context,
    model_remote,
    prefect_defaults,
    public_keys,
)

# The demo's lines: NEU (six defect types, no OK class) and Magnetic Tile as a whole-tile verdict (OK-dominant, like
# a real factory: its verdict shows NG recall and false rejects).
DEMO_LINES = ("neu-cls", "magnetic-tile-cls")


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
    """Stage and progress of the running cycle, read from the files the pipeline writes (dvc captures
    the commands' own output): a status line that changes every few seconds instead of one long spinner."""

    def __init__(self, root: Path, line: str) -> None:
        self.root, self.line = root, line
        self.started = time.time()

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
            try:
                doc = json.loads(live.read_text())
            except ValueError:
                doc = {}
            val = (doc.get("val") or {}).get("macro_f1")
            if "head_l2" in doc:  # head mode: one fit, no epochs
                return f"train: linear head fitted (val macro-F1 {val:.3f}); saving the model…"
            score = f", val macro-F1 {val:.3f}" if isinstance(val, int | float) else ""
            return f"train: epoch {int(doc.get('epoch', 0)) + 1}{score}"
        if self._fresh(f"build/{line}/prepared"):
            return f"train: ImageNet encoder features (cached per image) + the head… {elapsed:.0f} s"
        if self._fresh(f"data/{line}/manifest.jsonl"):
            return f"dvc exp run: prepare (hash-checking every image)… {elapsed:.0f} s"
        return f"snapshot: Label Studio export → DVC dataset version… {elapsed:.0f} s"


@app.command("demo")
def demo(
    neu: Annotated[Path | None, typer.Option(help="NEU-DET folder; default ../shared/datasets/neu-det.")] = None,
    magnetic_tile: Annotated[
        Path | None, typer.Option(help="Magnetic Tile folder; default ../shared/datasets/magnetic-tile.")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """The whole loop on embedded defaults, for two lines: Label Studio with NEU's images and Magnetic Tile's tiles
    and their classes (standing in for a team of annotators) → the Prefect cycle of each line (demo profile: the
    ImageNet-pretrained encoder with a head fitted on cached features) → the gate → a signed model in the local
    remote → the edge runtime on test-split images the model never trained on → a verdict per class, with NG
    recall and false rejects on the line that has OK parts. Exit 1 when the gate refuses a model."""
    import threading

    from crux.label.client import connect
    from crux.label.projects import sync_project

    started = time.perf_counter()
    ctx = load_context(params)
    cfg = labelstudio_config(ctx)
    for line in DEMO_LINES:  # the demo's projects must be declared (params.yaml labelstudio.projects)
        cfg.project(line)
    shared = ctx.root.parent / "shared" / "datasets"
    neu_source = neu or shared / "neu-det"
    mt_source = magnetic_tile or shared / "magnetic-tile"
    if not (neu_source / "images").is_dir() or not (neu_source / "classes.txt").is_file():
        raise ConfigError(
            f"{neu_source}: NEU-DET not found; pass --neu PATH (the images/, labels/, classes.txt layout)"
        )
    if not (mt_source / "MT_Free").is_dir():
        raise ConfigError(f"{mt_source}: Magnetic Tile not found; pass --magnetic-tile PATH (MT_Free/, MT_Crack/, …)")
    console.rule("1/4 Label Studio")
    settings, credentials = start_labelstudio(ctx)
    client = connect(settings.url, credentials.token)
    project_ids = {}
    for name, project_spec in cfg.projects.items():
        result = sync_project(client, name, project_spec)
        project_ids[name] = result.project_id
        console.print(f"Project {escape(name)}: {result.action} (id {result.project_id})")
    sources = {
        "neu-cls": _neu_class_folders(neu_source.resolve(), ctx.root / ".crux" / "demo-sources" / "neu-cls"),
        # Magnetic Tile's folders are its classes already (params.yaml aliases: MT_Free → OK, …).
        "magnetic-tile-cls": mt_source.resolve(),
    }
    for line in DEMO_LINES:
        report = _scan_and_import(
            client, line, project_ids[line], cfg.project(line), str(sources[line]), "folders", settings.files_root
        )
        console.print(
            f"{escape(line)}: {report.created} new task(s) labelled with their class, {report.already_present} there."
        )

    console.rule("2/4 The cycles (Prefect flows, demo profile: ImageNet encoder, head fitted on cached features)")
    private = ctx.path(DEFAULT_PRIVATE_KEY)
    if not private.exists() and not os.environ.get("CRUX_SIGNING_KEY"):
        from crux.ship.signing import init_keys

        init_keys(private, ctx.path(DEFAULT_PUBLIC_KEY))
        console.print(f"Signing key created: {escape(str(private))} (0600)")
    prefect_defaults(ctx)
    refused = []
    for line in DEMO_LINES:
        console.print(f"[bold]{escape(line)}[/]")
        progress = _DemoProgress(ctx.root, line)
        done = threading.Event()
        cycle_started = time.perf_counter()
        with console.status(escape(progress.text())) as status:

            def tick(
                status: Any = status, progress: Any = progress, since: float = cycle_started, done: Any = done
            ) -> None:
                while not done.wait(2.0):
                    status.update(escape(f"{progress.text()}  [{time.perf_counter() - since:.0f} s]"))

            ticker = threading.Thread(target=tick, daemon=True)
            ticker.start()
            try:
                from flows.cycle import cycle

                outcome = cycle(line, params_path=str(ctx.root / "params.yaml"), profile="demo")
            finally:
                done.set()
                ticker.join()
        if not _cycle_report(ctx, line, outcome, time.perf_counter() - cycle_started):
            refused.append(line)

    for line in DEMO_LINES:
        _edge_and_verdict(ctx, line, cfg.project(line))
    _where_to_look(ctx, settings, credentials, project_ids, started)
    if refused:
        console.print(f"[bold red]The gate refused {escape(', '.join(refused))}: see its criteria above.[/]")
        raise typer.Exit(1)


def _cycle_report(ctx: Any, line: str, result: dict[str, Any], wall_s: float) -> bool:
    """Print what one line's cycle did; True when its model is in production."""
    import json

    dataset, published = result["dataset"], result["published"]
    message = dataset["message"].splitlines()[0] if dataset else "no change since the last version"
    console.print(f"Dataset: {escape(message)}")
    train_json = ctx.root / "models" / line / "candidate" / "train.json"
    if dataset and train_json.is_file():
        summary = json.loads(train_json.read_text())
        if summary.get("head"):
            head = summary["head"]
            how = (
                f"head fitted on {summary['backbone']} ImageNet features in {summary['wall_s']:.0f} s "
                f"({head['features_computed']} images encoded, {head['features_cached']} from the cache)"
            )
        else:
            how = f"{summary['epochs']} epoch(s), {summary['global_step']} steps in {summary['wall_s']:.0f} s"
        console.print(f"Trained: {how}; best val {summary['monitor']} {summary['best_val']:.4f}")
    if result.get("gate") is not None:
        from crux.ship.gate import criteria_lines

        verdict = "published v" + str(published["version"]) if published else "NOT published"
        console.print(f"Gate: {verdict}  (cycle {wall_s:.0f} s)")
        for text in criteria_lines(result["gate"]):
            out.print(f"  {text}", markup=False, highlight=False)
    from crux.ship.releases import read_pointer

    return read_pointer(f"{model_remote(ctx, None)}/{line}", public_keys(ctx)) is not None


def _edge_and_verdict(ctx: Any, line: str, spec: Any) -> None:
    """The edge runtime over the line's test split (frames the model never trained on), then the verdict."""
    import json
    import shutil

    from crux.data.manifest import read_manifest
    from crux.edge.runtime import EdgeRuntime
    from crux.ship.gate import criteria_lines
    from crux.ship.listing import list_models
    from crux.ship.releases import read_pointer
    from crux.verdict import edge_verdict, verdict_lines

    console.rule(f"3/4 The edge runtime on unseen {line} images")
    remote = f"{model_remote(ctx, None)}/{line}"
    keys = public_keys(ctx)
    if read_pointer(remote, keys) is None:
        console.print(
            f"[bold red]No model in production for {escape(line)}: the gate refused it (above). Nothing to run.[/]"
        )
        return
    data_dir = ctx.path(dataset_config(ctx).project_dir(line))
    frames_dir = ctx.root / ".crux" / "demo-frames" / line
    shutil.rmtree(frames_dir, ignore_errors=True)
    frames_dir.mkdir(parents=True)
    truth: dict[str, list[str]] = {}
    for item in (i for i in read_manifest(data_dir / "manifest.jsonl") if i.split == "test"):
        # Magnetic Tile repeats file names across folders: the content hash keeps frames apart.
        name = f"{item.sha256[:12]}-{item.original_name}"
        shutil.copy(data_dir / item.image, frames_dir / name)
        truth[name] = [label.cls for label in item.labels] or ([spec.ok_class] if spec.ok_class else [])
    edge = edge_config(ctx)
    state_dir = ctx.path(Path(edge.state_dir)) / line
    runtime = EdgeRuntime(remote, line, edge, keys, state_dir, on_event=lambda name, detail: None)
    records: list[dict[str, Any]] = []
    log = ctx.root / ".crux" / f"demo-edge-{line}.jsonl"
    runtime.run(sorted(frames_dir.iterdir()), records.append, poll=False)
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    latencies = sorted(r["latency_ms"] for r in records if "latency_ms" in r)
    version = records[0]["model_version"]
    console.print(
        f"{len(records)} test-split frames inspected by model v{version}, "
        f"median latency {latencies[len(latencies) // 2]:.1f} ms/frame (1 thread) → {escape(str(log))}"
    )

    console.rule(f"Verdict: {line} model v{version} on {len(records)} frames it never trained on")
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
    inspection = metrics.get("inspection") or {}
    if inspection.get("n_ok"):
        shown["NG recall"] = inspection.get("ng_recall")
        shown["false rejects"] = inspection.get("false_reject_rate")
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
    out.print(f"Curves (JSON for dvc plots): {plots}/  → .venv/bin/dvc plots show")


def _where_to_look(ctx: Any, settings: Any, credentials: Any, project_ids: dict[str, int], started: float) -> None:
    console.rule("4/4 Where to look")
    for line in DEMO_LINES:
        out.print(f"Label Studio:   {settings.public}/projects/{project_ids[line]}/data  ({line})")
    out.print(f"Login:          {credentials.username} — password in {settings.credentials_path}")
    out.print(f"Prefect UI:     PREFECT_HOME={os.environ['PREFECT_HOME']} .venv/bin/prefect server start")
    for line in DEMO_LINES:
        out.print(f"Model card:     {ctx.root / 'models' / line / 'export' / 'card.json'}")
    out.print(f"Model history:  .venv/bin/crux models list {DEMO_LINES[0]}")
    out.print("Dataset diff:   .venv/bin/crux data diff  (metrics: .venv/bin/dvc metrics show)")
    from crux.cli.console import DEFAULT_PORT

    # The plant's view of everything above (lines, gate criteria, dataset diffs, stations, captures): start it, open it.
    out.print(f"Console:        http://127.0.0.1:{DEFAULT_PORT}/  (start it: .venv/bin/crux console serve)")
    for line in DEMO_LINES:
        out.print(f"                http://127.0.0.1:{DEFAULT_PORT}/lines/{line}")
    out.print(f"Done in {time.perf_counter() - started:.0f} s. Stop Label Studio with: make down")

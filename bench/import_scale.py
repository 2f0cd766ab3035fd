"""Benchmark: `crux import` of 10,000 images with boxes (YOLO layout) into a fresh Label Studio project.

Writes `--images` synthetic 200x200 JPEGs (NEU-DET's size) with 2 boxes each in the YOLO layout (images/, labels/,
classes.txt), starts a throwaway Label Studio on a free loopback port, and times `crux import`'s two phases (scan:
read + hash + decode + validate; write: the bulk task import with the annotations embedded). Baseline in the same
run, first (so a server still warming up slows the baseline, not the figure): the same `import_items` through the
former request path (the SDK's `projects.import_tasks`, which re-encodes every task in Python before sending it),
into a second fresh project; `post_s` is the time inside the bulk requests alone, the rest of the write phase is
the storage, member and dedup calls. With `--profile`, the top entries of a cProfile of the measured import (this
process only: Label Studio's own time shows up as waiting on the socket; the baseline is not profiled, so take
figures from a run without it). Prints the figures and writes bench/results/import_scale.json. Target (issue 24):
scan + write <= 15 s.

    CRUX_LS_VENV=/work/main/.venv-ls .venv/bin/python bench/import_scale.py [--images 10000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


def generate(root: Path, n: int, size: int) -> None:
    """The YOLO layout: images/N.jpg, labels/N.txt (class cx cy w h, normalised), classes.txt."""
    from crux.data.synthetic_exports import image_bytes

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i in range(n):
        image = root / "images" / f"{i:06d}.jpg"
        if not image.exists():
            image.write_bytes(image_bytes(i, size, size))
        boxes = f"{i % 6} 0.30 0.30 0.20 0.25\n{(i * 7) % 6} 0.70 0.60 0.30 0.20\n"
        (root / "labels" / f"{i:06d}.txt").write_text(boxes)


class SdkOnly:
    """The client without the SDK's HTTP layer in sight: `import_items` then posts through `projects.import_tasks`
    (its fallback path, the former code)."""

    def __init__(self, client: Any) -> None:
        self._inner = client

    def __getattr__(self, name: str) -> Any:
        if name == "_client_wrapper":
            raise AttributeError(name)
        return getattr(self._inner, name)


POSTED: list[float] = []


def timed_posts() -> None:
    """Time spent inside the bulk import requests (both paths go through importer._post_tasks)."""
    from crux.label import importer

    inner = importer._post_tasks

    def post(*args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args)
        finally:
            POSTED.append(time.perf_counter() - t0)

    importer._post_tasks = post


def top_entries(profile: cProfile.Profile, n: int = 15) -> list[str]:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(n)
    return [line for line in out.getvalue().splitlines() if line.strip()][-n:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--workdir", type=Path, help="keep the generated source here (reused by the next run)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "import_scale.json")
    args = parser.parse_args()

    import yaml

    from crux.collect.ingest_server import free_port
    from crux.config import ProjectSpec, from_mapping
    from crux.label import importer, server
    from crux.label.client import connect
    from crux.label.projects import sync_project

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    spec = from_mapping(ProjectSpec, params["labelstudio"]["projects"]["neu-det"], "neu-det")
    venv = Path(os.environ.get("CRUX_LS_VENV") or REPO / ".venv-ls")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="crux-bench-import-"))
    source = work / "source"
    t0 = time.perf_counter()
    generate(source, args.images, args.size)
    generate_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="crux-bench-ls-") as state:
        settings = server.ServerSettings(
            venv=venv, state_dir=Path(state), host="127.0.0.1", port=free_port(), files_root=work
        )
        credentials, _ = server.load_or_create_credentials(settings.credentials_path, {})
        t0 = time.perf_counter()
        server.start(settings, credentials, os.environ, timeout=300)
        server_start = time.perf_counter() - t0
        try:
            client = connect(settings.url, credentials.token)
            timed_posts()
            baseline_s = baseline_post = None
            if args.baseline:
                scan0 = importer.scan_source(str(source), spec, "yolo")
                other = sync_project(client, "bench-import-baseline", spec).project_id
                POSTED.clear()
                t0 = time.perf_counter()
                importer.import_items(SdkOnly(client), other, spec, scan0, settings.files_root)
                baseline_s, baseline_post = time.perf_counter() - t0, sum(POSTED)
            project_id = sync_project(client, "bench-import", spec).project_id
            POSTED.clear()
            profile = cProfile.Profile() if args.profile else None
            if profile:
                profile.enable()
            t0 = time.perf_counter()
            scan = importer.scan_source(str(source), spec, "yolo")
            scan_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = importer.import_items(client, project_id, spec, scan, settings.files_root)
            write_s = time.perf_counter() - t0
            post_s = sum(POSTED)
            if profile:
                profile.disable()
        finally:
            server.stop(settings)

    total = scan_s + write_s
    figures = {
        "images": report.created,
        "boxes": sum(len(item.labels or ()) for item in scan.items),
        "generate_s": round(generate_s, 1),
        "scan_s": round(scan_s, 2),
        "write_s": round(write_s, 2),
        "total_s": round(total, 2),
        "images_per_s": round(report.created / total, 1),
        "batch_size": importer.BATCH_SIZE,
        "post_s": round(post_s, 2),
        "baseline": "import_items through SDK projects.import_tasks (run first)" if args.baseline else None,
        "baseline_write_s": None if baseline_s is None else round(baseline_s, 2),
        "baseline_post_s": None if baseline_post is None else round(baseline_post, 2),
        "write_speedup_vs_baseline": None if baseline_s is None else round(baseline_s / write_s, 2),
        "post_speedup_vs_baseline": None if baseline_post is None else round(baseline_post / post_s, 2),
        "server_first_start_s": round(server_start, 1),
        "target_total_s": 15,
        "within_target": total <= 15,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "profiled": bool(profile),
        "profile_top_cumulative": top_entries(profile, 30) if profile else None,
    }
    for key, value in figures.items():
        if not key.endswith("profile_top_cumulative"):
            print(f"{key:>28}: {value}")
    if profile:
        print("\n".join(figures["profile_top_cumulative"] or []))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

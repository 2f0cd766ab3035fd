"""Benchmark: `crux import` of 10,000 images with boxes (YOLO layout) into a fresh Label Studio project.

Writes `--images` synthetic 200x200 JPEGs (NEU-DET's size) with 2 boxes each in the YOLO layout (images/, labels/,
classes.txt), starts a throwaway Label Studio on a free loopback port, and times `crux import`'s two phases (scan:
read + hash + decode + validate; write: the bulk task import with the annotations embedded). Baseline in the same
run: the former write path (the SDK's `projects.import_tasks`, which re-encodes every task in Python before sending
it), 500 tasks a request, into a second fresh project. With
`--profile`, the top entries of a cProfile of the measured import (this process only: Label Studio's own time shows
up as waiting on the socket). Prints the figures and writes bench/results/import_scale.json. Target (issue 24):
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


def sdk_write(client: Any, project_id: int, spec: Any, scan: Any, files_root: Path) -> None:
    """The former write phase: the same tasks through the SDK's `import_tasks` (its Python re-encoding included)."""
    from crux.data.provenance import IMPORT_IDENTITY
    from crux.label import importer

    url = importer.local_files_url
    tasks = [importer.build_task(i, spec, url(i.url, files_root), None, IMPORT_IDENTITY) for i in scan.items]
    for start in range(0, len(tasks), 500):
        client.projects.import_tasks(id=project_id, request=tasks[start : start + 500], return_task_ids=True)


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
            project_id = sync_project(client, "bench-import", spec).project_id
            profile = cProfile.Profile() if args.profile else None
            if profile:
                profile.enable()
            t0 = time.perf_counter()
            scan = importer.scan_source(str(source), spec, "yolo")
            scan_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = importer.import_items(client, project_id, spec, scan, settings.files_root)
            write_s = time.perf_counter() - t0
            if profile:
                profile.disable()
            baseline_s = None
            baseline_profile = cProfile.Profile() if args.profile else None
            if args.baseline:
                other = sync_project(client, "bench-import-baseline", spec).project_id
                if baseline_profile:  # profiled like the measured write, so the two times compare
                    baseline_profile.enable()
                t0 = time.perf_counter()
                sdk_write(client, other, spec, scan, settings.files_root)
                baseline_s = time.perf_counter() - t0
                if baseline_profile:
                    baseline_profile.disable()
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
        "baseline": "SDK projects.import_tasks, 500 tasks a request" if args.baseline else None,
        "baseline_write_s": None if baseline_s is None else round(baseline_s, 2),
        "write_speedup_vs_baseline": None if baseline_s is None else round(baseline_s / write_s, 2),
        "server_first_start_s": round(server_start, 1),
        "target_total_s": 15,
        "within_target": total <= 15,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
        "profiled": bool(profile),
        "profile_top_cumulative": top_entries(profile, 30) if profile else None,
        "baseline_profile_top_cumulative": top_entries(baseline_profile) if baseline_profile and baseline_s else None,
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

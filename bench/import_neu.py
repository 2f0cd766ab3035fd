"""Benchmark: import all of NEU-DET (1,440 images, 3,346 boxes) with its labels into a fresh project.

Starts a throwaway Label Studio on a free loopback port, times `crux import`'s two phases (scan:
read + decode + validate; write: bulk task import with embedded annotations), and, as the baseline
in the same run, the one-request-per-task-and-annotation path on a sample, extrapolated.
Prints the figures and writes bench/results/import_neu.json. Target: whole import ≤ 30 s.

    .venv/bin/python bench/import_neu.py [--neu ../shared/datasets/neu-det] [--baseline-sample 50]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from crux.collect.ingest_server import free_port
from crux.config import ProjectSpec, from_mapping
from crux.kinds import get_kind
from crux.label import importer, server
from crux.label.client import connect
from crux.label.projects import sync_project

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neu", type=Path, default=REPO.parent / "shared" / "datasets" / "neu-det")
    parser.add_argument("--baseline-sample", type=int, default=50)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "import_neu.json")
    args = parser.parse_args()

    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    spec = from_mapping(ProjectSpec, params["labelstudio"]["projects"]["neu-det"], "neu-det")
    neu = args.neu.resolve()
    with tempfile.TemporaryDirectory(prefix="crux-bench-") as state:
        settings = server.ServerSettings(
            venv=REPO / ".venv-ls", state_dir=Path(state), host="127.0.0.1", port=free_port(), files_root=neu.parent
        )
        credentials, _ = server.load_or_create_credentials(settings.credentials_path, {})
        t0 = time.perf_counter()
        server.start(settings, credentials, os.environ, timeout=300)
        server_start = time.perf_counter() - t0
        try:
            client = connect(settings.url, credentials.token)
            project_id = sync_project(client, "bench-neu", spec).project_id

            t0 = time.perf_counter()
            scan = importer.scan_source(str(neu), spec, "yolo")
            scan_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = importer.import_items(client, project_id, spec, scan, settings.files_root)
            write_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = importer.import_items(
                client, project_id, spec, importer.scan_source(str(neu), spec, "yolo"), settings.files_root
            )
            reimport_s = time.perf_counter() - t0

            # Baseline: what a naive client does, one task request and one annotation request per image.
            baseline_project = sync_project(client, "bench-neu-naive", spec).project_id
            kind = get_kind(spec.kind)
            sample = scan.items[: args.baseline_sample]
            t0 = time.perf_counter()
            for item in sample:
                task = client.tasks.create(
                    project=baseline_project, data={"image": importer.local_files_url(item.url, settings.files_root)}
                )
                client.annotations.create(
                    id=task.id, result=kind.to_results(list(item.labels), item.width, item.height)
                )
            per_item = (time.perf_counter() - t0) / len(sample)
        finally:
            server.stop(settings)

    boxes = sum(len(item.labels or ()) for item in scan.items)
    total = scan_s + write_s
    naive_total = per_item * len(scan.items)
    figures = {
        "images": report.created,
        "boxes": boxes,
        "scan_s": round(scan_s, 2),
        "write_s": round(write_s, 2),
        "total_s": round(total, 2),
        "images_per_s": round(report.created / total, 1),
        "reimport_s": round(reimport_s, 2),
        "reimport_created": again.created,
        "baseline_per_image_s": round(per_item, 4),
        "baseline_extrapolated_total_s": round(naive_total, 1),
        "speedup_vs_baseline": round(naive_total / total, 1),
        "server_first_start_s": round(server_start, 1),
        "target_total_s": 30,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    for key, value in figures.items():
        print(f"{key:>30}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

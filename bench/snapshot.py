"""Benchmark: full and incremental `build_dataset` on synthetic Label Studio exports.

    .venv/bin/python bench/snapshot.py [--tasks 10000] [--new 100] [--size 128] [--workdir DIR]

Generates `--tasks` synthetic JPEGs under a files root and an export of the exact Label Studio 1.23
snapshot shape (2 boxes per task), builds a dataset (full snapshot), then appends `--new` tasks and
builds again with the previous version (incremental). Each build runs in a fresh child process so
its wall time and peak RSS are its own. Targets (issue 4): full ≤ 60 s, incremental ≤ 10 s, peak RSS
≤ 500 MB. Label Studio's own export time is not included (measure it with the integration server).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


def generate(files: Path, export: Path, n_tasks: int, size: int, start: int = 1) -> None:
    from crux.data.synthetic_exports import Ann, box, image_bytes, local_url, ls_task, write_export, write_image

    def tasks():
        for n in range(start, start + n_tasks):
            rel = f"bench/{n // 1000:03d}/{n}.jpg"
            path = files / rel
            if path.exists():
                sha = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
            else:
                sha = write_image(files, rel, image_bytes(n, size, size))
            c1, c2 = CLASSES[n % 6], CLASSES[(n * 7) % 6]
            labels = [box(c1, 2, 3, size / 2, size / 2 + 1), box(c2, size / 3, size / 4, size - 2, size - 5)]
            yield ls_task(n, local_url(rel), sha256=sha, original_name=f"{n}.jpg", width=size, height=size,
                          annotations=[Ann(labels)])  # fmt: skip

    write_export(export, tasks())


def child(args: argparse.Namespace) -> None:
    """Run one build and print a JSON line (time measured inside, RSS by the parent)."""
    from crux.data.snapshot import build_dataset
    from crux.data.store import make_fetcher

    t0 = time.perf_counter()
    summary = build_dataset(
        Path(args.export), Path(args.out), "detect", CLASSES, None, make_fetcher(files_root=Path(args.files)),
        (0.8, 0.1, 0.1), previous_dir=Path(args.out), project="bench", workers=args.workers,
    )  # fmt: skip
    print(json.dumps({"seconds": time.perf_counter() - t0, "items": summary.items, "fetched": summary.fetched,
                      "reused": summary.reused}))  # fmt: skip


def run_child(files: Path, export: Path, out: Path, workers: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", "--files", str(files), "--export", str(export), "--out", str(out),
         "--workers", str(workers)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far; builds run largest first, so report it.
    result.update(wall_with_startup=wall, peak_rss_mb=max(peak_kb, before) / 1024)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--files")
    parser.add_argument("--export")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="crux-bench-snapshot-"))
    files, out = work / "files", work / "repo" / "data"
    t0 = time.perf_counter()
    generate(files, work / "export1.json", args.tasks, args.size)
    gen_s = time.perf_counter() - t0
    full = run_child(files, work / "export1.json", out, args.workers)
    generate(files, work / "export2.json", args.tasks + args.new, args.size)
    incremental = run_child(files, work / "export2.json", out, args.workers)
    report = {
        "tasks": args.tasks,
        "new": args.new,
        "image_size": args.size,
        "export_mb": round((work / "export2.json").stat().st_size / 1e6, 1),
        "generate_s": round(gen_s, 1),
        "full": full,
        "incremental": incremental,
        "workdir": str(work),
    }
    print(json.dumps(report, indent=2))
    ok = full["seconds"] <= 60 and incremental["seconds"] <= 10 and full["peak_rss_mb"] <= 500
    print(f"full {full['seconds']:.1f} s, incremental {incremental['seconds']:.1f} s, "
          f"peak RSS {full['peak_rss_mb']:.0f} MB -> {'within' if ok else 'OUTSIDE'} targets")  # fmt: skip


if __name__ == "__main__":
    main()

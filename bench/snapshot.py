"""Benchmark: snapshot and dataset version of a large project, then an increment, on synthetic Label Studio exports.

    .venv/bin/python bench/snapshot.py [--tasks 100000] [--new 1000] [--size 64] [--version] [--profile]
        [--cache-type hardlink] [--jobs 16] [--baseline-tasks 5000] [--workdir DIR]

Generates `--tasks` synthetic JPEGs under a files root and an export of the exact Label Studio 1.23 snapshot shape
(2 boxes per task), builds a dataset (full snapshot), then appends `--new` tasks and builds again with the previous
version (incremental). With `--version`, each build is followed by the dataset version `crux snapshot --commit`
makes (crux.data.versioning.commit_version: `dvc add`, `dvc push` to an S3 remote on a loopback moto_server, a git
commit). Every step runs in a fresh child process, so its wall time and peak RSS (wait4) are its own; `--profile`
adds each step's top cProfile entries (the time split between `dvc add` and `dvc push` comes from it).

DVC's own levers, no code of ours: `--cache-type` (DVC's cache.type: hardlink/symlink links the workspace to the
cache instead of copying every image; the default reflink,copy copies on filesystems without reflinks),
`--jobs` (the remote's `jobs`: parallel uploads) and `core.checksum_jobs` (parallel hashing). `--baseline-tasks N`
versions an N-task dataset with DVC's defaults and with the chosen levers in the same run: the ratio of the two.

Targets (issue 24, at 100,000 tasks): snapshot <= 60 s, dataset version <= 5 min, an increment of 1,000 new tasks
(snapshot + version) <= 30 s; peak RSS reported. Label Studio's own export time is not included.
Writes bench/results/snapshot.json.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
BUCKET = "bench-dvc"


def generate(files: Path, export: Path, n_tasks: int, size: int, start: int = 1) -> None:
    from crux.data.synthetic_exports import Ann, box, image_bytes, local_url, ls_task, write_export, write_image

    def tasks():
        for n in range(start, start + n_tasks):
            rel = f"bench/{n // 1000:03d}/{n}.jpg"
            path = files / rel
            if path.exists():
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                sha = write_image(files, rel, image_bytes(n, size, size))
            c1, c2 = CLASSES[n % 6], CLASSES[(n * 7) % 6]
            labels = [box(c1, 2, 3, size / 2, size / 2 + 1), box(c2, size / 3, size / 4, size - 2, size - 5)]
            yield ls_task(n, local_url(rel), sha256=sha, original_name=f"{n}.jpg", width=size, height=size,
                          annotations=[Ann(labels)])  # fmt: skip

    write_export(export, tasks())


# --------------------------------------------------------------------------------------------------
# Child steps (each in its own process)


def _top(profile: cProfile.Profile, n: int = 12) -> list[str]:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(n)
    return [line.rstrip() for line in out.getvalue().splitlines() if line.strip()][-n:]


def _cumulative(profile: cProfile.Profile, file_suffix: str, function: str) -> float | None:
    """Cumulative seconds of one function in a profile (e.g. dvc/repo/push.py push)."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    hits = [v[3] for (file, _line, name), v in stats.items() if file.endswith(file_suffix) and name == function]
    return round(max(hits), 2) if hits else None


def child_build(args: argparse.Namespace) -> dict[str, Any]:
    from crux.data.snapshot import build_dataset
    from crux.data.store import make_fetcher

    summary = build_dataset(
        Path(args.export), Path(args.out), "detect", CLASSES, None, make_fetcher(files_root=Path(args.files)),
        (0.8, 0.1, 0.1), previous_dir=Path(args.out), project="bench", workers=args.workers,
    )  # fmt: skip
    return {"items": summary.items, "fetched": summary.fetched, "reused": summary.reused}


def child_version(args: argparse.Namespace) -> dict[str, Any]:
    from crux.data.versioning import commit_version

    repo = Path(args.repo)
    result = commit_version(repo, project="bench", data_rel=str(Path(args.out).relative_to(repo)), remote="storage")
    return {"commit": None if result is None else result.commit[:10], "message": None if result is None else
            result.message.splitlines()[0]}  # fmt: skip


def child(args: argparse.Namespace) -> None:
    """Run one step and print a JSON line (time measured inside, RSS by the parent)."""
    step = {"build": child_build, "version": child_version}[args.child]
    profile = cProfile.Profile() if args.profile else None
    t0 = time.perf_counter()
    if profile:
        profile.enable()
    result = step(args)
    if profile:
        profile.disable()
    result["seconds"] = round(time.perf_counter() - t0, 2)
    if profile:
        result["profile_top_cumulative"] = _top(profile)
        if args.child == "version":
            result["dvc_add_s"] = _cumulative(profile, "dvc/repo/add.py", "add")
            result["dvc_push_s"] = _cumulative(profile, "dvc/repo/push.py", "push")
    print(json.dumps(result))


# --------------------------------------------------------------------------------------------------
# Parent


def _spawn(command: list[str], env: dict[str, str] | None = None) -> tuple[str, str, int, float, float]:
    """Run a child; (stdout, stderr, returncode, peak RSS in MB, CPU seconds) of that child alone (wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        cpu = usage.ru_utime + usage.ru_stime
        return out.read().decode(), err.read().decode(), proc.returncode, usage.ru_maxrss / 1024, cpu


# The moto_server process, whose CPU time a version step also costs (the S3 side of the push).
MOTO: dict[str, int] = {}


def _cpu_of(pid: int | None) -> float:
    """utime + stime of a running process from /proc (Linux), in seconds; 0 when unknown."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step(name: str, kind: str, work: Path, export: Path, out: Path, args: argparse.Namespace,
         repo: Path | None = None, env: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    command = [sys.executable, __file__, "--child", kind, "--files", str(work / "files"), "--export", str(export),
               "--out", str(out), "--workers", str(args.workers)]  # fmt: skip
    command += ["--repo", str(repo)] if repo else []
    command += ["--profile"] if args.profile else []
    t0, moto0 = time.perf_counter(), _cpu_of(MOTO.get("pid"))
    stdout, stderr, code, rss, cpu = _spawn(command, env)
    wall, moto_cpu = time.perf_counter() - t0, _cpu_of(MOTO.get("pid")) - moto0
    if code != 0:
        raise SystemExit(f"{name} failed:\n{stderr[-4000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    # CPU seconds: on a machine shared with other jobs the wall time mostly measures the queue for a core; CPU time
    # (this step's process, plus moto_server's for a push) is what the step costs.
    result.update(wall_with_startup_s=round(wall, 2), peak_rss_mb=round(rss, 1), cpu_s=round(cpu, 1),
                  moto_cpu_s=round(moto_cpu, 1))  # fmt: skip
    print(f"  {name}: {result['seconds']} s (process {result['wall_with_startup_s']} s, CPU {cpu:.0f} s + moto "
          f"{moto_cpu:.0f} s), peak RSS {rss:.0f} MB", flush=True)  # fmt: skip
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    moto = Path(os.environ.get("CRUX_MOTO_SERVER") or Path(sys.executable).with_name("moto_server"))
    port = free_port()
    log = (work / "moto.log").open("wb")
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    MOTO["pid"] = process.pid
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return process, f"http://127.0.0.1:{port}"


def make_repo(repo: Path, endpoint: str, prefix: str, cache_type: str | None, jobs: int | None) -> None:
    """A git + DVC project whose default remote is s3://BUCKET/PREFIX on moto; DVC levers in .dvc/config."""
    from crux.data.versioning import init_repo, set_remote

    repo.mkdir(parents=True, exist_ok=True)
    init_repo(repo)
    options = {"endpointurl": endpoint}
    if jobs:
        options["jobs"] = str(jobs)
    set_remote(repo, f"s3://{BUCKET}/{prefix}", options=options)
    if cache_type:
        from dvc.repo import Repo

        with Repo(str(repo)) as r, r.config.edit() as conf:
            conf["cache"]["type"] = cache_type
            if jobs:
                conf["core"]["checksum_jobs"] = jobs


def version_pass(label: str, work: Path, tasks: int, new: int, args: argparse.Namespace, env: dict[str, str],
                 endpoint: str | None, cache_type: str | None, jobs: int | None) -> dict[str, Any]:  # fmt: skip
    """Full snapshot (+ version), then an increment of `new` tasks (+ version), in repo work/LABEL."""
    repo = work / label
    out = repo / "data" / "bench"
    shutil.rmtree(repo, ignore_errors=True)
    if endpoint:
        make_repo(repo, endpoint, label, cache_type, jobs)
    print(f"{label}: {tasks} tasks + {new}, cache.type={cache_type or 'default'}, jobs={jobs or 'default'}")
    first, second = work / f"export-{tasks}.json", work / f"export-{tasks}+{new}.json"
    report: dict[str, Any] = {"tasks": tasks, "new": new, "cache_type": cache_type, "jobs": jobs}
    report["snapshot"] = step("snapshot", "build", work, first, out, args, repo, env)
    if endpoint:
        report["version"] = step("version", "version", work, first, out, args, repo, env)
    report["increment_snapshot"] = step("increment snapshot", "build", work, second, out, args, repo, env)
    if endpoint:
        report["increment_version"] = step("increment version", "version", work, second, out, args, repo, env)
    report["increment_total_s"] = round(
        report["increment_snapshot"]["seconds"] + (report["increment_version"]["seconds"] if endpoint else 0), 2
    )
    report["peak_rss_mb"] = max(v["peak_rss_mb"] for v in report.values() if isinstance(v, dict))
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=1_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--version", action="store_true", help="also dvc add + push to S3 (moto) + commit")
    parser.add_argument("--cache-type", default="hardlink", help="DVC cache.type; 'default' keeps DVC's")
    parser.add_argument("--jobs", type=int, default=16, help="remote jobs and core.checksum_jobs; 0 keeps DVC's")
    parser.add_argument("--baseline-tasks", type=int, default=0, help="also version N tasks with DVC's defaults")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out-json", type=Path, default=REPO / "bench" / "results" / "snapshot.json")
    parser.add_argument("--child")
    parser.add_argument("--files")
    parser.add_argument("--export")
    parser.add_argument("--out")
    parser.add_argument("--repo")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="crux-bench-snapshot-"))
    work.mkdir(parents=True, exist_ok=True)
    files = work / "files"
    sizes = sorted({args.tasks, *([args.baseline_tasks] if args.baseline_tasks else [])})
    t0 = time.perf_counter()
    for n in sizes:  # exports of N and N + new tasks (images shared between them)
        for total in (n, n + args.new):
            export = work / (f"export-{n}.json" if total == n else f"export-{n}+{args.new}.json")
            if not export.exists():
                generate(files, export, total, args.size)
    gen_s = time.perf_counter() - t0
    print(f"generated {sizes[-1] + args.new} images and exports in {gen_s:.0f} s under {work}", flush=True)

    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    moto, endpoint = (None, None)
    if args.version:
        import s3fs

        moto, endpoint = start_moto(work)
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
        s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True).mkdir(BUCKET)
    cache_type = None if args.cache_type == "default" else args.cache_type
    jobs = args.jobs or None
    report: dict[str, Any] = {
        "image_size": args.size,
        "generate_s": round(gen_s, 1),
        "workdir": str(work),
        "cpus": os.cpu_count(),
        "note": "2 cores shared with other jobs while measured",
    }
    try:
        if args.baseline_tasks and args.version:
            n = args.baseline_tasks
            base = version_pass("baseline-defaults", work, n, args.new, args, env, endpoint, None, None)
            tuned = version_pass("baseline-levers", work, n, args.new, args, env, endpoint, cache_type, jobs)
            report["baseline"] = {
                "defaults": base,
                "levers": tuned,
                "version_speedup": round(base["version"]["seconds"] / tuned["version"]["seconds"], 2),
                "increment_speedup": round(base["increment_total_s"] / tuned["increment_total_s"], 2),
            }
        report["main"] = version_pass("main", work, args.tasks, args.new, args, env, endpoint, cache_type, jobs)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=10)
    main_report = report["main"]
    targets = {"snapshot_s": 60, "version_s": 300, "increment_total_s": 30}
    figures = {
        "snapshot_s": main_report["snapshot"]["seconds"],
        "version_s": main_report.get("version", {}).get("seconds"),
        "increment_total_s": main_report["increment_total_s"],
        "peak_rss_mb": main_report["peak_rss_mb"],
    }
    report["figures"], report["targets"] = figures, targets
    report["within_targets"] = all(figures[k] is None or figures[k] <= v for k, v in targets.items())
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(figures), "targets", json.dumps(targets), "->",
          "within" if report["within_targets"] else "OUTSIDE", "targets")  # fmt: skip
    if "baseline" in report:
        b = report["baseline"]
        print(f"DVC levers vs defaults at {args.baseline_tasks} tasks: version x{b['version_speedup']}, "
              f"increment x{b['increment_speedup']}")  # fmt: skip


if __name__ == "__main__":
    main()

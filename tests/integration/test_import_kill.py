"""Issue #14 fault injection, Label Studio side: `crux import` SIGKILLed at seeded random points leaves each project
with all of the import or none of it, never a task twice, and the next run completes it. Short version (2 points)
in the default run, 50 points in the slow set; figures in <pytest basetemp>/kill_faults_import.json."""

from __future__ import annotations

import json
import random
import signal
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, copy_neu_subset, neu_stems
from kill_support import run_and_kill

from crux.config import LabelStudioConfig, from_mapping
from crux.label import importer
from crux.label.projects import sync_project

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")]


@pytest.mark.parametrize("points", [pytest.param(2, id="short"), pytest.param(50, id="long", marks=pytest.mark.slow)])
def test_import_killed_at_seeded_points_gives_all_or_none(
    ls_server: tuple, ls_client: Any, ls_files_root: Path, points: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    settings, credentials = ls_server
    cfg = from_mapping(LabelStudioConfig, yaml.safe_load((REPO / "params.yaml").read_text())["labelstudio"], "ls")
    spec = cfg.project("neu-det")
    source = copy_neu_subset(ls_files_root / f"kill-import-{points}", neu_stems(2))
    scan = importer.scan_source(str(source), spec, "yolo")
    total = len(scan.items)
    expected = {item.sha256: sum(1 for _ in item.labels) for item in scan.items}

    def script(project_id: int) -> str:
        return textwrap.dedent(f"""
            import sys
            from pathlib import Path
            import yaml
            from crux.label import importer
            from crux.config import LabelStudioConfig, from_mapping
            from crux.label.client import connect
            params = yaml.safe_load(Path({str(REPO / "params.yaml")!r}).read_text())
            spec = from_mapping(LabelStudioConfig, params["labelstudio"], "ls").project("neu-det")
            client = connect({settings.url!r}, {credentials.token!r})
            sys.stdout.write("go\\n")
            sys.stdout.flush()
            scan = importer.scan_source({str(source)!r}, spec, "yolo")
            importer.import_items(client, {project_id}, spec, scan, Path({str(ls_files_root)!r}))
        """)

    def tasks(project_id: int) -> Counter[str]:
        found = ls_client.tasks.list(project=project_id, fields="all", page_size=1000)
        return Counter((t.data or {}).get("sha256") for t in found)

    def project(name: str) -> int:
        return sync_project(ls_client, name, spec).project_id

    probe = project(f"kill-import-{points}-probe")
    _, t_full = run_and_kill(script(probe), None, run_timeout=300)
    assert tasks(probe) == Counter(dict.fromkeys(expected, 1))
    rng = random.Random(f"import-{points}")
    killed = finished_first = 0
    violations: list[str] = []
    for point in range(points):
        pid = project(f"kill-import-{points}-{point}")
        finished, _ = run_and_kill(script(pid), rng.uniform(0, t_full), run_timeout=300)
        killed += not finished
        finished_first += finished
        time.sleep(1.0)  # a request the killed client sent is still processed by the server: let it land
        after_kill = tasks(pid)
        if sum(after_kill.values()) not in (0, total) or any(n > 1 for n in after_kill.values()):
            violations.append(f"point {point}: {sum(after_kill.values())} of {total} tasks after the kill")
        importer.import_items(ls_client, pid, spec, scan, ls_files_root)
        again = tasks(pid)
        if again != Counter(dict.fromkeys(expected, 1)):
            violations.append(f"point {point}: after the next run {dict(again)}")
        ls_client.projects.delete(id=pid)
    report = {
        f"import[{points}]": {
            "kill_points": points,
            "killed_mid_run": killed,
            "finished_before_the_kill": finished_first,
            "t_full_s": round(t_full, 3),
            "tasks_per_import": total,
            "invariant_violations": len(violations),
            "violations": violations[:20],
        }
    }
    out = tmp_path_factory.getbasetemp() / f"kill_faults_import_{points}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{json.dumps(report, indent=2)}")
    assert killed >= 1 and not violations, violations

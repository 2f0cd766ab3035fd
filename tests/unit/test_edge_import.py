"""The edge installs as `crux[edge]`: its modules import without torch, lightning, prefect or onnx, fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import importlib.abc, json, sys, time

BLOCKED = ("torch", "lightning", "pytorch_lightning", "prefect", "onnx", "albumentations", "dvc", "torchmetrics",
           "onnxscript", "fastapi", "sqlalchemy")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed on an edge box")
        return None

sys.meta_path.insert(0, Block())
started = time.perf_counter()
import crux.edge.runtime, crux.edge.predict, crux.inference, crux.ship.publish, crux.ship.signing, crux.edge.outbox
import_s = time.perf_counter() - started
print(json.dumps({"import_s": import_s, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_edge_imports_without_heavy_packages_in_under_a_second() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["import_s"] < 1.0, result


def test_edge_runtime_runs_a_model_with_heavy_packages_blocked(tmp_path: Path) -> None:
    from edge_support import exported

    from crux.ship.gate import GateConfig
    from crux.ship.publish import publish
    from crux.ship.signing import generate_private_key, public_key_pem

    key = generate_private_key()
    publish(str(tmp_path / "remote"), "line-a", exported(tmp_path, "classify"), key, GateConfig())
    (tmp_path / "pub.pem").write_bytes(public_key_pem(key.public_key()))
    from PIL import Image

    Image.new("L", (20, 20), 128).save(tmp_path / "f.png")
    script = (
        SCRIPT.split("started =")[0]
        + f"""
from pathlib import Path
from crux.edge.runtime import EdgeConfig, EdgeRuntime
from crux.ship.signing import load_public_key
keys = [load_public_key(Path({str(tmp_path / "pub.pem")!r}).read_bytes())]
remote = {str(tmp_path / "remote" / "line-a")!r}
rt = EdgeRuntime(remote, "line-a", EdgeConfig(), keys, Path({str(tmp_path / "state")!r}))
out = []
rt.run([{str(tmp_path / "f.png")!r}], out.append, poll=False)
print(json.dumps(out[0]))
"""
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["model_version"] == 1 and record["verdict"] in ("OK", "NG")

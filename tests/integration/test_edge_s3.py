"""Publish to S3 (a real moto server through s3fs), edge follows it, rollback, tampering, concurrent reader."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import new_bucket
from edge_support import exported
from PIL import Image

from crux.edge.predict import open_model
from crux.edge.runtime import EdgeConfig, EdgeRuntime
from crux.inference import predict_paths
from crux.ship.fetch import fetch_release
from crux.ship.gate import GateConfig
from crux.ship.listing import list_models
from crux.ship.publish import GateRefused, publish, rollback
from crux.ship.releases import ReleaseError
from crux.ship.signing import generate_private_key

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(moto_s3: str) -> str:
    return f"s3://{new_bucket('models')}/crux"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("s3-exports")
    return {
        "v1": exported(root, "classify", seed=0, metrics={"macro_f1": 0.8}),
        "v2": exported(root, "classify", seed=1, metrics={"macro_f1": 0.82}),
        "worse": exported(root, "classify", seed=2, metrics={"macro_f1": 0.5}),
    }


def test_publish_follow_rollback_on_s3(s3: str, exports: dict[str, Path], tmp_path: Path) -> None:
    key = generate_private_key()
    frame = tmp_path / "f.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(frame)
    assert publish(s3, "line-a", exports["v1"], key, GateConfig()).version == 1
    rt = EdgeRuntime(f"{s3}/line-a", "line-a", EdgeConfig(), [key.public_key()], tmp_path / "state")
    rt.wait_for_model(timeout_s=10)
    assert rt.process(frame)["model_version"] == 1
    assert publish(s3, "line-a", exports["v2"], key, GateConfig()).version == 2
    with pytest.raises(GateRefused):
        publish(s3, "line-a", exports["worse"], key, GateConfig(tolerance=0.1))
    assert rt.check_update() and rt.process(frame)["model_version"] == 2
    rollback(s3, "line-a", key, reason="regression")
    assert rt.check_update() and rt.running.version == 1  # type: ignore[union-attr]
    history = list_models(s3, "line-a", [key.public_key()])
    assert [v["version"] for v in history["versions"]] == [1, 2]
    assert [e["action"] for e in history["events"]] == ["publish", "publish", "rollback"]
    # crux predict against the remote line.
    model = open_model(f"{s3}/line-a", public_keys=[key.public_key()], cache_dir=tmp_path / "cache")
    (record,) = predict_paths(model, [str(frame)])
    assert record["model_version"] == 1


def test_tampered_object_on_s3_is_rejected(s3: str, exports: dict[str, Path], tmp_path: Path) -> None:
    import s3fs

    key = generate_private_key()
    publish(s3, "line-a", exports["v1"], key, GateConfig())
    rt = EdgeRuntime(f"{s3}/line-a", "line-a", EdgeConfig(), [key.public_key()], tmp_path / "state")
    rt.wait_for_model(timeout_s=10)
    publish(s3, "line-a", exports["v2"], key, GateConfig())
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe_file(f"{s3.removeprefix('s3://')}/line-a/000002/model.onnx", b"garbage")
    assert not rt.check_update() and rt.running.version == 1  # type: ignore[union-attr]


def test_reader_polling_s3_during_publish_sees_only_complete_releases(
    s3: str, exports: dict[str, Path], tmp_path: Path
) -> None:
    key = generate_private_key()
    publish(s3, "line-a", exports["v1"], key, GateConfig())
    stop, errors, seen = threading.Event(), [], []

    def reader() -> None:
        n = 0
        while not stop.is_set():
            try:
                release = fetch_release(f"{s3}/line-a", tmp_path / f"r{n % 2}", [key.public_key()], installed=None)
                assert release is not None
                seen.append(release.version)
            except ReleaseError as exc:
                errors.append(str(exc))
            n += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(4):
            publish(s3, "line-a", exports["v2" if i % 2 == 0 else "v1"], key, GateConfig(tolerance=1.0))
    finally:
        stop.set()
        t.join()
    assert not errors and seen == sorted(seen) and len(seen) > 1

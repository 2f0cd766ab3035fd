"""`crux predict --json`: the stable contract, from a model folder or a published line, same path as the edge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from edge_support import exported
from PIL import Image

from crux.edge.predict import open_model
from crux.edge.runtime import EdgeConfig, EdgeRuntime
from crux.inference import CONTRACT_KEYS, contract_record, predict_paths
from crux.ship.gate import GateConfig
from crux.ship.publish import publish
from crux.ship.releases import ReleaseError
from crux.ship.signing import generate_private_key


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(1)
    images = []
    for i, size in enumerate([(40, 40), (64, 30), (200, 200)]):
        p = root / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
        images.append(p)
    return {
        "classify": exported(root, "classify", metrics={"macro_f1": 0.5}),
        "detect": exported(root, "detect", metrics={"map50": 0.5}),
        "images": root,
    }


def _check_contract(record: dict, classes: list[str], image: str, width: int, height: int) -> None:
    assert tuple(record) == CONTRACT_KEYS
    assert record["image"] == image
    assert isinstance(record["label"], str) and 0.0 <= record["score"] <= 1.0
    assert set(record["scores"]) == set(classes) and all(0.0 <= v <= 1.0 for v in record["scores"].values())
    for box in record["boxes"]:
        assert set(box) == {"label", "score", "xyxy"} and box["label"] in classes
        x1, y1, x2, y2 = box["xyxy"]
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height  # original-image pixels
    json.dumps(record, allow_nan=False)


def test_classifier_contract(setup: dict[str, Path]) -> None:
    model = open_model(str(setup["classify"]))
    images = sorted(str(p) for p in setup["images"].glob("*.jpg"))
    records = list(predict_paths(model, images))
    assert len(records) == 3
    for r, image in zip(records, images, strict=True):
        w, h = Image.open(image).size
        _check_contract(r, ["ok", "scratch", "spot"], image, w, h)
        assert r["boxes"] == [] and r["model_version"] is None
        assert r["label"] == max(r["scores"], key=r["scores"].get) and r["score"] == r["scores"][r["label"]]
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-4)


def test_detector_contract(setup: dict[str, Path]) -> None:
    model = open_model(str(setup["detect"]))
    images = sorted(str(p) for p in setup["images"].glob("*.jpg"))
    records = list(predict_paths(model, images))
    assert any(r["boxes"] for r in records)
    for r, image in zip(records, images, strict=True):
        w, h = Image.open(image).size
        _check_contract(r, ["scratch", "spot"], image, w, h)
        if r["boxes"]:
            top = r["boxes"][0]
            assert r["label"] == top["label"] and r["score"] == top["score"]
            assert [b["score"] for b in r["boxes"]] == sorted((b["score"] for b in r["boxes"]), reverse=True)
            assert all(b["score"] >= 0.3 for b in r["boxes"])  # card postprocess.box_threshold
        else:
            assert r["label"] == "OK"


def test_unreadable_image_gives_an_error_record(setup: dict[str, Path], tmp_path: Path) -> None:
    model = open_model(str(setup["classify"]))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    records = list(predict_paths(model, [str(bad), str(tmp_path / "missing.jpg")]))
    assert [set(r) for r in records] == [{"image", "error"}] * 2


def test_remote_line_and_runtime_give_the_same_records(setup: dict[str, Path], tmp_path: Path) -> None:
    key = generate_private_key()
    remote = str(tmp_path / "remote")
    publish(remote, "line-a", setup["detect"], key, GateConfig())
    model = open_model(f"{remote}/line-a", public_keys=[key.public_key()], cache_dir=tmp_path / "cache")
    assert model.version == 1
    images = sorted(str(p) for p in setup["images"].glob("*.jpg"))
    records = list(predict_paths(model, images))
    assert all(r["model_version"] == 1 for r in records)
    # The published version folder itself is a model folder, and knows its version.
    assert open_model(str(tmp_path / "remote" / "line-a" / "000001")).version == 1
    rt = EdgeRuntime(f"{remote}/line-a", "line-a", EdgeConfig(), [key.public_key()], tmp_path / "state")
    rt.wait_for_model(timeout_s=5)
    for image, expected in zip(images, records, strict=True):
        edge = rt.process(image)
        assert {k: edge[k] for k in CONTRACT_KEYS} == expected
    with pytest.raises(ReleaseError):
        open_model(f"{remote}/line-a", public_keys=[generate_private_key().public_key()], cache_dir=tmp_path / "c2")


def test_contract_record_rounding() -> None:
    from crux.inference import Box, Result

    r = Result("spot", 0.123456789, {"spot": 0.123456789}, [Box("spot", 0.123456789, (1.234, 2.345, 3.456, 4.567))])
    rec = contract_record("x.jpg", r, 7)
    assert rec == {
        "image": "x.jpg",
        "label": "spot",
        "score": 0.123457,
        "scores": {"spot": 0.123457},
        "boxes": [{"label": "spot", "score": 0.123457, "xyxy": [1.23, 2.35, 3.46, 4.57]}],
        "model_version": 7,
    }

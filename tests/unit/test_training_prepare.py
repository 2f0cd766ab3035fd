"""prepare: dataset version (contract layout) -> split lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crux.config import ConfigError
from crux.data.synthetic_versions import write_synthetic_dataset
from crux.train.prepare import DatasetError, prepare, read_split
from crux.train.recipe import DataConfig


def test_prepare_writes_split_lists(tmp_path: Path) -> None:
    data = write_synthetic_dataset(tmp_path, "detect", n_per_split=(6, 2, 2), size=32)
    summary = prepare(data, tmp_path / "prep", DataConfig(kind="detect"))
    assert summary["counts"] == {"train": 6, "val": 2, "test": 2}
    assert summary["classes"] == ["scratch", "spot"]
    train = read_split(tmp_path / "prep", "train")
    assert [r["sha256"] for r in train] == sorted(r["sha256"] for r in train)
    assert (tmp_path / "prep" / train[0]["image"]).is_file()
    assert len(train[0]["boxes"]) == len(train[0]["labels"]) >= 1
    # Same input, same bytes: prepared outputs are reproducible for DVC.
    first = (tmp_path / "prep" / "train.jsonl").read_bytes()
    prepare(data, tmp_path / "prep", DataConfig(kind="detect"))
    assert (tmp_path / "prep" / "train.jsonl").read_bytes() == first


def test_prepare_drops_conflicted_and_resplits(tmp_path: Path) -> None:
    data = write_synthetic_dataset(tmp_path, "classify", n_per_split=(12, 4, 4), size=32)
    manifest = data / "manifest.jsonl"
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[0]["conflicted"] = True
    manifest.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    summary = prepare(data, tmp_path / "p1", DataConfig(kind="classify"))
    assert summary["excluded"] == [{"reason": "conflicted", "sha256": rows[0]["sha256"]}]
    assert sum(summary["counts"].values()) == 19
    resplit = prepare(data, tmp_path / "p2", DataConfig(kind="classify", split_ratios=(0.5, 0.5, 0.0)))
    assert resplit["counts"]["test"] == 0 and resplit["counts"]["train"] + resplit["counts"]["val"] == 19


def test_prepare_errors(tmp_path: Path) -> None:
    data = write_synthetic_dataset(tmp_path, "classify", n_per_split=(4, 2, 2), size=32)
    with pytest.raises(ConfigError, match=r"data\.kind: params say 'detect'"):
        prepare(data, tmp_path / "p", DataConfig(kind="detect"))
    with pytest.raises(DatasetError, match="not found"):
        prepare(tmp_path / "nowhere", tmp_path / "p", DataConfig())
    image = next((data / "images").rglob("*.png"))
    image.write_bytes(image.read_bytes() + b"x")
    with pytest.raises(DatasetError, match="does not match its sha256"):
        prepare(data, tmp_path / "p", DataConfig())
    image.unlink()
    with pytest.raises(DatasetError, match="is missing"):
        prepare(data, tmp_path / "p", DataConfig())

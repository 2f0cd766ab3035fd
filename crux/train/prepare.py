"""`prepare`: a dataset version (`data/`) to training-ready split lists (`build/prepared/`). No torch.

Output layout
  {train,val,test}.jsonl   one item a line: image path relative to the prepared folder, original size, labels as
                           class indices (and pixel boxes for detection), sha256 — sorted by sha256
  prepared.json            kind, classes, ok_class, counts per split and class, excluded items with the reason
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from crux.config import ConfigError
from crux.data.store import sha256_file
from crux.errors import CruxError
from crux.train.recipe import SPLITS, DataConfig


class DatasetError(CruxError, ValueError):
    """The dataset version is inconsistent (missing image, hash mismatch, unknown class, …)."""


def _ratio_split(sha256: str, ratios: tuple[float, ...]) -> str:
    # Position from the content hash: an image keeps its split when other images are added or removed.
    u = int(sha256[:12], 16) / float(16**12)
    if u < ratios[0]:
        return "train"
    if u < ratios[0] + ratios[1]:
        return "val"
    return "test"


def prepare(data_dir: Path, out_dir: Path, cfg: DataConfig) -> dict[str, Any]:
    """Validate the dataset version against `cfg` and write the split lists; returns the prepared.json content."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    classes_file = data_dir / "classes.json"
    manifest_file = data_dir / "manifest.jsonl"
    for f in (classes_file, manifest_file):
        if not f.is_file():
            raise DatasetError(f"{f} not found: is {data_dir} a dataset version (crux snapshot / dvc pull)?")
    meta = json.loads(classes_file.read_text())
    kind, classes, ok_class = meta["kind"], list(meta["classes"]), meta.get("ok_class")
    if cfg.kind is not None and kind != cfg.kind:
        raise ConfigError(f"data.kind: params say {cfg.kind!r} but {classes_file} says {kind!r}")
    index = {c: i for i, c in enumerate(classes)}

    splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    excluded: list[dict[str, Any]] = []
    provenance: dict[str, dict[str, int]] = {}
    for line_no, line in enumerate(manifest_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        where = f"{manifest_file}:{line_no}"
        if cfg.drop_conflicted and item.get("conflicted"):
            excluded.append({"sha256": item["sha256"], "reason": "conflicted"})
            continue
        image = data_dir / item["image"]
        if not image.is_file():
            raise DatasetError(f"{where}: image {image} is missing (dvc pull?)")
        if cfg.verify_hashes and sha256_file(image) != item["sha256"]:
            raise DatasetError(f"{where}: {image} does not match its sha256 (corrupt or edited file)")
        labels = item.get("labels", [])
        unknown = sorted({lab["class"] for lab in labels} - set(index))
        if unknown:
            raise DatasetError(f"{where}: classes {unknown} are not in {classes_file}")
        record: dict[str, Any] = {
            "image": os.path.relpath(image, out_dir),
            "sha256": item["sha256"],
            "width": int(item["width"]),
            "height": int(item["height"]),
        }
        if kind in ("classify", "anomaly"):
            if len(labels) != 1:
                excluded.append({"sha256": item["sha256"], "reason": f"{len(labels)} class labels, need exactly 1"})
                continue
            record["label"] = index[labels[0]["class"]]
            if kind == "anomaly":
                record["is_ng"] = labels[0]["class"] != ok_class
                if item.get("mask"):  # optional pixel truth: pixel AUROC and region overlap where it exists
                    record["mask"] = os.path.relpath(data_dir / item["mask"], out_dir)
        elif kind == "segment":
            mask = data_dir / str(item.get("mask") or "")
            if not item.get("mask") or not mask.is_file():
                raise DatasetError(f"{where}: segment item without its mask file {item.get('mask')!r}")
            verdict = item.get("verdict") or (labels[0]["class"] if labels else ok_class)
            if verdict not in index:
                raise DatasetError(f"{where}: verdict {verdict!r} is not in {classes_file}")
            record["mask"] = os.path.relpath(mask, out_dir)
            record["label"] = index[verdict]
            record["is_ng"] = verdict != ok_class
            record["labels"] = [index[lab["class"]] for lab in labels]
        else:
            if any(lab.get("box") is None for lab in labels):
                raise DatasetError(f"{where}: a detection label without a box")
            record["boxes"] = [[float(v) for v in lab["box"]] for lab in labels]
            record["labels"] = [index[lab["class"]] for lab in labels]
        split = item.get("split") if cfg.split_ratios is None else _ratio_split(item["sha256"], cfg.split_ratios)
        if split not in SPLITS:
            raise DatasetError(f"{where}: split {split!r} is not one of {SPLITS}")
        splits[split].append(record)
        if split == "train" and item.get("provenance"):
            # Where the training labels came from, per class (imported / human / accepted / edited): the card's.
            for cls in sorted({lab["class"] for lab in labels} | ({item["verdict"]} if item.get("verdict") else set())):
                row = provenance.setdefault(cls, {})
                row[item["provenance"]] = row.get(item["provenance"], 0) + 1

    if not splits["train"]:
        raise DatasetError(f"{manifest_file}: no training items")
    if not splits["val"]:
        raise DatasetError(f"{manifest_file}: no validation items (checkpoints are chosen on the val split)")
    out_dir.mkdir(parents=True, exist_ok=True)
    counts, class_counts = {}, {}
    for split, records in splits.items():
        records.sort(key=lambda r: r["sha256"])
        (out_dir / f"{split}.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        counts[split] = len(records)
        per_class = dict.fromkeys(classes, 0)
        for r in records:
            for lab in [r["label"]] if kind in ("classify", "segment", "anomaly") else r["labels"]:
                per_class[classes[lab]] += 1
        class_counts[split] = per_class
    summary = {
        "kind": kind,
        "classes": classes,
        "ok_class": ok_class,
        "counts": counts,
        "class_counts": class_counts,
        "excluded": sorted(excluded, key=lambda e: e["sha256"]),
    }
    if provenance:  # manifests written before provenance was recorded have none
        summary["label_provenance"] = {cls: dict(sorted(row.items())) for cls, row in sorted(provenance.items())}
    (out_dir / "prepared.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def read_prepared(prepared_dir: Path) -> dict[str, Any]:
    path = Path(prepared_dir) / "prepared.json"
    if not path.is_file():
        raise DatasetError(f"{path} not found: run `crux prepare` first")
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: not a JSON object; run `crux prepare` again")
    return meta


def read_split(prepared_dir: Path, split: str) -> list[dict[str, Any]]:
    path = Path(prepared_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise DatasetError(f"{path} not found: run `crux prepare` first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""Synthetic images and Label Studio export JSON of the exact shape Label Studio 1.23 exports.

Used by tests and by bench/snapshot.py so that neither needs a Label Studio server: the task and
annotation fields below were copied from a real snapshot export (serialization option
`annotations__completed_by: {only_id: false}`).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crux.geometry import PixelBox
from crux.kinds import Label, get_kind


def image_bytes(seed: int, width: int = 64, height: int = 48, fmt: str = "JPEG") -> bytes:
    """A small image whose content (hence sha256) is unique per seed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    # Smooth gradient + a seeded block: JPEG-compressible and different perceptual hashes per seed.
    y, x = np.mgrid[0:height, 0:width]
    base = ((x * (1 + seed % 7) + y * (1 + seed % 5)) % 256).astype(np.uint8)
    block = rng.integers(0, 256, size=(4, 4), dtype=np.uint8)
    base = base ^ np.kron(block, np.ones((height // 4 + 1, width // 4 + 1), dtype=np.uint8))[:height, :width]
    out = io.BytesIO()
    Image.fromarray(base, mode="L").save(out, format=fmt, quality=90)
    return out.getvalue()


def write_image(root: Path, rel: str, data: bytes) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Ann:
    """One annotation of a synthetic task."""

    labels: Sequence[Label]
    annotator: str = "admin@crux.local"
    user_id: int = 1
    annotation_id: int = 0  # 0: derived from the task id
    cancelled: bool = False
    updated_at: str = "2026-11-25T13:06:32.571088Z"


def box(cls: str, x1: float, y1: float, x2: float, y2: float) -> Label:
    return Label(cls=cls, box=PixelBox(x1, y1, x2, y2))


def ls_task(
    task_id: int,
    image_url: str,
    *,
    sha256: str | None,
    original_name: str,
    width: int,
    height: int,
    annotations: Iterable[Ann] = (),
    kind: str = "detect",
) -> dict[str, Any]:
    k = get_kind(kind)
    anns = []
    for n, ann in enumerate(annotations):
        results = [] if ann.cancelled and not ann.labels else k.to_results(ann.labels, width, height)
        anns.append(
            {
                "id": ann.annotation_id or task_id * 10 + n,
                "completed_by": {"id": ann.user_id, "email": ann.annotator, "first_name": "", "last_name": ""},
                "result": results,
                "was_cancelled": ann.cancelled,
                "ground_truth": False,
                "created_at": ann.updated_at,
                "updated_at": ann.updated_at,
                "lead_time": None,
                "prediction": {},
                "result_count": len(results),
                "task": task_id,
                "project": 1,
            }
        )
    data: dict[str, Any] = {"image": image_url, "original_name": original_name, "width": width, "height": height}
    if sha256 is not None:
        data["sha256"] = sha256
    return {
        "id": task_id,
        "annotations": anns,
        "drafts": [],
        "predictions": [],
        "data": data,
        "meta": {},
        "created_at": "2026-11-25T13:06:32.568472Z",
        "updated_at": "2026-11-25T13:06:32.568501Z",
        "inner_id": task_id,
        "total_annotations": sum(not a["was_cancelled"] for a in anns),
        "cancelled_annotations": sum(a["was_cancelled"] for a in anns),
        "project": 1,
    }


def write_export(path: Path, tasks: Iterable[dict[str, Any]]) -> Path:
    """Write tasks as a JSON array, one task at a time (the bench writes 10,000 without holding them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.write("[")
        for n, task in enumerate(tasks):
            f.write(",\n" if n else "\n")
            f.write(json.dumps(task))
        f.write("\n]\n")
    return path


def local_url(rel: str) -> str:
    return f"/data/local-files/?d={rel}"

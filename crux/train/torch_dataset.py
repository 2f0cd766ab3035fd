"""The dataset over a prepared folder (torch only: `crux evaluate` uses it without Lightning).

Per item: decode (Pillow), resize to the model size with `crux.postprocess.resize` (the edge's function), augment
(albumentations, train split only). Items stay uint8 (C, S, S): 4x less to copy from loader workers (float32
transfer capped the loader at ~2,500 images/s) and to the GPU. `normalise` then runs on the batch, on the device,
with the very float32 operations of `crux.postprocess.normalise` (bit-identical, tested), so validation and test
inputs are exactly the edge's.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch.utils.data import Dataset

from crux.postprocess import InputSpec, load_image, mask_channels, open_image, resize
from crux.train.prepare import read_prepared, read_split


class InspectionDataset(Dataset[dict[str, Any]]):
    def __init__(self, prepared_dir: Path, split: str, kind: str, spec: InputSpec, augment: Any | None = None) -> None:
        self.root = Path(prepared_dir)
        self.items = read_split(self.root, split)
        self.kind = kind
        self.spec = spec
        self.augment = augment
        self._lut: NDArray[Any] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def seed_augment(self, seed: int) -> None:
        """One numpy and one python generator shared by all transforms (albumentations' set_random_seed would give
        every transform the same stream, so e.g. both flips would always fire together)."""
        if self.augment is not None:
            self.augment.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def channel_lut(self) -> NDArray[Any]:
        """Mask pixel value → segmenter output channel (`crux.postprocess.mask_channels`), read once."""
        if self._lut is None:
            meta = read_prepared(self.root)
            classes, ok = list(meta["classes"]), meta.get("ok_class")
            self._lut = mask_channels(classes, [c for c in classes if c != ok])
        return self._lut

    def _segment_item(self, item: dict[str, Any], image: NDArray[Any], out: dict[str, Any]) -> NDArray[Any]:
        with open_image(self.root / item["mask"]) as m:
            orig = self.channel_lut()[np.asarray(m)]
        mask = np.asarray(Image.fromarray(orig).resize((self.spec.image_size,) * 2, Image.Resampling.NEAREST))
        if self.augment is not None:
            res = self.augment(image=image, mask=mask)
            image, mask = res["image"], res["mask"]
        else:
            out["orig_mask"] = orig  # metrics are taken at the original size, as the edge reports regions
        out["mask"] = np.ascontiguousarray(mask)
        out["label"] = item["label"]
        out["is_ng"] = bool(item["is_ng"])
        return image

    def _anomaly_item(
        self, item: dict[str, Any], image: NDArray[Any], out: dict[str, Any], size: tuple[int, int]
    ) -> NDArray[Any]:
        """OK/NG with an optional defect mask (any non-zero pixel is anomalous); an NG item without one has no
        pixel truth (orig_mask None), an OK item's is all background."""
        orig: NDArray[Any] | None = None
        if item.get("mask"):
            with open_image(self.root / item["mask"]) as m:
                orig = (np.asarray(m) > 0).astype(np.uint8)
        elif not item["is_ng"]:
            orig = np.zeros((size[1], size[0]), np.uint8)
        s = self.spec.image_size
        mask: NDArray[Any] = np.zeros((s, s), np.uint8)
        if orig is not None:
            mask = np.asarray(Image.fromarray(orig).resize((s, s), Image.Resampling.NEAREST))
        if self.augment is not None:
            res = self.augment(image=image, mask=mask)
            image, mask = res["image"], res["mask"]
        else:
            out["orig_mask"] = orig
        out["mask"] = np.ascontiguousarray(mask)
        out["label"] = item["label"]
        out["is_ng"] = bool(item["is_ng"])
        return image

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        image = load_image(self.root / item["image"], self.spec.channels)
        h, w = image.shape[:2]
        size = self.spec.image_size
        image = resize(image, size)
        out: dict[str, Any] = {"index": i, "size": (w, h)}
        if self.kind == "classify":
            if self.augment is not None:
                image = self.augment(image=image)["image"]
            out["label"] = item["label"]
        elif self.kind == "segment":
            image = self._segment_item(item, image, out)
        elif self.kind == "anomaly":
            image = self._anomaly_item(item, image, out, (w, h))
        else:
            orig = np.asarray(item["boxes"], np.float32).reshape(-1, 4)
            labels = np.asarray(item["labels"], np.int64)
            boxes = orig * np.array([size / w, size / h, size / w, size / h], np.float32)
            boxes = np.clip(boxes, 0, size)
            valid = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
            boxes, labels = boxes[valid], labels[valid]
            if self.augment is not None:
                res = self.augment(image=image, bboxes=boxes, class_ids=labels)
                image = res["image"]
                boxes = np.asarray(res["bboxes"], np.float32).reshape(-1, 4)
                labels = np.asarray(res["class_ids"], np.int64).reshape(-1)
            out["boxes"], out["labels"] = boxes, labels
            out["orig_boxes"], out["orig_labels"] = orig, np.asarray(item["labels"], np.int64)
        if image.ndim == 2:  # some albumentations transforms drop a singleton channel
            image = image[:, :, None]
        out["image"] = torch.from_numpy(image.transpose(2, 0, 1).copy())  # own, writable memory
        return out


def normalise(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 (B, C, S, S) to the model input; the same float32 operations, in the same order, as
    `crux.postprocess.normalise` — keep the two in step."""
    x = images.to(torch.float32) * np.float32(1.0 / 255.0).item()
    return (x - np.float32(spec.mean).item()) / np.float32(spec.std).item()


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "image": torch.stack([b["image"] for b in batch]),
        "index": [b["index"] for b in batch],
        "size": [b["size"] for b in batch],
    }
    if "label" in batch[0]:
        out["label"] = torch.tensor([b["label"] for b in batch], dtype=torch.long)
    if "mask" in batch[0]:
        out["mask"] = torch.from_numpy(np.stack([b["mask"] for b in batch]).astype(np.int64))
        out["is_ng"] = torch.tensor([b["is_ng"] for b in batch], dtype=torch.bool)
        out["orig_mask"] = [b.get("orig_mask") for b in batch]
    elif "label" not in batch[0]:
        # Flat tensors plus per-image counts: every tensor a loader worker returns costs a shared-memory segment,
        # and two per image made 2 workers slower than none. `split_targets` restores the per-image view.
        out["boxes"] = torch.from_numpy(np.concatenate([b["boxes"] for b in batch]).reshape(-1, 4))
        out["box_labels"] = torch.from_numpy(np.concatenate([b["labels"] for b in batch]))
        out["box_counts"] = [len(b["labels"]) for b in batch]
        out["orig_boxes"] = [b["orig_boxes"] for b in batch]
        out["orig_labels"] = [b["orig_labels"] for b in batch]
    return out


def split_targets(batch: Mapping[str, Any]) -> list[dict[str, torch.Tensor]]:
    """The per-image {"boxes", "labels"} of a detection batch made by `collate` (views, no copies)."""
    counts = batch["box_counts"]
    return [
        {"boxes": boxes, "labels": labels}
        for boxes, labels in zip(batch["boxes"].split(counts), batch["box_labels"].split(counts), strict=True)
    ]


def worker_init(worker_id: int) -> None:
    try:
        import cv2

        # Each loader worker is one process on one core: OpenCV's own thread pool (albumentations) only thrashes.
        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - albumentations depends on opencv
        pass
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, InspectionDataset):
        # Lightning (seed_everything(workers=True)) makes torch.initial_seed() distinct and reproducible per worker.
        info.dataset.seed_augment(torch.initial_seed() % 2**32)

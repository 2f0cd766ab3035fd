"""The LightningDataModule over a prepared folder (see `crux.train.torch_dataset` for the per-item pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from crux.postprocess import InputSpec, load_image, open_image, resize
from crux.train.torch_dataset import InspectionDataset, collate, worker_init


class InspectionDataModule(pl.LightningDataModule):
    def __init__(
        self,
        prepared_dir: Path,
        kind: str,
        spec: InputSpec,
        augment: Any | None,
        batch_size: int,
        num_workers: int,
        seed: int,
        eval_batch_size: int | None = None,
        class_balance: float = 0.0,
    ) -> None:
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.kind = kind
        self.spec = spec
        self.augment = augment
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.class_balance = class_balance
        self.datasets: dict[str, InspectionDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            if split not in self.datasets:
                aug = self.augment if split == "train" else None
                self.datasets[split] = InspectionDataset(self.prepared_dir, split, self.kind, self.spec, aug)
        if self.kind == "anomaly":
            # An anomaly model learns from OK parts only; labelled NG items are for validation and test.
            train = self.datasets["train"]
            self.ng_train_items = [item for item in train.items if item["is_ng"] and item.get("mask")]
            train.items = [item for item in train.items if not item["is_ng"]]
            if not train.items:
                from crux.train.prepare import DatasetError

                raise DatasetError(f"{self.prepared_dir}: no OK items in the train split to learn normal parts from")
        self.datasets["train"].seed_augment(self.seed)

    def defect_crops(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Anomaly kind: crops of the train split's labelled NG regions at the model's input scale."""
        import numpy as np
        from PIL import Image

        from crux.train.anomaly_synthesis import defect_crops

        root, size = self.datasets["train"].root, self.spec.image_size
        images, masks = [], []
        for item in getattr(self, "ng_train_items", []):
            image = resize(load_image(root / item["image"], self.spec.channels), size)
            with open_image(root / item["mask"]) as m:
                mask = np.asarray(
                    Image.fromarray((np.asarray(m) > 0).astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
                )
            images.append(torch.from_numpy(image.transpose(2, 0, 1).copy()))
            masks.append(torch.from_numpy(mask > 0))
        return defect_crops(images, masks)

    def _balanced_sampler(self, generator: torch.Generator) -> WeightedRandomSampler | None:
        """Items drawn with weight count(class)^-class_balance (with replacement, an epoch's worth of draws)."""
        items = self.datasets["train"].items
        # Classification and segmentation items carry one image class ("label"); detection items do not.
        if self.kind not in ("classify", "segment") or not self.class_balance or not items:
            return None
        labels = torch.tensor([item["label"] for item in items])
        counts = torch.bincount(labels).to(torch.float64)
        weights = counts[labels] ** -self.class_balance
        # torch types `weights` as Sequence[float]; the sampler takes a tensor as well (torch.as_tensor).
        return WeightedRandomSampler(weights, num_samples=len(items), replacement=True, generator=generator)  # type: ignore[arg-type]

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader[dict[str, Any]]:
        generator = torch.Generator().manual_seed(self.seed)
        sampler = self._balanced_sampler(generator) if split == "train" else None
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            worker_init_fn=worker_init,
            generator=generator,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=shuffle and len(self.datasets[split]) > batch_size,  # BatchNorm dislikes a batch of 1
        )

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader[dict[str, Any]]:
        return self._loader("test", False, self.eval_batch_size)

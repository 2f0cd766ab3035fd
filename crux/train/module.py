"""The LightningModule: one shared step for train/val/test, kind-specific logic from `crux.kinds`."""

from __future__ import annotations

import math
import time
from typing import Any

import pytorch_lightning as pl
import torch

from crux.kinds import get_kind
from crux.postprocess import DetectSpec, InputSpec
from crux.train.models import build_model
from crux.train.tasks import training_task
from crux.train.torch_dataset import normalise


class InspectionModule(pl.LightningModule):
    """Hyperparameters are plain values (saved in every checkpoint), so a checkpoint alone rebuilds the module."""

    def __init__(
        self,
        kind: str,
        classes: list[str],
        ok_class: str | None,
        input_spec: dict[str, Any],
        model_config: dict[str, Any],
        detect_spec: dict[str, Any] | None,
        optim: dict[str, Any],
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.kind = get_kind(kind)
        spec = InputSpec.from_dict(input_spec)
        self.spec = spec
        self.task = training_task(
            kind, classes, ok_class, spec, DetectSpec.from_dict(detect_spec) if detect_spec else None, optim
        )
        # channels_last: oneDNN (CPU) and cuDNN (tensor cores) run convolutions faster in NHWC (here 1.2x in fp32,
        # 1.35x under bf16 on CPU); results do not depend on the layout, and exports are unaffected.
        # (Module.to accepts memory_format; torch's overload stubs omit it.)
        self.model = build_model(kind, model_config).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optim = optim
        self._state: dict[str, Any] | None = None
        self._fit_started = time.monotonic()
        self.last_metrics: dict[str, dict[str, Any]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def encoder_frozen(self) -> bool:
        """The encoder's weights are frozen for the first `freeze_epochs` epochs (all of them in head mode)."""
        return int(self.current_epoch) < int(getattr(self, "optim", {}).get("freeze_epochs", 0))

    def train(self, mode: bool = True) -> InspectionModule:
        """Lightning switches the module to train mode after every validation; a frozen encoder (and frozen
        BatchNorm) must stay in eval mode, or its running statistics drift on batches of 16."""
        super().train(mode)
        if mode:
            encoder = getattr(self.model, "backbone", None)
            if encoder is not None:
                frozen = self.encoder_frozen()
                for p in encoder.parameters():
                    p.requires_grad_(not frozen)
                if frozen or getattr(self, "optim", {}).get("freeze_bn"):
                    for m in encoder.modules():
                        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                            m.eval()
                            for p in m.parameters():
                                p.requires_grad_(False)
        return self

    def on_train_epoch_start(self) -> None:
        self.train(True)  # re-applies the freeze schedule at the epoch it ends

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        if hasattr(self.task, "batch_for"):  # the anomaly kind pastes its synthetic anomalies here
            batch = self.task.batch_for(stage, batch)
        # Batches arrive as uint8; normalising here runs on the device (see crux.train.torch_dataset).
        raw = self(normalise(batch["image"], self.spec).contiguous(memory_format=torch.channels_last))
        losses = self.task.loss(raw, batch)
        bs = batch["image"].shape[0]
        on_step = stage == "train"
        for name, value in losses.items():
            self.log(
                f"{stage}/{name}",
                value,
                prog_bar=name == "loss",
                on_step=on_step,
                on_epoch=True,
                batch_size=bs,
                sync_dist=not on_step,
            )
        if stage != "train" and self._state is not None:
            self.task.collect(self._state, raw, batch)
        return losses["loss"]

    def on_fit_start(self) -> None:
        if getattr(self.task, "use_defect_crops", False):  # anomaly kind: real defect crops among the synthetic
            # Attributes of the anomaly task and of CRUX's datamodule, not of the protocols mypy sees.
            self.task.defects = self.trainer.datamodule.defect_crops()  # type: ignore[attr-defined]
        self._fit_started = time.monotonic()  # the clock of a train.max_time budget (Lightning's Timer starts here)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._state = self.task.new_state()

    on_test_epoch_start = on_validation_epoch_start

    def _epoch_metrics(self, stage: str) -> None:
        # Metrics over the whole split on rank 0's shard. With DDP each rank sees part of the split; the checkpoint
        # metric is then the mean over ranks (sync_dist) — exact numbers come from `crux evaluate`.
        metrics, _ = self.task.metrics(self._state)
        self.last_metrics[stage] = metrics
        self.log(f"{stage}/{self.kind.monitor}", float(metrics[self.kind.monitor]), prog_bar=True, sync_dist=True)
        for key in ("accuracy", "map50_95"):
            if key in metrics:
                self.log(f"{stage}/{key}", float(metrics[key]), sync_dist=True)
        self._state = None

    def on_validation_epoch_end(self) -> None:
        self._epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_metrics("test")

    def configure_optimizers(self) -> Any:
        o = self.optim
        # Four groups: weight decay or not (no decay on norms, biases and the FPN scales: decaying them only
        # hurts), encoder or head (a pretrained encoder learns at lr x encoder_lr: it adapts, the head learns).
        grouped: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            decays = not (p.ndim <= 1 or name.endswith(".bias"))
            grouped.setdefault((decays, name.startswith("backbone.")), []).append(p)
        encoder_lr = float(o.get("encoder_lr", 1.0))
        groups = [
            {
                "params": params,
                "weight_decay": o["weight_decay"] if decays else 0.0,
                "lr": o["lr"] * (encoder_lr if in_encoder else 1.0),
            }
            for (decays, in_encoder), params in sorted(grouped.items())
        ]
        opt: torch.optim.Optimizer
        sched: torch.optim.lr_scheduler.LRScheduler
        if o["optimizer"] == "sgd":
            opt = torch.optim.SGD(groups, lr=o["lr"], momentum=0.9, nesterov=True)
        else:
            opt = torch.optim.AdamW(groups, lr=o["lr"])
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        if o["schedule"] == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=total)
        else:
            steps_per_epoch = max(total // max(int(self.trainer.max_epochs or 1), 1), 1)
            warmup = min(int(o["warmup_epochs"] * steps_per_epoch), total - 1)
            cosine = o["schedule"] == "cosine"
            budget = o.get("max_time_s")

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / (warmup + 1)
                if not cosine:
                    return 1.0
                progress = (step - warmup) / max(total - warmup, 1)
                if budget:  # a wall-clock budget (train.max_time): anneal by whichever runs out first
                    progress = max(progress, (time.monotonic() - self._fit_started) / budget)
                return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

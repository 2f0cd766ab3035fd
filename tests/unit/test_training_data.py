"""Class-balanced sampling of the train split."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from crux.postprocess import InputSpec
from crux.train.datamodule import InspectionDataModule


def _module(kind: str, balance: float, labels: list[int]) -> InspectionDataModule:
    dm = InspectionDataModule(Path("unused"), kind, InputSpec(32, 1, 0.5, 0.25), None, 8, 0, 7, class_balance=balance)
    dm.datasets["train"] = SimpleNamespace(items=[{"label": label} for label in labels])  # type: ignore[assignment]
    return dm


@pytest.mark.parametrize(("balance", "rare_share"), [(1.0, 0.5), (0.5, 0.25)])
def test_rare_class_is_drawn_by_count_to_the_minus_balance(balance: float, rare_share: float) -> None:
    labels = [0] * 90 + [1] * 10
    sampler = _module("classify", balance, labels)._balanced_sampler(torch.Generator().manual_seed(0))
    assert sampler is not None and len(sampler) == 100  # an epoch is still one pass' worth of items
    draws = [labels[i] for _ in range(200) for i in sampler]
    # weights 90^-b and 10^-b per item: b=1 -> equal classes; b=0.5 -> 10*sqrt(1/10) / (that + 90*sqrt(1/90)) = 0.25
    assert sum(draws) / len(draws) == pytest.approx(rare_share, abs=0.02)


def test_no_sampler_without_balance_or_for_detection() -> None:
    gen = torch.Generator()
    assert _module("classify", 0.0, [0, 1])._balanced_sampler(gen) is None
    assert _module("detect", 1.0, [0, 1])._balanced_sampler(gen) is None

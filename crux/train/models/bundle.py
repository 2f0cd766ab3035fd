"""The trained-model bundle `model.pt`: weights plus everything needed to run them (no Lightning needed).

{"format": "crux-model/1", "kind", "classes", "ok_class", "input": InputSpec dict, "model_config": dict,
 "detect": DetectSpec dict | None, "state_dict", "info": {...}}  — export (ONNX) and evaluation read this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

BUNDLE_FORMAT = "crux-model/1"


def save_bundle(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    blob = {"format": BUNDLE_FORMAT, **meta, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)  # never leave a half-written model behind


def load_bundle(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on CPU, metadata without the weights)."""
    from crux.kinds import get_kind

    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not a crux model bundle ({BUNDLE_FORMAT})")
    state = blob.pop("state_dict")
    model = get_kind(blob["kind"]).build_model(blob["model_config"])
    model.load_state_dict(state)
    return model.eval(), blob

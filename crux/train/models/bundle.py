"""The trained-model bundle `model.pt`: weights plus everything needed to run them (no Lightning needed).

{"format": "crux-model/1", "kind", "classes", "ok_class", "input": InputSpec dict, "model_config": dict,
 "detect": DetectSpec dict | None, "state_dict", "info": {...}}  — export (ONNX) and evaluation read this.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crux.errors import CruxError


class BundleError(CruxError, ValueError):
    """A file given as a model bundle that is not one (the message names it)."""


BUNDLE_FORMAT = "crux-model/1"


def save_bundle(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    blob = {"format": BUNDLE_FORMAT, **meta, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)  # never leave a half-written model behind


def load_bundle(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on CPU, metadata without the weights)."""
    from crux.train.models import build_model

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
        raise BundleError(f"{path}: not a crux model bundle ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not a crux model bundle ({BUNDLE_FORMAT})")
    state = blob.pop("state_dict")
    model = build_model(blob["kind"], blob["model_config"])
    model.load_state_dict(state)
    return model.eval(), blob

"""params sections data/augment/train/evaluate: every bad value fails before training with the dotted key."""

from __future__ import annotations

from typing import Any

import pytest

from crux.config import ConfigError
from crux.train.recipe import (
    QUICK_PROFILE,
    PipelineConfig,
    load_pipeline_config,
    merge_params,
    quick_overrides,
    quick_profile,
)


def _load(params: dict[str, Any]) -> PipelineConfig:
    return load_pipeline_config(params)


def test_defaults_and_quick_profile_validate() -> None:
    cfg = _load({})
    assert cfg.data.kind is None  # the dataset's own kind
    assert cfg.train.precision == "auto" and cfg.train.accelerator == "auto"
    quick = _load(quick_profile({"data": {"kind": "detect"}}))
    assert quick.data.image_size == 64 and quick.train.max_steps == 4 and quick.train.model.strides == (8, 16)
    assert merge_params({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}
    assert "train" in QUICK_PROFILE


def test_valid_augment_pipeline_for_detection() -> None:
    cfg = _load(
        {
            "data": {"kind": "detect", "image_size": 64},
            "augment": {
                "transforms": [
                    {"name": "HorizontalFlip", "args": {"p": 0.5}},
                    {"name": "RandomBrightnessContrast", "args": {"brightness_limit": [-0.2, 0.2]}},
                    {"name": "RandomSizedBBoxSafeCrop", "args": {"height": 64, "width": 64, "p": 0.3}},
                ]
            },
        }
    )
    assert cfg.augment.transforms[0].name == "HorizontalFlip"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"data": {"imgsize": 64}}, r"params\.data: unknown key\(s\) imgsize"),
        ({"train": {"model": {"widht": 8}}}, r"params\.train\.model: unknown key\(s\) widht"),
        ({"evaluate": {"iou": 0.5}}, r"unknown key\(s\) iou"),
        ({"data": {"kind": "keypoints"}}, r"data\.kind: 'keypoints' is not a task kind"),
        ({"data": {"image_size": 16}}, r"data\.image_size: 16 must be in 32\.\.4096"),
        ({"data": {"channels": 2}}, r"data\.channels"),
        ({"data": {"split_ratios": [0.5, 0.2]}}, r"data\.split_ratios"),
        ({"data": {"split_ratios": [0.8, 0.2, 0.2]}}, r"data\.split_ratios"),
        ({"train": {"epochs": 0}}, r"train\.epochs"),
        ({"train": {"batch_size": "32"}}, r"train\.batch_size: expected an integer"),
        ({"train": {"optimizer": "adam"}}, r"train\.optimizer: 'adam' is not one of"),
        ({"train": {"precision": "fp16"}}, r"train\.precision"),
        ({"train": {"accelerator": "tpu"}}, r"train\.accelerator"),
        ({"train": {"devices": "two"}}, r"train\.devices"),
        ({"train": {"lr": -1}}, r"train\.lr"),
        ({"train": {"ema_decay": 1.0}}, r"train\.ema_decay: 1\.0 must be in \[0, 1\)"),
        ({"train": {"class_balance": 2}}, r"train\.class_balance: 2\.0 must be in \[0, 1\]"),
        ({"train": {"model": {"pool": "gem"}}}, r"train\.model\.pool: 'gem' is not one of avg, avgmax"),
        ({"train": {"model": {"depth": []}}}, r"train\.model\.depth"),
        ({"train": {"model": {"strides": [16, 8]}}}, r"train\.model\.strides"),
        ({"evaluate": {"nms_iou": 1.5}}, r"evaluate\.nms_iou"),
        ({"augment": {"min_visibility": 2}}, r"augment\.min_visibility"),
        (
            {"data": {"kind": "detect"}, "train": {"model": {"depth": [1, 1], "strides": [8]}}},
            r"detector needs at least 3 backbone stages",
        ),
        (
            {"data": {"kind": "detect"}, "train": {"model": {"depth": [1, 1, 1], "strides": [8, 32]}}},
            r"stride 32 not produced by the resnet encoder \(strides 4, 8, 16\)",
        ),
    ],
)
def test_bad_params_are_rejected(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(params)


@pytest.mark.parametrize(
    ("transform", "kind", "message"),
    [
        ({"name": "FancyWarp"}, "classify", r"transforms\[0\]\.name: 'FancyWarp' is not an albumentations transform"),
        ({"name": "HorizontalFlip", "args": {"p": 2}}, "classify", r"transforms\[0\]\.args: HorizontalFlip"),
        ({"name": "HorizontalFlip", "args": {"prob": 0.5}}, "classify", r"unknown argument\(s\) prob"),
        ({"name": "Normalize"}, "classify", r"applied by crux from params `data`"),
        ({"name": "OverlayElements"}, "detect", r"does not move boxes"),
        ({"name": "RandomCrop3D", "args": {"size": [2, 2, 2]}}, "classify", r"does not transform 2-D images"),
        ({"name": "RandomCrop", "args": {"height": 32, "width": 32}}, "classify", r"expected data\.image_size 64"),
        ({"args": {"p": 0.5}}, "classify", r"transforms\[0\]\.name: required key is missing"),
    ],
)
def test_bad_transforms_are_rejected(transform: dict[str, Any], kind: str, message: str) -> None:
    params = {"data": {"kind": kind, "image_size": 64}, "augment": {"transforms": [transform]}}
    with pytest.raises(ConfigError, match=message):
        _load(params)


def test_default_params_round_trip_and_quick_overrides() -> None:
    from crux.train.recipe import default_params, quick_overrides

    params = default_params("detect")
    cfg = _load(params)
    assert cfg == PipelineConfig(data=cfg.data) and cfg.data.kind == "detect"
    assert params["train"]["model"]["depth"] == [1, 1, 2, 1] and params["train"]["model"]["init_weights"] is None
    args = quick_overrides()
    assert args[:2] == ["-S", "data.image_size=64"] and "train.model.depth=[1,1,1]" in args
    assert all(" " not in a for a in args)


def test_precision_auto_is_fp32_on_cpu() -> None:
    import torch

    from crux.train.pipeline import resolve_precision

    expected = "32-true" if not torch.cuda.is_available() else resolve_precision("auto", "auto")
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("auto", "auto") == expected
    assert resolve_precision("16-mixed", "auto") == "16-mixed"


def test_line_overrides_merge_over_shared_sections() -> None:
    from crux.train.recipe import line_params

    params = {
        "data": {"image_size": 200, "channels": 1},
        "train": {"model": {"width": 32, "depth": [1, 1, 2, 1]}, "lr": 0.002},
        "pipeline": {
            "lines": ["a", "b"],
            "overrides": {"b": {"data": {"image_size": 224}, "train": {"model": {"width": 16}}}},
        },
    }
    b = load_pipeline_config(line_params(params, "b"))
    assert b.data.image_size == 224 and b.train.model.width == 16 and b.train.model.depth == (1, 1, 2, 1)
    assert b.train.lr == 0.002  # untouched keys stay shared
    a = load_pipeline_config(line_params(params, "a"))
    assert a.data.image_size == 200 and a.train.model.width == 32
    # The quick profile drops the overrides: a line's own size would undo it.
    assert quick_profile(params)["pipeline"]["overrides"] == {}
    assert quick_overrides()[-2:] == ["-S", "pipeline.overrides={}"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"b": {"trian": {}}}, r"pipeline.overrides.b: unknown section\(s\) trian"),
        ({"b": {"train": {"model": {"widht": 3}}}}, "widht"),
        ({"b": {"data": 5}}, r"pipeline.overrides.b.data: expected a mapping"),
        ([1], "pipeline.overrides: expected a mapping"),
    ],
)
def test_line_overrides_are_validated(overrides: object, message: str) -> None:
    from crux.train.recipe import line_params

    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(line_params({"pipeline": {"overrides": overrides}}, "b"))


def test_max_time_early_stop_and_profiles_validate() -> None:
    from crux.train.recipe import DEMO_PROFILE, max_time_seconds, profile_overrides

    cfg = _load(merge_params(default_params_for("classify"), {"train": {"max_time": "00:05:30:00"}}))
    assert cfg.train.max_time == "00:05:30:00" and max_time_seconds(cfg.train.max_time) == 5.5 * 3600
    assert max_time_seconds(None) is None
    for bad in ("5:30", "00:24:00:00", "00:00:00:00", "00:00:61:00", 330):
        with pytest.raises(ConfigError, match="max_time"):
            _load(merge_params(default_params_for("classify"), {"train": {"max_time": bad}}))
    with pytest.raises(ConfigError, match="early_stop"):
        _load(merge_params(default_params_for("classify"), {"train": {"early_stop_patience": -1}}))
    demo = _load(merge_params(default_params_for("classify"), DEMO_PROFILE))
    assert demo.train.mode == "head" and demo.train.model.pretrained == "imagenet"
    assert "train.mode=head" in profile_overrides("demo")
    # The demo keeps each line's own input size; the quick profile replaces everything.
    assert "pipeline.overrides={}" not in profile_overrides("demo")
    assert "pipeline.overrides={}" in profile_overrides("quick")
    with pytest.raises(ConfigError, match="profile"):
        profile_overrides("fastest")


def default_params_for(kind: str) -> dict[str, Any]:
    from crux.train.recipe import default_params

    return default_params(kind)


def test_precision_fast_is_bf16_only_where_the_cpu_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from crux.train import pipeline

    if torch.cuda.is_available():
        pytest.skip("CUDA picks its own mixed precision")
    monkeypatch.setattr(pipeline, "cpu_has_native_bf16", lambda: True)
    assert pipeline.resolve_precision("fast", "cpu") == "bf16-mixed"
    assert pipeline.resolve_precision("auto", "cpu") == "32-true"  # auto stays reproducible
    monkeypatch.setattr(pipeline, "cpu_has_native_bf16", lambda: False)
    assert pipeline.resolve_precision("fast", "cpu") == "32-true"


def test_training_threads_follow_the_setting_then_omp_then_the_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from crux.train.pipeline import training_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert training_threads(3, 1) == 3 and training_threads(0, 1) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1}, raising=False)
    assert training_threads(0, 1) == 1 and training_threads(0, 0) == 2

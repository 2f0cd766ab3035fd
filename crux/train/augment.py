"""albumentations pipelines built from the validated `augment` section."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from crux.config import ConfigError

if TYPE_CHECKING:  # the recipe validates transforms through build_augment: a run-time import would be a circle
    from crux.train.recipe import AugmentConfig


def build_augment(cfg: AugmentConfig, kind: str, image_size: int | None = None, channels: int = 1) -> Any:
    """An `A.Compose` for the configured transforms; bbox-aware for detection. ConfigError on anything invalid.

    With `image_size`, a dummy image goes through the pipeline once: a transform that changes the image size
    (a crop without the matching resize) fails here, before training, instead of in a collate error.
    """
    import albumentations as A
    import numpy as np

    transforms = []
    for i, spec in enumerate(cfg.transforms):
        where = f"augment.transforms[{i}]"
        cls = getattr(A, spec.name, None)
        if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)):
            raise ConfigError(f"{where}.name: {spec.name!r} is not an albumentations transform")
        if spec.name in {"Normalize", "ToTensorV2", "Resize"}:
            # Resize and normalisation are fixed by `data` and shared with the edge; repeating them here would
            # make training see a different input distribution from evaluation.
            raise ConfigError(f"{where}.name: {spec.name} is applied by crux from params `data`; remove it here")
        targets = _targets(cls)
        if targets is not None and "Image" not in targets:
            raise ConfigError(f"{where}.name: {spec.name} does not transform 2-D images")
        if kind == "detect" and issubclass(cls, A.DualTransform) and targets is not None and "BBoxes" not in targets:
            raise ConfigError(f"{where}.name: {spec.name} does not move boxes; it cannot be used for detection")
        if (
            kind in ("segment", "anomaly")
            and issubclass(cls, A.DualTransform)
            and targets is not None
            and "Mask" not in targets
        ):
            raise ConfigError(f"{where}.name: {spec.name} does not move masks; it cannot be used for segmentation")
        args = _plain(spec.args)
        accepted = inspect.signature(cls.__init__).parameters
        unknown = sorted(set(args) - set(accepted))
        if unknown:
            # albumentations only warns about unknown arguments; a typo would silently fall back to a default.
            allowed = ", ".join(sorted(n for n in accepted if n not in ("self", "args", "kwargs")))
            raise ConfigError(
                f"{where}.args: unknown argument(s) {', '.join(unknown)} for {spec.name}; allowed: {allowed}"
            )
        try:
            transforms.append(cls(**args))
        except Exception as exc:  # albumentations raises pydantic ValidationError/TypeError/ValueError
            raise ConfigError(f"{where}.args: {spec.name}({args}) rejected: {_first_line(exc)}") from exc
    bbox_params = None
    if kind == "detect":
        # Boxes are filtered once at the end (check_each_transform=False): per-transform checks double the cost.
        bbox_params = A.BboxParams(
            format="pascal_voc",
            label_fields=["class_ids"],
            min_visibility=cfg.min_visibility,
            clip=True,
            check_each_transform=False,
        )
    # Image and mask always come at the same size (crux resizes both), so albumentations' shape cross-check is pure
    # overhead (~0.1 ms an image). Spatial transforms move a mask with nearest-neighbour sampling (their default
    # mask_interpolation), so class indices never blend.
    compose = A.Compose(transforms, bbox_params=bbox_params, is_check_shapes=False)
    if image_size is not None:
        dummy = np.zeros((image_size, image_size, channels), np.uint8)
        extra = (
            {"bboxes": [[1.0, 1.0, image_size - 1.0, image_size - 1.0]], "class_ids": [0]} if kind == "detect" else {}
        )
        if kind in ("segment", "anomaly"):
            extra = {"mask": np.zeros((image_size, image_size), np.uint8)}
        try:
            shape = compose(image=dummy, **extra)["image"].shape
        except Exception as exc:
            raise ConfigError(
                f"augment.transforms: the pipeline fails on a {image_size}px image: {_first_line(exc)}"
            ) from exc
        if tuple(shape[:2]) != (image_size, image_size):
            raise ConfigError(
                f"augment.transforms: output is {shape[1]}x{shape[0]}, expected data.image_size {image_size}; "
                "give crops the size of data.image_size"
            )
    return compose


def _targets(cls: Any) -> set[str] | None:
    """The target kinds a transform declares ("Image", "BBoxes", …), None when it declares none."""
    targets = getattr(cls, "_targets", None)
    if targets is None:
        return None
    targets = targets if isinstance(targets, tuple) else (targets,)
    return {getattr(t, "value", str(t)) for t in targets}


def _plain(value: Any) -> Any:
    """Mapping proxies and tuples from the frozen config back to dicts/lists that albumentations validates."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in text[:4]) if text else type(exc).__name__

"""Task kinds in one registry.

Everything that differs between classification and detection (the Label Studio label config, how
labels become Label Studio results and back, the model, training loss, metrics and post-processing) is
found here by kind name instead of if/elif branches spread over the code base.

Model, training and post-processing hooks import lazily: this module must stay importable without torch
(CLI --help, the edge runtime, the ingest API).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from xml.sax.saxutils import quoteattr

from crux.errors import CruxError
from crux.geometry import PixelBox, ls_percent_to_pixel, pixel_to_ls_percent

if TYPE_CHECKING:
    from crux.config import ProjectSpec

IMAGE_KEY = "image"  # task.data key holding the image URL, and the <Image name=…> it binds to


@dataclass(frozen=True)
class Label:
    """One label of one image: a class, with a pixel box for detection."""

    cls: str
    box: PixelBox | None = None


class LabelError(CruxError, ValueError):
    """A Label Studio result or a source label cannot be interpreted."""


class TaskKind(Protocol):
    name: str
    control_name: str
    result_type: str

    def label_config(self, spec: ProjectSpec) -> str: ...

    def to_results(
        self, labels: Sequence[Label], width: int, height: int, score: float | None = None
    ) -> list[dict[str, Any]]: ...

    def from_results(self, results: Iterable[Mapping[str, Any]], width: int, height: int) -> list[Label]: ...

    # ModelCheckpoint / comparison metric (higher is better), a key of the kind's metrics dict.
    monitor: str

    # Default absolute limits of the publish gate (crux.publish), dotted keys of the kind's test metrics, checked
    # for every candidate (the first one included) before params.yaml `gate.min` / `gate.max` / `gate.lines`:
    # floors (metric >= value) and ceilings (metric <= value). They only rule out a blind model; lines set their
    # real bars in params.yaml. The `ok_*` ones apply to lines with an OK class (the OK/NG inspection view).
    gate_floors: Mapping[str, float]
    gate_ceilings: Mapping[str, float]
    gate_ok_floors: Mapping[str, float]
    gate_ok_ceilings: Mapping[str, float]

    def model_config(self, params: Any, num_classes: int, in_channels: int) -> dict[str, Any]: ...

    def build_model(self, model_config: Mapping[str, Any]) -> Any: ...

    def training_task(
        self, classes: Sequence[str], ok_class: str | None, spec: Any, detect_spec: Any, optim: Mapping[str, Any]
    ) -> Any: ...

    def postprocess(
        self, raw: Any, original_sizes: Sequence[tuple[int, int]], spec: Any, detect_spec: Any = None
    ) -> Any: ...


_NONE: Mapping[str, float] = types.MappingProxyType({})


class _ModelHooks:
    """Lazy model/training hooks shared by the kinds; `_task` names the class in crux.training.tasks."""

    _task: str
    # A kind without floors publishes nothing until params.yaml `gate.min.<kind>` names one (crux.publish).
    gate_floors: Mapping[str, float] = _NONE
    gate_ceilings: Mapping[str, float] = _NONE
    gate_ok_floors: Mapping[str, float] = _NONE
    gate_ok_ceilings: Mapping[str, float] = _NONE

    def model_config(self, params: Any, num_classes: int, in_channels: int) -> dict[str, Any]:
        """Model config dict (stored in the model bundle) from params `train.model` (`ModelParams`)."""
        return self._task_class().model_config(params, num_classes, in_channels)

    def build_model(self, model_config: Mapping[str, Any]) -> Any:
        """A torch nn.Module from a model config dict (the bundle's `model_config`)."""
        return self._task_class().build_model(model_config)

    def _task_class(self) -> Any:
        from crux.training import tasks

        return getattr(tasks, self._task)


def _header(spec: ProjectSpec) -> str:
    # Instructions live in the project's expert_instruction too; the header keeps them in view.
    return f"  <Header value={quoteattr(spec.title)}/>\n"


class ClassifyKind(_ModelHooks):
    """Whole-image inspection: OK plus defect types as single-choice Choices."""

    name = "classify"
    control_name = "choice"
    result_type = "choices"
    monitor = "macro_f1"
    _task = "ClassifyTask"
    # A constant or random classifier scores macro-F1 <= 1/classes (0.17 on 6 classes), even when one class
    # fills 80% of a line; one that passes everything as OK has NG recall 0, one that rejects everything 100%
    # false rejects.
    gate_floors = types.MappingProxyType({"macro_f1": 0.5})
    gate_ok_floors = types.MappingProxyType({"inspection.ng_recall": 0.8})
    gate_ok_ceilings = types.MappingProxyType({"inspection.false_reject_rate": 0.2})

    def training_task(
        self, classes: Sequence[str], ok_class: str | None, spec: Any, detect_spec: Any, optim: Mapping[str, Any]
    ) -> Any:
        return self._task_class()(classes, ok_class, spec, float(optim.get("label_smoothing", 0.0)))

    def postprocess(
        self, raw: Any, original_sizes: Sequence[tuple[int, int]], spec: Any, detect_spec: Any = None
    ) -> Any:
        """Raw logits (B, C) → class probabilities (B, C) (numpy only)."""
        from crux.postprocess import postprocess_classify

        return postprocess_classify(raw)

    def label_config(self, spec: ProjectSpec) -> str:
        choices = "\n".join(
            f"    <Choice value={quoteattr(cls)} background={quoteattr(colour)}/>"
            for cls, colour in spec.classes.items()
        )
        return (
            "<View>\n"
            + _header(spec)
            + f'  <Image name="{IMAGE_KEY}" value="${IMAGE_KEY}" zoom="true"/>\n'
            + f'  <Choices name="{self.control_name}" toName="{IMAGE_KEY}" choice="single-radio"'
            + ' required="true" showInline="true">\n'
            + choices
            + "\n  </Choices>\n</View>"
        )

    def to_results(
        self, labels: Sequence[Label], width: int, height: int, score: float | None = None
    ) -> list[dict[str, Any]]:
        if len(labels) != 1:
            raise LabelError(f"a classification item needs exactly one class, got {len(labels)}")
        result: dict[str, Any] = {
            "from_name": self.control_name,
            "to_name": IMAGE_KEY,
            "type": self.result_type,
            "value": {"choices": [labels[0].cls]},
        }
        if score is not None:
            result["score"] = score
        return [result]

    def from_results(self, results: Iterable[Mapping[str, Any]], width: int, height: int) -> list[Label]:
        labels = []
        for result in results:
            if result.get("type") != self.result_type:
                continue
            labels.extend(Label(cls=c) for c in result.get("value", {}).get("choices", []))
        return labels


class DetectKind(_ModelHooks):
    """Defect localisation: one RectangleLabels box per defect."""

    name = "detect"
    control_name = "label"
    result_type = "rectanglelabels"
    monitor = "map50"
    _task = "DetectTask"
    # The blind detector of issue 13 had mAP@0.5 = 0.00001; a from-scratch NEU model reaches 0.5 in minutes.
    gate_floors = types.MappingProxyType({"map50": 0.25})

    def training_task(
        self, classes: Sequence[str], ok_class: str | None, spec: Any, detect_spec: Any, optim: Mapping[str, Any]
    ) -> Any:
        return self._task_class()(classes, ok_class, spec, detect_spec)

    def postprocess(
        self, raw: Any, original_sizes: Sequence[tuple[int, int]], spec: Any, detect_spec: Any = None
    ) -> Any:
        """Raw detector output (B, N, 5 + C) → one `Detections` per image, in original pixels (numpy only)."""
        from crux.postprocess import postprocess_detect_batch

        return postprocess_detect_batch(raw, original_sizes, spec, detect_spec)

    def label_config(self, spec: ProjectSpec) -> str:
        labels = "\n".join(
            f"    <Label value={quoteattr(cls)} background={quoteattr(colour)}/>"
            for cls, colour in spec.classes.items()
        )
        return (
            "<View>\n"
            + _header(spec)
            + f'  <Image name="{IMAGE_KEY}" value="${IMAGE_KEY}" zoom="true" zoomControl="true"/>\n'
            + f'  <RectangleLabels name="{self.control_name}" toName="{IMAGE_KEY}" strokeWidth="2" canRotate="false">\n'
            + labels
            + "\n  </RectangleLabels>\n</View>"
        )

    def to_results(
        self, labels: Sequence[Label], width: int, height: int, score: float | None = None
    ) -> list[dict[str, Any]]:
        results = []
        for i, label in enumerate(labels):
            if label.box is None:
                raise LabelError(f"detection label {label.cls!r} has no box")
            value = pixel_to_ls_percent(label.box, width, height)
            value.update(rotation=0, rectanglelabels=[label.cls])
            result: dict[str, Any] = {
                # Stable region ids keep re-imports and diffs deterministic.
                "id": f"r{i}",
                "from_name": self.control_name,
                "to_name": IMAGE_KEY,
                "type": self.result_type,
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": value,
            }
            if score is not None:
                result["score"] = score
            results.append(result)
        return results

    def from_results(self, results: Iterable[Mapping[str, Any]], width: int, height: int) -> list[Label]:
        labels = []
        for result in results:
            if result.get("type") != self.result_type:
                continue
            value = result.get("value", {})
            w = int(result.get("original_width") or width)
            h = int(result.get("original_height") or height)
            box = ls_percent_to_pixel(value, w, h)
            for cls in value.get("rectanglelabels", []):
                labels.append(Label(cls=cls, box=box))
        return labels


KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (ClassifyKind(), DetectKind())}


def get_kind(name: str) -> TaskKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown task kind {name!r}; known: {', '.join(sorted(KINDS))}") from None

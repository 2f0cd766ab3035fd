"""Task kinds in one registry.

Everything that differs between classification and detection (the Label Studio label config, how
labels become Label Studio results and back, the model, training loss, metrics and post-processing) is
found here by kind name instead of if/elif branches spread over the code base.

Model, training and post-processing hooks import lazily: this module must stay importable without torch
(CLI --help, the edge runtime, the ingest API); masks are numpy arrays, numpy and Pillow are imported lazily too.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from xml.sax.saxutils import quoteattr

from crux.errors import CruxError
from crux.geometry import PixelBox, ls_percent_to_pixel, pixel_to_ls_percent

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from crux.config import ProjectSpec

IMAGE_KEY = "image"  # task.data key holding the image URL, and the <Image name=…> it binds to


@dataclass(frozen=True)
class Label:
    """One label of one image: a class, with a pixel box for detection, and for a segmentation region its
    mask (bool H x W at the image's original resolution) and the box around it. A segment label with neither
    mask nor box is the image's verdict (the whole-image class)."""

    cls: str
    box: PixelBox | None = None
    mask: NDArray[Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class DatasetLabels:
    """What a dataset version keeps of an image's labels (`TaskKind.dataset_labels`)."""

    labels: tuple[Label, ...]  # the manifest's labels: classes, boxes, or segmentation regions
    class_mask: NDArray[Any] | None = None  # segment: uint8 H x W, 0 = background, 1 + class index
    verdict: str | None = None  # segment: the image's class


class LabelError(CruxError, ValueError):
    """A Label Studio result or a source label cannot be interpreted."""


class TaskKind(Protocol):
    name: str
    control_name: str
    result_type: str
    # What a label carries besides its class: "image" (nothing: whole-image class), "box" or "mask".
    geometry: str

    def label_config(self, spec: ProjectSpec) -> str: ...

    def to_results(
        self, labels: Sequence[Label], width: int, height: int, score: float | None = None
    ) -> list[dict[str, Any]]: ...

    def from_results(self, results: Iterable[Mapping[str, Any]], width: int, height: int) -> list[Label]: ...

    def dataset_labels(
        self, labels: Sequence[Label], width: int, height: int, classes: Sequence[str], ok_class: str | None
    ) -> DatasetLabels: ...

    # ModelCheckpoint / comparison metric (higher is better), a key of the kind's metrics dict.
    monitor: str

    def head_classes(self, classes: Sequence[str], ok_class: str | None) -> list[str]: ...

    def decode_spec(self, classes: Sequence[str], ok_class: str | None) -> dict[str, Any] | None: ...

    # Default absolute limits of the publish gate (crux.ship.gate), dotted keys of the kind's test metrics, checked
    # for every candidate (the first one included) before params.yaml `gate.min` / `gate.max` / `gate.lines`:
    # floors (metric >= value) and ceilings (metric <= value). They only rule out a blind model; lines set their
    # real bars in params.yaml. The `ok_*` ones apply to lines with an OK class (the OK/NG inspection view).
    gate_floors: Mapping[str, float]
    gate_ceilings: Mapping[str, float]
    gate_ok_floors: Mapping[str, float]
    gate_ok_ceilings: Mapping[str, float]


_NONE: Mapping[str, float] = types.MappingProxyType({})


class _KindDefaults:
    """Defaults shared by the kinds (the network and the training task are found by kind name in
    `crux.train.models.MODELS` and `crux.train.tasks.TASKS`)."""

    # A kind without floors publishes nothing until params.yaml `gate.min.<kind>` names one (crux.ship.gate).
    gate_floors: Mapping[str, float] = _NONE
    gate_ceilings: Mapping[str, float] = _NONE
    gate_ok_floors: Mapping[str, float] = _NONE
    gate_ok_ceilings: Mapping[str, float] = _NONE

    def head_classes(self, classes: Sequence[str], ok_class: str | None) -> list[str]:
        """The classes the model's head predicts (its class count); the segmenter leaves out the OK class."""
        return list(classes)

    def decode_spec(self, classes: Sequence[str], ok_class: str | None) -> dict[str, Any] | None:
        """Decoding parameters stored in the bundle under the kind's name (the detector's come from params)."""
        return None


class _PlainLabels:
    """Kinds whose labels go into the manifest as they are (no mask, no verdict)."""

    def dataset_labels(
        self, labels: Sequence[Label], width: int, height: int, classes: Sequence[str], ok_class: str | None
    ) -> DatasetLabels:
        return DatasetLabels(tuple(labels))


# Laptop-sized screens (1366x768): the labels come first, above the image, and the image is fitted into a box
# no taller than the window minus Label Studio's own bars and the rows of label buttons above it (a square NEU
# tile would otherwise be upscaled to 750 px and push the buttons below the fold). Checked with a browser
# screenshot at 1366x768 (tests/integration/test_team_layout.py).
IMAGE_CHROME_PX = 210  # Label Studio's top bar, title header and bottom submit bar
LABEL_ROW_PX = 50  # one row of label buttons


def _image_tag(label_rows: int, tools: bool = True) -> str:
    controls = ' zoomControl="true"' if tools else ""
    box = f"calc(100vh - {IMAGE_CHROME_PX + LABEL_ROW_PX * label_rows}px)"
    # defaultZoom="fit" fits the image, portrait ones too, into a square of maxWidth.
    return (
        f'  <Image name="{IMAGE_KEY}" value="${IMAGE_KEY}" zoom="true"{controls} maxWidth="{box}" defaultZoom="fit"'
        ' horizontalAlignment="left"/>\n'
    )


def _header(spec: ProjectSpec) -> str:
    # Instructions live in the project's expert_instruction too; the header keeps them in view.
    return f"  <Header value={quoteattr(spec.title)}/>\n"


class ClassifyKind(_PlainLabels, _KindDefaults):
    """Whole-image inspection: OK plus defect types as single-choice Choices."""

    name = "classify"
    control_name = "choice"
    result_type = "choices"
    geometry = "image"
    monitor = "macro_f1"
    # A constant or random classifier scores macro-F1 <= 1/classes (0.17 on 6 classes), even when one class
    # fills 80% of a line; one that passes everything as OK has NG recall 0, one that rejects everything 100%
    # false rejects.
    gate_floors: Mapping[str, float] = types.MappingProxyType({"macro_f1": 0.5})
    gate_ok_floors: Mapping[str, float] = types.MappingProxyType({"inspection.ng_recall": 0.8})
    gate_ok_ceilings: Mapping[str, float] = types.MappingProxyType({"inspection.false_reject_rate": 0.2})

    def label_config(self, spec: ProjectSpec) -> str:
        choices = "\n".join(
            f"    <Choice value={quoteattr(cls)} background={quoteattr(colour)}/>"
            for cls, colour in spec.classes.items()
        )
        return (
            "<View>\n"
            + _header(spec)
            + f'  <Choices name="{self.control_name}" toName="{IMAGE_KEY}" choice="single-radio"'
            + ' required="true" showInline="true">\n'
            + choices
            + "\n  </Choices>\n"
            + _image_tag(1, tools=False)
            + "</View>"
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
        labels: list[Label] = []
        for result in results:
            if result.get("type") != self.result_type:
                continue
            labels.extend(Label(cls=c) for c in result.get("value", {}).get("choices", []))
        return labels


class DetectKind(_PlainLabels, _KindDefaults):
    """Defect localisation: one RectangleLabels box per defect."""

    name = "detect"
    control_name = "label"
    result_type = "rectanglelabels"
    geometry = "box"
    monitor = "map50"
    # The blind detector of issue 13 had mAP@0.5 = 0.00001; a from-scratch NEU model reaches 0.5 in minutes.
    gate_floors: Mapping[str, float] = types.MappingProxyType({"map50": 0.25})

    def label_config(self, spec: ProjectSpec) -> str:
        labels = "\n".join(
            f"    <Label value={quoteattr(cls)} background={quoteattr(colour)}/>"
            for cls, colour in spec.classes.items()
        )
        return (
            "<View>\n"
            + _header(spec)
            + f'  <RectangleLabels name="{self.control_name}" toName="{IMAGE_KEY}" strokeWidth="2" canRotate="false">\n'
            + labels
            + "\n  </RectangleLabels>\n"
            + _image_tag(1)
            + "</View>"
        )

    def to_results(
        self, labels: Sequence[Label], width: int, height: int, score: float | None = None
    ) -> list[dict[str, Any]]:
        results = []
        for i, label in enumerate(labels):
            if label.box is None:
                raise LabelError(f"detection label {label.cls!r} has no box")
            value: dict[str, Any] = dict(pixel_to_ls_percent(label.box, width, height))
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
        labels: list[Label] = []
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


class SegmentKind(_KindDefaults):
    """Defect segmentation: annotators paint (BrushLabels) or outline (PolygonLabels) each defect; an optional
    whole-image verdict (Choices over all classes) when the project declares an OK class.

    The image's class (its verdict): the Choices value when given; else the defect class with the most mask
    pixels; else the OK class (no region = OK). Brush masks go through Label Studio's own converter
    (`label_studio_sdk.converter.brush`); polygons are rasterised on the pixel centres they enclose.
    """

    name = "segment"
    control_name = "mask"  # <BrushLabels>
    polygon_name = "polygon"  # <PolygonLabels>
    verdict_name = "verdict"  # <Choices>, only with an ok_class
    result_type = "brushlabels"
    polygon_type = "polygonlabels"
    verdict_type = "choices"
    geometry = "mask"
    monitor = "miou"
    # A blind segmenter paints nothing (mIoU 0) or flags every part: both are refused before any line's own bars.
    gate_floors: Mapping[str, float] = types.MappingProxyType({"miou": 0.2})
    gate_ok_floors: Mapping[str, float] = types.MappingProxyType({"inspection.ng_recall": 0.8})
    gate_ok_ceilings: Mapping[str, float] = types.MappingProxyType({"inspection.false_reject_rate": 0.2})
    # A brush pixel counts when its alpha is at least this (Label Studio paints 255; the SDK thresholds at 128).
    alpha_threshold = 128

    def head_classes(self, classes: Sequence[str], ok_class: str | None) -> list[str]:
        # The segmenter's channels are background + the defect classes: OK is "no defect pixel".
        return self.defect_classes(classes, ok_class)

    def decode_spec(self, classes: Sequence[str], ok_class: str | None) -> dict[str, Any] | None:
        from crux.postprocess import SegmentSpec

        return SegmentSpec(tuple(self.head_classes(classes, ok_class))).to_dict()

    @staticmethod
    def defect_classes(classes: Iterable[str], ok_class: str | None) -> list[str]:
        return [c for c in classes if c != ok_class]

    def label_config(self, spec: ProjectSpec) -> str:
        defects = [(c, colour) for c, colour in spec.classes.items() if c != spec.ok_class]
        if not defects:
            raise LabelError(f"segment project {spec.title!r} needs at least one defect class besides {spec.ok_class}")
        labels = "\n".join(f"    <Label value={quoteattr(c)} background={quoteattr(colour)}/>" for c, colour in defects)
        config = (
            "<View>\n"
            + _header(spec)
            + f'  <BrushLabels name="{self.control_name}" toName="{IMAGE_KEY}">\n'
            + labels
            + "\n  </BrushLabels>\n"
            + f'  <PolygonLabels name="{self.polygon_name}" toName="{IMAGE_KEY}" strokeWidth="2">\n'
            + labels
            + "\n  </PolygonLabels>\n"
        )
        if spec.ok_class is not None:
            choices = "\n".join(
                f"    <Choice value={quoteattr(c)} background={quoteattr(colour)}/>"
                for c, colour in spec.classes.items()
            )
            config += (
                f'  <Choices name="{self.verdict_name}" toName="{IMAGE_KEY}" choice="single-radio" showInline="true">\n'
                + choices
                + "\n  </Choices>\n"
            )
        return config + _image_tag(2 if spec.ok_class is None else 3) + "</View>"

    def to_results(
        self, labels: Sequence[Label], width: int, height: int, score: float | None = None
    ) -> list[dict[str, Any]]:
        """Regions (labels with a mask) → brush results through the SDK converter; a label with neither mask nor
        box → the verdict (Choices; only for projects with an ok_class)."""
        import numpy as np
        from label_studio_sdk.converter.brush import mask2rle

        results: list[dict[str, Any]] = []
        for label in labels:
            if label.mask is None:
                if label.box is not None:
                    raise LabelError(f"segmentation label {label.cls!r} has a box but no mask")
                result: dict[str, Any] = {
                    "from_name": self.verdict_name,
                    "to_name": IMAGE_KEY,
                    "type": self.verdict_type,
                    "value": {"choices": [label.cls]},
                }
            else:
                if label.mask.shape != (height, width):
                    raise LabelError(
                        f"mask of {label.cls!r} is {label.mask.shape[1]}x{label.mask.shape[0]} px, "
                        f"the image {width}x{height}"
                    )
                rle = mask2rle(np.where(label.mask, 255, 0).astype(np.uint8))  # type: ignore[no-untyped-call]
                result = {
                    # Stable region ids keep re-imports and diffs deterministic.
                    "id": f"r{sum('id' in r for r in results)}",
                    "from_name": self.control_name,
                    "to_name": IMAGE_KEY,
                    "type": self.result_type,
                    "original_width": width,
                    "original_height": height,
                    "image_rotation": 0,
                    "value": {"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [label.cls]},
                }
            if score is not None:
                result["score"] = score
            results.append(result)
        return results

    def from_results(self, results: Iterable[Mapping[str, Any]], width: int, height: int) -> list[Label]:
        """Brush and polygon results → regions (mask + box), ordered by result id (then position) so that the
        painting order is deterministic; Choices → the verdict label. Empty regions are dropped."""
        from crux import masks

        regions: list[tuple[str, int, Label]] = []
        verdicts: list[Label] = []
        for position, result in enumerate(results):
            kind = result.get("type")
            value = result.get("value", {})
            w = int(result.get("original_width") or width)
            h = int(result.get("original_height") or height)
            if kind == self.result_type:
                region = self._decode_brush(value, w, h)
                classes = value.get(self.result_type, [])
            elif kind == self.polygon_type:
                points = [(float(x) * w / 100.0, float(y) * h / 100.0) for x, y in value.get("points", [])]
                region = masks.rasterize_polygon(points, w, h)
                classes = value.get(self.polygon_type, [])
            elif kind == self.verdict_type:
                verdicts.extend(Label(cls=c) for c in value.get("choices", []))
                continue
            else:
                continue
            box = masks.bbox(region)
            if box is None:
                continue
            for cls in classes:
                regions.append((str(result.get("id") or ""), position, Label(cls=cls, box=PixelBox(*box), mask=region)))
        regions.sort(key=lambda r: (r[0], r[1]))
        return [label for _, _, label in regions] + verdicts

    def _decode_brush(self, value: Mapping[str, Any], width: int, height: int) -> NDArray[Any]:
        from label_studio_sdk.converter.brush import decode_rle

        if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
            raise LabelError(f"brush result without an RLE (format {value.get('format')!r})")
        flat = decode_rle(value["rle"])
        if flat.size != width * height * 4:
            raise LabelError(f"brush RLE holds {flat.size} values, not {width}x{height}x4")
        alpha: NDArray[Any] = flat.reshape(height, width, 4)[:, :, 3]
        return alpha >= self.alpha_threshold

    def dataset_labels(
        self, labels: Sequence[Label], width: int, height: int, classes: Sequence[str], ok_class: str | None
    ) -> DatasetLabels:
        """Regions painted into one class mask (in class order, then as given: later wins on overlap) and the
        verdict. Raises LabelError for a region of the wrong size or of the OK class."""
        from crux import masks

        index = {c: i for i, c in enumerate(classes)}
        regions = [label for label in labels if label.mask is not None]
        for label in regions:
            if label.cls == ok_class:
                raise LabelError(f"the OK class {ok_class!r} marks no pixels; a region of it is not allowed")
            if label.cls not in index:
                raise LabelError(f"unknown class {label.cls!r}")
            assert label.mask is not None
            if label.mask.shape != (height, width):
                raise LabelError(
                    f"a {label.cls!r} region is {label.mask.shape[1]}x{label.mask.shape[0]} px, the image "
                    f"{width}x{height}"
                )
        ordered = sorted(regions, key=lambda lb: index[lb.cls])  # stable: keeps from_results' order per class
        class_mask = masks.paint(((index[lb.cls], lb.mask) for lb in ordered), width, height)  # type: ignore[misc]
        return DatasetLabels(tuple(regions), class_mask, self.verdict(labels, class_mask, classes, ok_class))

    @staticmethod
    def verdict(
        labels: Sequence[Label], class_mask: NDArray[Any], classes: Sequence[str], ok_class: str | None
    ) -> str | None:
        """The Choices value; else the defect class with the most pixels (ties: the earlier class); else ok_class."""
        from crux import masks

        chosen = [lb.cls for lb in labels if lb.mask is None and lb.box is None]
        if chosen:
            return chosen[-1]
        pixels = masks.class_pixels(class_mask, len(classes))
        best = max(range(len(classes)), key=lambda i: (pixels[i], -i), default=None)
        return classes[best] if best is not None and pixels[best] > 0 else ok_class

    def regions_from_mask(self, class_mask: NDArray[Any], classes: Sequence[str]) -> list[Label]:
        """A class mask → one region label per 8-connected part of each class (class order, then row-major)."""
        from crux import masks

        labels = []
        for i, cls in enumerate(classes):
            present = class_mask == i + 1
            if not present.any():
                continue
            for part in masks.components(present):
                box = masks.bbox(part)
                assert box is not None
                labels.append(Label(cls=cls, box=PixelBox(*box), mask=part))
        return labels


class AnomalyKind(ClassifyKind):
    """A line before its first defects: annotators confirm OK / NG (Choices, as classify); the model is the segment
    kind's network trained on the OK items alone to find synthetic anomalies (crux.train.anomaly_synthesis).
    Its one output channel is every non-OK class at once, named by the first of them (an OK/NG line: "NG"), so
    predictions decode, export and reach the edge exactly as a one-defect-class segmenter's."""

    name = "anomaly"
    monitor = "auroc"
    # A blind anomaly model ranks NG parts like OK ones (AUROC 0.5). Without labelled NG items AUROC and NG recall
    # cannot be measured: only the false-reject ceiling then applies (crux.ship.gate states which).
    gate_floors: Mapping[str, float] = types.MappingProxyType({"auroc": 0.7})
    gate_ceilings: Mapping[str, float] = _NONE
    gate_ok_floors: Mapping[str, float] = types.MappingProxyType({"inspection.ng_recall": 0.5})
    gate_ok_ceilings: Mapping[str, float] = types.MappingProxyType({"inspection.false_reject_rate": 0.2})
    # Metrics that exist only when the split has labelled NG items: not applicable (stated) in the gate otherwise.
    ng_metrics = (
        "auroc",
        "accuracy",
        "pixel_auroc",
        "region_overlap",
        "inspection.ng_recall",
        "inspection.ng_recall_at_max_false_reject",
    )

    def head_classes(self, classes: Sequence[str], ok_class: str | None) -> list[str]:
        if ok_class is None or ok_class not in classes or len(classes) < 2:
            raise LabelError(f"an anomaly line needs an OK class and an NG class, got classes {list(classes)}")
        return [next(c for c in classes if c != ok_class)]

    def decode_spec(self, classes: Sequence[str], ok_class: str | None) -> dict[str, Any] | None:
        from crux.postprocess import SegmentSpec

        return SegmentSpec(tuple(self.head_classes(classes, ok_class))).to_dict()


KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (ClassifyKind(), DetectKind(), SegmentKind(), AnomalyKind())}


def get_kind(name: str) -> TaskKind:
    try:
        return KINDS[name]
    except KeyError:
        raise LabelError(f"unknown task kind {name!r}; known: {', '.join(sorted(KINDS))}") from None

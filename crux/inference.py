"""ONNX inference for `crux predict`, the edge runtime and ONNX evaluation — one code path, no torch.

image (uint8 array) → `crux.postprocess.preprocess` → ONNX Runtime → `postprocess_classify` / `postprocess_detect`
→ `Result` → the stable `crux predict --json` record (`contract_record`):

  {"image": <path as given>, "label": <class>, "score": p, "scores": {<class>: p},
   "boxes": [{"label": <class>, "score": p, "xyxy": [x1, y1, x2, y2]}], "model_version": int | null}

- Boxes are in pixels of the original image, rounded to 2 decimals; scores rounded to 6.
- Classifier: label = arg-max class, score = its probability, scores = all class probabilities, boxes = [].
- Detector: boxes = the boxes scoring >= the model's box threshold (card `postprocess.box_threshold`), highest
  first; label = class of the highest-scoring box, or "OK" when there is none; scores = per class, the highest
  score among all decoded boxes (0 when none); score = the top box's score, or 1 - max(scores) for "OK".
- Segmenter: label = the strongest region's class when the NG score (the peak of the smoothed defect map,
  `crux.postprocess.postprocess_segment`) reaches the card's `postprocess.ng_threshold`, else the OK class ("OK"
  when the line has none); score = the NG score, or 1 - it for OK; scores = the OK class's 1 - NG score and each
  defect class's peak probability; boxes = []; and one more key, "regions": every connected region of the class map
  (pixels whose defect probability reaches `postprocess.segment.pixel_threshold`, at least `min_region_px`),
  largest first, as {"label", "score" (the region's highest defect probability), "area" (pixels), "xyxy" (x2, y2
  exclusive), "mask": {"size": [H, W], "counts": COCO compressed RLE}} — `pycocotools.mask.decode(mask)` gives the
  H x W region mask.
- Anomaly model (trained on OK parts only): decoded as a segmenter with one defect class, the line's NG class —
  label = that class (e.g. "NG") or the OK class, scores[NG class] = the anomaly score (the smoothed anomaly map's
  peak) and "regions" = the anomalous regions (pixels at or above the calibrated threshold), in the same format.
- model_version = the published version (integer), or null for a model folder that was never published.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crux.errors import CruxError
from crux.postprocess import (
    DetectSpec,
    InputSpec,
    SegmentSpec,
    connected_regions,
    load_image,
    postprocess_classify,
    postprocess_detect,
    postprocess_segment,
    preprocess,
    rle_encode,
)


class ModelError(CruxError, ValueError):
    """A model folder whose card and network do not agree (the message names the folder or the mismatch)."""


MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
NO_DEFECT_LABEL = "OK"  # the detector's label when it finds no box (the contract)
CONTRACT_KEYS = ("image", "label", "score", "scores", "boxes", "model_version")
# Segmentation models add "regions" (the contract's one extra field; the keys above keep their meaning).
SEGMENT_KEYS = (*CONTRACT_KEYS, "regions")


@dataclass(frozen=True)
class Box:
    label: str
    score: float
    xyxy: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": round(self.score, 6), "xyxy": [round(v, 2) for v in self.xyxy]}


@dataclass(frozen=True)
class MaskRegion:
    """One connected defect region of a segmentation model, in pixels of the original image."""

    label: str
    score: float  # the highest defect probability inside the region
    area: int
    xyxy: tuple[int, int, int, int]  # x2, y2 exclusive
    size: tuple[int, int]  # (height, width) of the image, as COCO RLE states it
    rle: str  # COCO compressed RLE of the region's mask (pycocotools.mask.decode reads it)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "score": round(self.score, 6),
            "area": self.area,
            "xyxy": list(self.xyxy),
            "mask": {"size": list(self.size), "counts": self.rle},
        }


@dataclass(frozen=True)
class Result:
    """One image's prediction, before any OK/NG policy."""

    label: str
    score: float
    scores: dict[str, float]
    boxes: list[Box] = field(default_factory=list)
    # Classifier: probabilities in class order; detector: the decoded scores of all boxes (for uncertainty);
    # segmenter: [NG score].
    probs: np.ndarray | None = None
    # Segmenter only: the defect regions and the class-index map (0 = background) at the original size.
    regions: list[MaskRegion] | None = None
    class_map: np.ndarray | None = None
    # Segmenter / anomaly model: 1 - p(background) per pixel at the original size (the anomaly map).
    defect_prob: np.ndarray | None = None


def ng_threshold_of(card: Mapping[str, Any]) -> float:
    return float((card.get("postprocess") or {}).get("ng_threshold", 0.5))


def box_threshold_of(card: Mapping[str, Any]) -> float:
    return float((card.get("postprocess") or {}).get("box_threshold", 0.3))


class OnnxModel:
    """An ONNX Runtime session plus the model card that says how to feed it and read its output."""

    def __init__(
        self,
        model_path: Path,
        card: Mapping[str, Any],
        version: int | None = None,
        threads: int = 1,
        box_threshold: float | None = None,
    ) -> None:
        import onnxruntime as ort  # ~0.3 s: only when a model is actually loaded

        opts = ort.SessionOptions()
        # One frame at a time on a small box: intra-op threads = the cores we may use, no inter-op parallelism.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.path = Path(model_path)
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.card = dict(card)
        self.version = version
        self.kind: str = card["kind"]
        self.classes: list[str] = list(card["classes"])
        self.ok_class: str | None = card.get("ok_class")
        self.spec = InputSpec.from_dict(card["input"])
        detect = (card.get("postprocess") or {}).get("detect")
        self.detect: DetectSpec | None = DetectSpec.from_dict(detect) if detect else None
        if self.kind == "detect" and self.detect is None:
            raise ModelError(f"{model_path}: detector card has no postprocess.detect parameters")
        segment = (card.get("postprocess") or {}).get("segment")
        self.segment: SegmentSpec | None = SegmentSpec.from_dict(segment) if segment else None
        if self.kind in ("segment", "anomaly") and self.segment is None:
            raise ModelError(f"{model_path}: segmentation card has no postprocess.segment parameters")
        self.box_threshold = box_threshold_of(card) if box_threshold is None else float(box_threshold)
        self.ng_threshold = ng_threshold_of(card)

    @classmethod
    def from_dir(
        cls, folder: Path, version: int | None = None, threads: int = 1, model_file: str | None = None
    ) -> OnnxModel:
        folder = Path(folder)
        card = json.loads((folder / CARD_FILE).read_text())
        name = model_file or (card.get("onnx") or {}).get("file") or MODEL_FILE
        return cls(folder / name, card, version=version, threads=threads)

    def warm_up(self) -> None:
        """One inference on zeros: proves the session runs and the output matches the card before a swap."""
        s = self.spec
        raw = self.run_raw(np.zeros((1, s.channels, s.image_size, s.image_size), np.float32))
        self._check_raw(raw)

    def _check_raw(self, raw: np.ndarray) -> None:
        if self.kind == "classify" and raw.shape[1:] != (len(self.classes),):
            raise ModelError(f"model output {raw.shape} does not match {len(self.classes)} classes of its card")
        if self.kind == "detect" and raw.shape[2] != 5 + len(self.classes):
            raise ModelError(f"model output {raw.shape} does not match {len(self.classes)} classes of its card")
        if self.segment is not None and raw.shape[1] != 1 + len(self.segment.defect_classes):
            raise ModelError(f"model output {raw.shape} does not match the card's background + defect classes")

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """Raw model output for a preprocessed float32 batch (B, C, S, S)."""
        return np.asarray(self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0])

    def results_from_raw(self, raw: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[Result]:
        if self.kind == "classify":
            return [self._classify_result(p) for p in postprocess_classify(raw)]
        if self.segment is not None:  # a segmenter, or an anomaly model (a one-class segmenter)
            return [self._segment_result(r, size) for r, size in zip(raw, sizes, strict=True)]
        assert self.detect is not None
        return [self._detect_result(r, size) for r, size in zip(raw, sizes, strict=True)]

    def _classify_result(self, probs: np.ndarray) -> Result:
        top = int(np.argmax(probs))
        scores = {c: float(p) for c, p in zip(self.classes, probs, strict=True)}
        return Result(self.classes[top], float(probs[top]), scores, [], probs)

    def _detect_result(self, raw: np.ndarray, size: tuple[int, int]) -> Result:
        assert self.detect is not None
        dets = postprocess_detect(raw, size, self.spec, self.detect)
        scores = dict.fromkeys(self.classes, 0.0)
        for s, c in zip(dets.scores, dets.class_ids, strict=True):
            name = self.classes[int(c)]
            scores[name] = max(scores[name], float(s))
        boxes = [
            Box(self.classes[int(c)], float(s), tuple(float(v) for v in b))  # type: ignore[arg-type]
            for b, s, c in zip(dets.boxes, dets.scores, dets.class_ids, strict=True)
            if s >= self.box_threshold
        ]  # postprocess_detect returns them highest score first
        if boxes:
            return Result(boxes[0].label, boxes[0].score, scores, boxes, dets.scores)
        return Result(NO_DEFECT_LABEL, 1.0 - max(scores.values(), default=0.0), scores, [], dets.scores)

    def _segment_result(self, raw: np.ndarray, size: tuple[int, int]) -> Result:
        """The image verdict from the defect map: NG when its NG score reaches the card's threshold, labelled with
        the strongest region's class; scores = the OK class's 1 - NG score and each defect class's peak."""
        assert self.segment is not None
        maps = postprocess_segment(raw, size, self.segment)
        defects = self.segment.defect_classes
        ok = self.ok_class or NO_DEFECT_LABEL
        scores = {ok: 1.0 - maps.ng_score, **{c: float(v) for c, v in zip(defects, maps.class_scores, strict=True)}}
        regions = [
            MaskRegion(
                label=defects[r.class_index],
                score=float(maps.defect_prob[r.mask].max()),
                area=r.area,
                xyxy=r.box,
                size=(int(maps.class_map.shape[0]), int(maps.class_map.shape[1])),
                rle=rle_encode(r.mask),
            )
            for r in connected_regions(maps.class_map, self.segment.min_region_px)
        ]
        if maps.ng_score >= self.ng_threshold:
            label, score = defects[maps.strongest], maps.ng_score
        else:
            label, score = ok, 1.0 - maps.ng_score
        probs = np.asarray([maps.ng_score], np.float32)
        return Result(label, float(score), scores, [], probs, regions, maps.class_map, maps.defect_prob)

    def predict_array(self, image: np.ndarray) -> Result:
        x, size = preprocess(image, self.spec)
        return self.results_from_raw(self.run_raw(x[None]), [size])[0]

    def predict_bytes(self, data: bytes) -> Result:
        return self.predict_array(load_image(io.BytesIO(data), self.spec.channels))  # type: ignore[arg-type]

    def predict_file(self, path: Path) -> Result:
        return self.predict_array(load_image(path, self.spec.channels))


def contract_record(image: str, result: Result, model_version: int | None) -> dict[str, Any]:
    """The stable `crux predict --json` object (keys exactly CONTRACT_KEYS; SEGMENT_KEYS for a segmenter)."""
    record: dict[str, Any] = {
        "image": image,
        "label": result.label,
        "score": round(result.score, 6),
        "scores": {k: round(v, 6) for k, v in result.scores.items()},
        "boxes": [b.to_dict() for b in result.boxes],
        "model_version": model_version,
    }
    if result.regions is not None:
        record["regions"] = [r.to_dict() for r in result.regions]
    return record


def predict_paths(model: OnnxModel, images: Iterable[str]) -> Iterable[dict[str, Any]]:
    """`crux predict`: one contract record per image, in the order given; an unreadable image yields an error
    record {"image", "error"} instead of stopping the run."""
    for image in images:
        try:
            result = model.predict_file(Path(image))
        except (OSError, ValueError) as exc:
            yield {"image": image, "error": f"{type(exc).__name__}: {exc}"}
            continue
        yield contract_record(image, result, model.version)


def timed_predict(model: OnnxModel, data: bytes) -> tuple[Result, float]:
    """Decode + preprocess + inference + post-processing of one encoded image; (result, milliseconds)."""
    started = time.perf_counter()
    result = model.predict_bytes(data)
    return result, (time.perf_counter() - started) * 1000.0

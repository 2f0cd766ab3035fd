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
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
from numpy.typing import NDArray

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


class ModelOutputError(ModelError):
    """The network's output for a frame cannot be trusted: non-finite values or the wrong shape. Never an OK part:
    `crux predict` reports it as an error record, the edge as an "error" verdict the line rejects."""


MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
CARD_FORMAT = "crux-model-card/1"
# Input sizes a card may ask for: below 16 px no network of crux.train.models has a feature map left; above 4096 px
# one float32 frame is already 200 MB (a card saying 200000 would have ONNX Runtime allocate until the kernel kills it).
IMAGE_SIZE_LIMITS = (16, 4096)
INPUT_CHANNELS = (1, 3)
MAX_CARD_BYTES = 16 << 20  # cards are kilobytes; more is not a card of `crux export`
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
    probs: NDArray[Any] | None = None
    # Segmenter only: the defect regions and the class-index map (0 = background) at the original size.
    regions: list[MaskRegion] | None = None
    class_map: NDArray[Any] | None = None
    # Segmenter / anomaly model: 1 - p(background) per pixel at the original size (the anomaly map).
    defect_prob: NDArray[Any] | None = None


def ng_threshold_of(card: Mapping[str, Any]) -> float:
    return float((card.get("postprocess") or {}).get("ng_threshold", 0.5))


def box_threshold_of(card: Mapping[str, Any]) -> float:
    return float((card.get("postprocess") or {}).get("box_threshold", 0.3))


# ----------------------------------------------------------------------------------------------------------------
# The model card: one schema that `crux predict`, `crux publish` and the edge all load (`crux export` writes it)


@dataclass(frozen=True)
class ModelCard:
    """A model card checked field by field: whatever passes can be fed and decoded as the edge does it."""

    kind: str
    classes: tuple[str, ...]
    ok_class: str | None
    input: InputSpec
    detect: DetectSpec | None
    segment: SegmentSpec | None
    box_threshold: float
    ng_threshold: float
    onnx_file: str
    # sha256 of every model file the card vouches for: the float32 `onnx.file`, and `quantized.file` when present.
    files: Mapping[str, str]
    # The card as read (metrics, lineage, parity, …: what publish copies and nothing here interprets).
    data: Mapping[str, Any]

    @classmethod
    def parse(cls, data: Any, where: str = CARD_FILE) -> ModelCard:
        """The card, or a ModelError naming `where` and every field that is out of range."""
        from crux.kinds import KINDS

        if not isinstance(data, Mapping):
            raise ModelError(
                f"{where}: not a model card of `crux export` (a JSON {type(data).__name__}, not an object)"
            )
        problems: list[str] = []
        if data.get("format") != CARD_FORMAT:
            problems.append(f"format {data.get('format')!r} is not {CARD_FORMAT!r}")
        kind = data.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            problems.append(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        raw_classes = data.get("classes")
        classes: tuple[str, ...] = ()
        if not isinstance(raw_classes, list) or not raw_classes:
            problems.append(f"classes {raw_classes!r} is not a non-empty list of class names")
        elif not all(isinstance(c, str) and c.strip() for c in raw_classes):
            problems.append(f"classes {raw_classes!r}: every class must be a non-empty string")
        elif len(set(raw_classes)) != len(raw_classes):
            problems.append(f"classes {raw_classes!r} name a class twice")
        else:
            classes = tuple(raw_classes)
        ok_class = data.get("ok_class")
        if ok_class is not None and (not isinstance(ok_class, str) or (classes and ok_class not in classes)):
            problems.append(f"ok_class {ok_class!r} is not one of its classes")
        spec = _input_spec(data.get("input"), problems)
        post = data.get("postprocess")
        if post is None:
            post = {}
        if not isinstance(post, Mapping):
            problems.append("postprocess is not an object")
            post = {}
        box_threshold = _probability(post, "box_threshold", 0.3, problems)
        ng_threshold = _probability(post, "ng_threshold", 0.5, problems)
        detect = _detect_spec(post.get("detect"), classes, problems) if kind == "detect" else None
        segment = _segment_spec(post.get("segment"), classes, problems) if kind in ("segment", "anomaly") else None
        files: dict[str, str] = {}
        onnx_file = _file_entry(data.get("onnx"), "onnx", files, problems)
        if data.get("quantized") is not None:
            _file_entry(data.get("quantized"), "quantized", files, problems)
        if data.get("metrics") is not None and not isinstance(data.get("metrics"), Mapping):
            problems.append("metrics is not an object")
        if problems or spec is None or onnx_file is None:
            raise ModelError(f"{where}: not a model card of `crux export`: {'; '.join(problems)}")
        return cls(
            kind=str(kind),
            classes=classes,
            ok_class=ok_class,
            input=spec,
            detect=detect,
            segment=segment,
            box_threshold=box_threshold,
            ng_threshold=ng_threshold,
            onnx_file=onnx_file,
            files=files,
            data=dict(data),
        )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_card(path: Path) -> ModelCard:
    """card.json → ModelCard; a ModelError naming the file when it is unreadable, not JSON or out of range."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise ModelError(f"{path}: {path.stat().st_size} bytes, not a model card (at most {MAX_CARD_BYTES})")
        # NaN and Infinity parse in Python but are no JSON (and cannot be signed): refuse them here.
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise ModelError(f"{path}: no model card here (a model folder holds card.json and model.onnx)") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelError(f"{path}: not a model card of `crux export` ({type(exc).__name__}: {exc})") from None
    return ModelCard.parse(data, str(path))


def model_file_in(folder: Path, card: ModelCard, name: str | None = None) -> Path:
    """The model file `name` (default the card's `onnx.file`) inside `folder`, after checking it is a plain file
    name the card vouches for, a regular file that stays inside the folder (no symlink out) and matches its sha256."""
    folder = Path(folder)
    name = name or card.onnx_file
    if not _plain_name(name):
        raise ModelError(f"{folder}: model file {name!r} is not a plain file name inside the folder")
    if name not in card.files:
        raise ModelError(f"{folder / CARD_FILE}: vouches for no model file named {name!r} ({', '.join(card.files)})")
    path = folder / name
    try:
        inside = path.resolve(strict=True).parent == folder.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ModelError(f"{path}: model file missing") from None
    if not inside or not path.is_file():
        raise ModelError(f"{path}: not a regular file inside {folder}")
    if _sha256(path) != card.files[name]:
        raise ModelError(f"{path}: does not match the sha256 in its card (damaged, truncated or replaced)")
    return path


def _sha256(path: Path) -> str:
    # Here, not crux.data.store's: this module is below the data layer (and the edge reads no datasets).
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain_name(name: Any) -> TypeGuard[str]:
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0:")
    )


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _probability(section: Mapping[str, Any], key: str, default: float, problems: list[str]) -> float:
    value = section.get(key, default)
    if value is None:
        return default
    if not _number(value) or not 0.0 <= value <= 1.0:
        problems.append(f"postprocess.{key} {value!r} is not a number in 0..1")
        return default
    return float(value)


def _input_spec(raw: Any, problems: list[str]) -> InputSpec | None:
    if not isinstance(raw, Mapping):
        problems.append(f"input {raw!r} is not an object")
        return None
    lo, hi = IMAGE_SIZE_LIMITS
    size, channels = raw.get("image_size"), raw.get("channels")
    mean, std = raw.get("mean"), raw.get("std")
    before = len(problems)
    if not _integer(size) or not lo <= size <= hi:
        problems.append(f"input.image_size {size!r} is not an integer in {lo}..{hi}")
    if not _integer(channels) or channels not in INPUT_CHANNELS:
        problems.append(f"input.channels {channels!r} is not 1 or 3")
    if not _number(mean):
        problems.append(f"input.mean {mean!r} is not a finite number")
    if not _number(std) or not std > 0:
        # std 0 divides every pixel by zero: the network sees NaN and inf, and its scores are NaN.
        problems.append(f"input.std {std!r} is not a finite number > 0")
    if len(problems) > before:
        return None
    return InputSpec(int(size), int(channels), float(mean), float(std))  # type: ignore[arg-type]


def _detect_spec(raw: Any, classes: Sequence[str], problems: list[str]) -> DetectSpec | None:
    if not isinstance(raw, Mapping):
        problems.append("postprocess.detect: a detector card needs its decoding parameters")
        return None
    try:
        spec = DetectSpec.from_dict(dict(raw))
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"postprocess.detect: {type(exc).__name__}: {exc}")
        return None
    if not spec.strides or any(s < 1 for s in spec.strides):
        problems.append(f"postprocess.detect.strides {list(spec.strides)} are not positive")
    elif classes and spec.num_classes != len(classes):
        problems.append(f"postprocess.detect.num_classes {spec.num_classes} is not the {len(classes)} classes")
    elif not (0 <= spec.score_threshold <= 1 and 0 <= spec.nms_iou <= 1) or spec.max_detections < 1:
        problems.append("postprocess.detect: score_threshold and nms_iou must be in 0..1, max_detections >= 1")
    else:
        return spec
    return None


def _segment_spec(raw: Any, classes: Sequence[str], problems: list[str]) -> SegmentSpec | None:
    if not isinstance(raw, Mapping):
        problems.append("postprocess.segment: a segmentation or anomaly card needs its decoding parameters")
        return None
    try:
        spec = SegmentSpec.from_dict(dict(raw))
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"postprocess.segment: {type(exc).__name__}: {exc}")
        return None
    if not spec.defect_classes or (classes and not set(spec.defect_classes) <= set(classes)):
        problems.append(f"postprocess.segment.defect_classes {list(spec.defect_classes)} are not among its classes")
    elif not 0 <= spec.pixel_threshold <= 1 or spec.smooth < 1 or spec.min_region_px < 0:
        problems.append("postprocess.segment: pixel_threshold must be in 0..1, smooth >= 1, min_region_px >= 0")
    else:
        return spec
    return None


def _file_entry(raw: Any, section: str, files: dict[str, str], problems: list[str]) -> str | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{section} {raw!r} is not an object with file and sha256")
        return None
    name, digest = raw.get("file"), raw.get("sha256")
    if not _plain_name(name):
        problems.append(f"{section}.file {name!r} is not a plain file name inside the model folder")
        return None
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        problems.append(f"{section}.sha256 {digest!r} is not a sha256 hex digest")
        return None
    files[name] = digest
    return str(name)


class OnnxModel:
    """An ONNX Runtime session plus the model card that says how to feed it and read its output."""

    def __init__(
        self,
        model_path: Path,
        card: Mapping[str, Any] | ModelCard,
        version: int | None = None,
        threads: int = 1,
        box_threshold: float | None = None,
    ) -> None:
        import onnxruntime as ort  # ~0.3 s: only when a model is actually loaded

        self.path = Path(model_path)
        parsed = card if isinstance(card, ModelCard) else ModelCard.parse(card, f"card of {self.path}")
        opts = ort.SessionOptions()
        # One frame at a time on a small box: intra-op threads = the cores we may use, no inter-op parallelism.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime's own exception types: garbage, empty, truncated, unsupported ops
            raise ModelError(f"{self.path}: ONNX Runtime cannot load it ({_first_line(exc)})") from None
        self.card = dict(parsed.data)
        self.model_card = parsed
        self.version = version
        self.kind: str = parsed.kind
        self.classes: list[str] = list(parsed.classes)
        self.ok_class: str | None = parsed.ok_class
        self.spec = parsed.input
        self.detect: DetectSpec | None = parsed.detect
        self.segment: SegmentSpec | None = parsed.segment
        self.box_threshold = parsed.box_threshold if box_threshold is None else float(box_threshold)
        self.ng_threshold = parsed.ng_threshold
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.path}: {len(inputs)} inputs; a crux model takes one image batch")
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        want = [None, self.spec.channels, self.spec.image_size, self.spec.image_size]
        # Symbolic dimensions (a dynamic batch) are strings or None; a fixed one must be what the card feeds.
        fixed = len(shape) == 4 and all(
            not isinstance(d, int) or w is None or d == w for d, w in zip(shape, want, strict=True)
        )
        if not fixed:
            raise ModelError(
                f"{self.path}: input shape {shape} does not take the card's (B, {want[1]}, {want[2]}, {want[3]})"
            )

    @classmethod
    def from_dir(
        cls, folder: Path, version: int | None = None, threads: int = 1, model_file: str | None = None
    ) -> OnnxModel:
        """A model folder (`crux export` output or a release): card.json checked against the schema, the model file
        a plain name inside the folder that matches the card's sha256. Opens nothing outside `folder`."""
        folder = Path(folder)
        card_path = folder / CARD_FILE
        if card_path.is_symlink() and card_path.resolve().parent != folder.resolve():
            raise ModelError(f"{card_path}: a link to a file outside {folder}; a model folder holds its own card")
        card = read_card(card_path)
        return cls(model_file_in(folder, card, model_file), card, version=version, threads=threads)

    def warm_up(self) -> None:
        """One synthetic frame through the whole path (preprocess → ONNX Runtime → checks → decoding): proves the
        session runs and its output has the card's shape and finite values before a model is swapped in or
        published."""
        self.predict_array(synthetic_image(self.spec))

    def check_raw(self, raw: NDArray[Any], batch: int) -> None:
        """ModelOutputError unless `raw` has the card's output layout for `batch` images and only finite values."""
        n = len(self.classes)
        if self.kind == "classify":
            want: tuple[int | None, ...] = (batch, n)
        elif self.detect is not None:
            from crux.postprocess import anchor_points

            want = (batch, len(anchor_points(self.spec.image_size, self.detect.strides)[1]), 5 + n)
        else:
            assert self.segment is not None
            want = (batch, 1 + len(self.segment.defect_classes), None, None)
        if raw.ndim != len(want) or any(w is not None and d != w for d, w in zip(raw.shape, want, strict=True)):
            layout = ", ".join("*" if w is None else str(w) for w in want)
            raise ModelOutputError(f"{self.path}: output shape {tuple(raw.shape)} is not the card's ({layout})")
        if raw.size == 0 or not np.isfinite(raw).all():
            bad = int(raw.size - np.isfinite(raw).sum())
            raise ModelOutputError(f"{self.path}: output has {bad} non-finite value(s) (NaN or inf) of {raw.size}")

    def run_raw(self, x: NDArray[Any]) -> NDArray[Any]:
        """Raw model output for a preprocessed float32 batch (B, C, S, S)."""
        try:
            out = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]
        except Exception as exc:  # ONNX Runtime's own types (a shape the graph cannot take, a failing kernel)
            raise ModelOutputError(f"{self.path}: ONNX Runtime failed on this input ({_first_line(exc)})") from None
        return np.asarray(out)

    def results_from_raw(self, raw: NDArray[Any], sizes: Sequence[tuple[int, int]]) -> list[Result]:
        """Decoded results, after `check_raw`: an output of the wrong shape or with NaN/inf is never decoded."""
        self.check_raw(raw, len(sizes))
        if self.kind == "classify":
            return [self._classify_result(p) for p in postprocess_classify(raw)]
        if self.segment is not None:  # a segmenter, or an anomaly model (a one-class segmenter)
            return [self._segment_result(r, size) for r, size in zip(raw, sizes, strict=True)]
        assert self.detect is not None
        return [self._detect_result(r, size) for r, size in zip(raw, sizes, strict=True)]

    def _classify_result(self, probs: NDArray[Any]) -> Result:
        top = int(np.argmax(probs))
        scores = {c: float(p) for c, p in zip(self.classes, probs, strict=True)}
        return Result(self.classes[top], float(probs[top]), scores, [], probs)

    def _detect_result(self, raw: NDArray[Any], size: tuple[int, int]) -> Result:
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

    def _segment_result(self, raw: NDArray[Any], size: tuple[int, int]) -> Result:
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

    def predict_array(self, image: NDArray[Any]) -> Result:
        x, size = preprocess(image, self.spec)
        return self.results_from_raw(self.run_raw(x[None]), [size])[0]

    def predict_bytes(self, data: bytes) -> Result:
        return self.predict_array(load_image(io.BytesIO(data), self.spec.channels))

    def predict_file(self, path: Path) -> Result:
        return self.predict_array(load_image(path, self.spec.channels))


def synthetic_image(spec: InputSpec) -> NDArray[Any]:
    """A deterministic uint8 test frame of the card's size and channels (a diagonal gradient: every pixel value,
    no constant plane), for checking a model where no validation image is at hand."""
    ramp = np.add.outer(np.arange(spec.image_size), np.arange(spec.image_size)) * 255 // max(2 * spec.image_size - 2, 1)
    return np.repeat(ramp.astype(np.uint8)[:, :, None], spec.channels, axis=2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


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

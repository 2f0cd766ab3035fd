"""Metrics on post-processed predictions (numpy, pycocotools, Pillow; no torch).

Inputs are what `crux.postprocess` returns for the model's raw outputs, so the numbers here are the numbers of
the edge. Detection AP comes from pycocotools' COCOeval, not a re-implementation.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from crux.postprocess import Detections, ng_scores

THRESHOLD_GRID = np.round(np.linspace(0.0, 1.0, 101), 2)


def _r(x: float) -> float:
    # Rounded floats keep metrics files diff-friendly and identical across runs on the same machine.
    return round(float(x), 6)


# ----------------------------------------------------------------------------------------------------------------
# Classification


def confusion_matrix(targets: NDArray[Any], preds: NDArray[Any], num_classes: int) -> NDArray[Any]:
    """Counts [actual, predicted]."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (targets, preds), 1)
    return cm


def classification_metrics(
    probs: NDArray[Any],
    targets: NDArray[Any],
    classes: Sequence[str],
    ok_class: str | None = None,
    ng_threshold: float = 0.5,
    max_false_reject: float = 0.02,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, plots): accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, OK/NG view.

    Macro-F1 averages over classes present in targets or predictions (as scikit-learn does).
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    preds = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    k = len(classes)
    cm = confusion_matrix(targets, preds, k)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = (actual > 0) | (predicted > 0)
    metrics: dict[str, Any] = {
        "n_images": len(targets),
        "accuracy": _r(tp.sum() / max(len(targets), 1)),
        "macro_f1": _r(f1[present].mean() if present.any() else 0.0),
        "per_class": {
            c: {"precision": _r(precision[i]), "recall": _r(recall[i]), "f1": _r(f1[i]), "support": int(actual[i])}
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }
    plots: dict[str, Any] = {
        "confusion": [{"actual": classes[t], "predicted": classes[p]} for t, p in zip(targets, preds, strict=True)],
    }
    if ok_class is not None and ok_class in classes:
        ok = list(classes).index(ok_class)
        metrics["inspection"], plots["threshold_curve"] = inspection_metrics(
            ng_scores(probs, ok), targets != ok, ng_threshold, max_false_reject
        )
    return metrics, plots


def inspection_metrics(
    scores: NDArray[Any], is_ng: NDArray[Any], threshold: float, max_false_reject: float
) -> tuple[dict[str, Any], list[dict[str, float | None]]]:
    """OK/NG view: an image is rejected when its NG score >= threshold.

    NG recall = rejected NG / all NG (escapes are the expensive error); false-reject rate = rejected OK / all OK.
    Also the best NG recall whose false-reject rate stays <= max_false_reject, over every distinct score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_ng = np.asarray(is_ng, dtype=bool)
    n_ng, n_ok = int(is_ng.sum()), int((~is_ng).sum())

    def rates(t: float) -> tuple[float, float]:
        flagged = scores >= t
        recall = flagged[is_ng].sum() / n_ng if n_ng else float("nan")
        frr = flagged[~is_ng].sum() / n_ok if n_ok else float("nan")
        return float(recall), float(frr)

    recall, frr = rates(threshold)
    # Recall and false rejects both fall as the threshold rises, so the lowest threshold within the false-reject
    # budget gives the best recall; candidates are the distinct scores (exact) plus "reject nothing".
    best: tuple[float, float] | None = None  # (threshold, recall)
    if n_ok:
        for t in np.unique(np.concatenate([scores, [np.nextafter(1.0, 2.0)]])):
            r, f = rates(float(t))
            if f <= max_false_reject + 1e-12:
                best = (float(t), r)
                break
    out: dict[str, Any] = {
        "n_ng": n_ng,
        "n_ok": n_ok,
        "threshold": _r(threshold),
        "ng_recall": _nan_none(recall),
        "false_reject_rate": _nan_none(frr),
        "max_false_reject": _r(max_false_reject),
        "ng_recall_at_max_false_reject": _nan_none(best[1]) if best else None,
        "threshold_at_max_false_reject": _r(best[0]) if best else None,
    }
    curve = []
    for t in THRESHOLD_GRID:
        r, f = rates(float(t))
        curve.append({"threshold": float(t), "ng_recall": _nan_none(r), "false_reject_rate": _nan_none(f)})
    return out, curve


def _nan_none(x: float) -> float | None:
    return None if math.isnan(x) else _r(x)


# ----------------------------------------------------------------------------------------------------------------
# Detection


def coco_ground_truth(
    gt_boxes: Sequence[NDArray[Any]],
    gt_labels: Sequence[NDArray[Any]],
    sizes: Sequence[tuple[int, int]],
    classes: Sequence[str],
) -> dict[str, Any]:
    """A COCO-format ground-truth dict; image ids are 1-based positions, category ids class index + 1."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, (boxes, labels, (w, h)) in enumerate(zip(gt_boxes, gt_labels, sizes, strict=True)):
        images.append({"id": i + 1, "width": int(w), "height": int(h)})
        for box, label in zip(np.asarray(boxes, np.float64).reshape(-1, 4), labels, strict=True):
            bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [float(box[0]), float(box[1]), bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_detections(preds: Sequence[Detections]) -> list[dict[str, Any]]:
    out = []
    for i, det in enumerate(preds):
        for box, score, cls in zip(det.boxes, det.scores, det.class_ids, strict=True):
            out.append(
                {
                    "image_id": i + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                    "score": float(score),
                }
            )
    return out


def run_coco_eval(gt: dict[str, Any], dets: list[dict[str, Any]]) -> Any | None:
    """COCOeval after evaluate/accumulate/summarize (its prints swallowed); None when there is nothing to match."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not dets or not gt["annotations"]:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))  # COCO mutates its dataset; keep the caller's intact
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(dets)))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def detection_metrics(
    preds: Sequence[Detections],
    gt_boxes: Sequence[NDArray[Any]],
    gt_labels: Sequence[NDArray[Any]],
    sizes: Sequence[tuple[int, int]],
    classes: Sequence[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, plots): COCO mAP@0.5, mAP@0.5:0.95, per-class AP (area all, 100 detections), PR curves at IoU 0.5.

    Per-class AP is the mean of COCOeval's interpolated precision array, which is how COCOeval computes mAP.
    """
    gt = coco_ground_truth(gt_boxes, gt_labels, sizes, classes)
    ev = run_coco_eval(gt, coco_detections(preds))
    n_gt = np.bincount([a["category_id"] - 1 for a in gt["annotations"]], minlength=len(classes))
    metrics: dict[str, Any] = {
        "n_images": len(gt["images"]),
        "n_boxes": len(gt["annotations"]),
        "n_detections": int(sum(len(p) for p in preds)),
        "map50": 0.0,
        "map50_95": 0.0,
        "per_class": {},
    }
    plots: dict[str, Any] = {"pr_curve": []}
    if ev is None:
        metrics["per_class"] = {
            c: {"ap50": 0.0 if n_gt[i] else None, "ap50_95": 0.0 if n_gt[i] else None, "n_boxes": int(n_gt[i])}
            for i, c in enumerate(classes)
        }
        return metrics, plots
    metrics["map50"] = _r(max(ev.stats[1], 0.0))
    metrics["map50_95"] = _r(max(ev.stats[0], 0.0))
    precision = ev.eval["precision"]  # [IoU thresholds, recall points, classes, area ranges, max dets]
    rec_thrs = ev.params.recThrs
    curves: dict[str, NDArray[Any]] = {}
    for k, c in enumerate(classes):
        p_all = precision[:, :, k, 0, -1]
        p50 = precision[0, :, k, 0, -1]
        has = n_gt[k] > 0
        metrics["per_class"][c] = {
            "ap50": _r(p50[p50 > -1].mean()) if has and (p50 > -1).any() else None,
            "ap50_95": _r(p_all[p_all > -1].mean()) if has and (p_all > -1).any() else None,
            "n_boxes": int(n_gt[k]),
        }
        if has:
            curves[c] = np.clip(p50, 0.0, None)
    # One row per recall point: the class-mean precision (what `dvc plots` draws) and each class's own.
    if curves:
        mean = np.mean(list(curves.values()), axis=0)
        for i, r in enumerate(rec_thrs):
            row = {"recall": _r(r), "precision": _r(mean[i])}
            row.update({f"precision_{c}": _r(curve[i]) for c, curve in curves.items()})
            plots["pr_curve"].append(row)
    return metrics, plots


# ----------------------------------------------------------------------------------------------------------------
# Segmentation


def pixel_confusion(truth: NDArray[Any], pred: NDArray[Any], num_classes: int) -> NDArray[Any]:
    """Pixel counts [actual, predicted] of two class-index maps of one image (same shape)."""
    if truth.shape != pred.shape:
        raise ValueError(f"mask {truth.shape} and prediction {pred.shape} differ in size")
    idx = truth.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def segmentation_metrics(
    pixel_cm: NDArray[Any],
    ng_scores: NDArray[Any],
    strongest: NDArray[Any],
    targets: NDArray[Any],
    classes: Sequence[str],
    ok_class: str | None,
    defect_classes: Sequence[str],
    ng_threshold: float | None,
    max_false_reject: float = 0.02,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, plots) of a segmenter: per-class pixel IoU and Dice, mIoU over the defect classes (those present in
    the labels or the predictions), and the image view — a part is NG when its NG score >= the threshold, and its
    class is then the strongest region's — with accuracy over all classes, NG recall and false rejects.

    `ng_threshold` None: the lowest threshold whose false-reject rate on these images stays <= max_false_reject
    (how evaluation picks the operating point on the validation split); a number: that operating point (test).
    """
    cm = np.asarray(pixel_cm, np.int64)
    tp = np.diag(cm).astype(np.float64)
    gt_px, pred_px = cm.sum(axis=1).astype(np.float64), cm.sum(axis=0).astype(np.float64)
    union = gt_px + pred_px - tp
    names = ["background", *defect_classes]
    per_class: dict[str, Any] = {}
    ious = []
    for j, name in enumerate(names):
        present = gt_px[j] > 0 or pred_px[j] > 0
        iou = tp[j] / union[j] if union[j] > 0 else None
        dice = 2 * tp[j] / (gt_px[j] + pred_px[j]) if gt_px[j] + pred_px[j] > 0 else None
        per_class[name] = {
            "iou": None if iou is None else _r(iou),
            "dice": None if dice is None else _r(dice),
            "pixels": int(gt_px[j]),
            "predicted_pixels": int(pred_px[j]),
        }
        if j > 0 and present:
            ious.append(iou or 0.0)
    ok_index = list(classes).index(ok_class) if ok_class is not None and ok_class in classes else None
    is_ng = targets != ok_index if ok_index is not None else np.ones(len(targets), bool)
    if ng_threshold is None:
        ng_threshold = operating_threshold(ng_scores, is_ng, max_false_reject)
    class_index = {c: i for i, c in enumerate(classes)}
    defect_index = np.asarray([class_index[c] for c in defect_classes], np.int64)
    rejected = ng_scores >= ng_threshold
    preds = np.where(rejected, defect_index[strongest] if len(strongest) else strongest, ok_index or 0)
    probs = np.eye(len(classes))[preds] if len(preds) else np.zeros((0, len(classes)))
    image_metrics, plots = classification_metrics(probs, targets, classes)
    inspection, plots["threshold_curve"] = inspection_metrics(ng_scores, is_ng, ng_threshold, max_false_reject)
    metrics: dict[str, Any] = {
        "miou": _r(np.mean(ious)) if ious else 0.0,
        "mdice": _r(np.mean([per_class[n]["dice"] or 0.0 for n in names[1:] if per_class[n]["pixels"]]))
        if any(per_class[n]["pixels"] for n in names[1:])
        else 0.0,
        "pixel": per_class,
        **image_metrics,
        "inspection": inspection,
    }
    return metrics, plots


def operating_threshold(scores: NDArray[Any], is_ng: NDArray[Any], max_false_reject: float) -> float:
    """The lowest NG-score threshold whose false-reject rate stays <= max_false_reject (highest NG recall)."""
    scores = np.asarray(scores, np.float64)
    ok_scores = np.sort(scores[~np.asarray(is_ng, bool)])[::-1]
    if ok_scores.size == 0:
        return 0.5
    allowed = int(np.floor(max_false_reject * ok_scores.size + 1e-9))  # OK parts we may reject
    if allowed >= ok_scores.size:
        return 0.0
    # Reject strictly above the (allowed + 1)-th highest OK score.
    return float(np.nextafter(ok_scores[allowed], np.inf))


# ----------------------------------------------------------------------------------------------------------------
# Anomaly detection (OK-only training): ranking metrics that need no threshold, and the calibrated inspection view


def auroc(scores: NDArray[Any], positive: NDArray[Any]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); None without both classes."""
    from scipy.stats import rankdata

    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def region_overlaps(truth: NDArray[Any], predicted: NDArray[Any]) -> list[float]:
    """Per labelled region (8-connected part of the bool truth mask): the share of its pixels predicted anomalous
    (the per-region overlap of MVTec's PRO metric, at one threshold)."""
    from scipy import ndimage

    ids, n = ndimage.label(truth, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    covered = ndimage.sum_labels(predicted, ids, index=np.arange(1, n + 1))
    sizes = ndimage.sum_labels(np.ones_like(truth, bool), ids, index=np.arange(1, n + 1))
    return [float(c / a) for c, a in zip(covered, sizes, strict=True)]


def score_histogram(scores: NDArray[Any], is_ng: NDArray[Any], bins: int = 50) -> list[dict[str, float]]:
    """OK and NG counts per score bin over [0, 1] (a DVC plot: how far apart the two populations are)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    ok, _ = np.histogram(np.clip(scores[~is_ng], 0, 1), edges)
    ng, _ = np.histogram(np.clip(scores[is_ng], 0, 1), edges)
    return [{"score": _r((edges[i] + edges[i + 1]) / 2), "ok": int(ok[i]), "ng": int(ng[i])} for i in range(bins)]


def anomaly_metrics(
    scores: NDArray[Any],
    is_ng: NDArray[Any],
    synthetic: NDArray[Any],
    pixel_scores: NDArray[Any],
    pixel_truth: NDArray[Any],
    overlaps: NDArray[Any],
    ng_threshold: float | None,
    max_false_reject: float = 0.02,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, plots) of an anomaly model. `auroc`: real NG against OK where the split has NG items, else the
    synthetic items (training's validation) against OK, else None (no NG: only false rejects can be measured).
    `ng_threshold` None: calibrated here at max_false_reject on the OK scores. Pixel AUROC and the mean region
    overlap only where masks exist."""
    real = ~synthetic
    r_scores, r_ng = scores[real], is_ng[real]
    real_auroc = auroc(r_scores, r_ng)
    synthetic_auroc = auroc(
        np.concatenate([r_scores[~r_ng], scores[synthetic]]),
        np.r_[np.zeros((~r_ng).sum(), bool), np.ones(synthetic.sum(), bool)],
    )
    if ng_threshold is None:
        ng_threshold = operating_threshold(r_scores, r_ng, max_false_reject)
    inspection, curve = inspection_metrics(r_scores, r_ng, ng_threshold, max_false_reject)
    rejected = r_scores >= ng_threshold
    metrics: dict[str, Any] = {
        "auroc": _r(real_auroc)
        if real_auroc is not None
        else _r(synthetic_auroc)
        if synthetic_auroc is not None
        else None,
        "auroc_source": "ng" if real_auroc is not None else "synthetic" if synthetic_auroc is not None else None,
        "synthetic_auroc": None if synthetic_auroc is None else _r(synthetic_auroc),
        "accuracy": _r((rejected == r_ng).mean()) if len(r_ng) else None,
        "pixel_auroc": None if (a := auroc(pixel_scores, pixel_truth)) is None else _r(a),
        "region_overlap": _r(overlaps.mean()) if len(overlaps) else None,
        "n_regions": len(overlaps),
        "inspection": inspection,
    }
    return metrics, {"threshold_curve": curve, "score_histogram": score_histogram(r_scores, r_ng)}


# ----------------------------------------------------------------------------------------------------------------
# Files


def confusion_png(cm: NDArray[Any], classes: Sequence[str], path: Path) -> None:
    """A confusion-matrix heat map, Pillow only: rows actual, columns predicted, row-normalised colour, counts."""
    k = len(classes)
    cell, margin = 56, 120
    img = Image.new("RGB", (margin + k * cell + 10, margin + k * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    for i in range(k):
        for j in range(k):
            x0, y0 = margin + j * cell, margin + i * cell
            shade = int(255 - 200 * frac[i, j])
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline="grey")
            draw.text(
                (x0 + 6, y0 + cell // 2 - 6), str(int(cm[i, j])), fill="black" if shade > 120 else "white", font=font
            )
        draw.text((4, margin + i * cell + cell // 2 - 6), classes[i][:18], fill="black", font=font)
        # Column labels, staggered so long names do not overlap.
        draw.text((margin + i * cell + 2, margin - 16 - 14 * (i % 2)), classes[i][:9], fill="black", font=font)
    draw.text((4, 4), "rows: actual, columns: predicted", fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


def overlay_gallery(tiles: Sequence[tuple[NDArray[Any], NDArray[Any], NDArray[Any], str]], path: Path) -> None:
    """A PNG grid, one row per image: the image with the labelled mask (green) and with the predicted mask (red),
    each at most 256 px high, a caption above. Tiles are (RGB uint8 image, truth map, predicted map, caption)."""
    rows = []
    font = ImageFont.load_default()
    for image, truth, pred, caption in tiles:
        panels = []
        for mask, colour in ((truth, (0, 200, 0)), (pred, (230, 30, 30))):
            base = Image.fromarray(image).convert("RGB")
            overlay = Image.new("RGB", base.size, colour)
            alpha = Image.fromarray(((mask > 0) * 110).astype(np.uint8))
            panels.append(Image.composite(overlay, base, alpha))
        scale = min(1.0, 256 / max(1, image.shape[0]))
        size = (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale)))
        row = Image.new("RGB", (2 * size[0] + 8, size[1] + 16), "white")
        for k, panel in enumerate(panels):
            row.paste(panel.resize(size), (k * (size[0] + 8), 16))
        ImageDraw.Draw(row).text((2, 2), caption, fill="black", font=font)
        rows.append(row)
    width = max([r.width for r in rows], default=200)
    height = sum(r.height + 4 for r in rows) or 24
    sheet = Image.new("RGB", (width, height), "white")
    if not rows:
        ImageDraw.Draw(sheet).text((4, 4), "no misses", fill="black", font=font)
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 4
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Scalar metrics as dotted keys (lists such as the confusion matrix are left out)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def compare_markdown(current: Mapping[str, Any], previous: Mapping[str, Any] | None, title: str = "Evaluation") -> str:
    """A Markdown report: every scalar metric, with the previous model's value and the change when given."""
    cur = flatten_metrics(current)
    lines = [f"# {title}", ""]
    if previous is None:
        lines += ["No previous metrics to compare with.", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in cur.items()]
        return "\n".join(lines) + "\n"
    prev = flatten_metrics(previous)
    lines += ["| metric | previous | current | change |", "|---|---|---|---|"]
    for key in list(cur) + [k for k in prev if k not in cur]:
        c, p = cur.get(key), prev.get(key)
        delta = f"{c - p:+.4f}" if c is not None and p is not None else ""
        lines.append(f"| {key} | {'' if p is None else f'{p:.4f}'} | {'' if c is None else f'{c:.4f}'} | {delta} |")
    if current.get("n_images") != previous.get("n_images"):
        lines += ["", "Note: the test splits differ in size; the comparison is not like for like."]
    return "\n".join(lines) + "\n"


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Per-item results: what the console's drill-down pages show (metrics/LINE/predictions.json + results/*.png)
#
# Every test item gets one record: its actual and predicted label on one image-level axis (the confusion matrix's),
# its score and an outcome. Outcomes on a line with an OK class follow the shipped operating point: an `escape` is an
# NG part the threshold lets through, a `false_reject` an OK part it rejects; `misclassified` is a wrong class that
# the OK/NG verdict got right (or any wrong class on a line without an OK class). Detection has no OK class: an image
# with labelled boxes and no detection is an escape, one with detections and no labelled box a false reject.

OUTCOMES = ("escape", "false_reject", "misclassified", "correct")
NO_DEFECT = "none"  # detection's image-level label of an image without boxes
ANOMALY_NG = "NG"  # the anomaly kind's image-level label of every defect (one anomaly score, no defect class)
THUMB_SIDE = 192  # overlay thumbnails' longest side: small enough for a page of 50, large enough to see a scratch
THUMBS_PER_CELL = 12  # overlays rendered per confusion cell (the cell lists every item; the first ones show images)
MAX_MISSES = 48  # the worst-misses gallery's length


def _outcome(actual: str, predicted: str, is_ng: bool | None, rejected: bool | None) -> str:
    if is_ng is not None and rejected is not None:
        if is_ng and not rejected:
            return "escape"
        if not is_ng and rejected:
            return "false_reject"
    return "correct" if actual == predicted else "misclassified"


def classify_items(
    probs: NDArray[Any], targets: NDArray[Any], classes: Sequence[str], ok_class: str | None, ng_threshold: float
) -> list[dict[str, Any]]:
    """One record per image: arg-max class (the confusion matrix's), its probability, and on a line with an OK class
    the NG score 1 - p(OK) judged at the shipped threshold (`score`); else `score` is the predicted probability."""
    probs = np.asarray(probs, np.float64)
    ok = list(classes).index(ok_class) if ok_class is not None and ok_class in classes else None
    out = []
    for i, (p, t) in enumerate(zip(probs, np.asarray(targets, np.int64), strict=True)):
        pred = int(np.argmax(p))
        score = 1.0 - p[ok] if ok is not None else p[pred]
        is_ng, rejected = (bool(t != ok), bool(score >= ng_threshold)) if ok is not None else (None, None)
        actual, predicted = classes[int(t)], classes[pred]
        out.append(
            {
                "index": i,
                "actual": actual,
                "predicted": predicted,
                "score": _r(score),
                "confidence": _r(p[pred]),
                "outcome": _outcome(actual, predicted, is_ng, rejected),
            }
        )
    return out


def segment_items(
    ng_scores_: NDArray[Any],
    strongest: NDArray[Any],
    targets: NDArray[Any],
    classes: Sequence[str],
    ok_class: str | None,
    defect_classes: Sequence[str],
    ng_threshold: float,
    indices: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """One record per image, the verdict `segmentation_metrics` takes: NG when the NG score reaches the threshold,
    its class the strongest region's; else the OK class."""
    ok = ok_class if ok_class in classes else None
    out = []
    for i, (score, s, t) in enumerate(zip(ng_scores_, strongest, targets, strict=True)):
        rejected = bool(score >= ng_threshold)
        actual = classes[int(t)]
        predicted = defect_classes[int(s)] if rejected or ok is None else ok
        is_ng = actual != ok if ok is not None else None
        out.append(
            {
                "index": int(indices[i]) if indices is not None else i,
                "actual": actual,
                "predicted": predicted,
                "score": _r(score),
                "outcome": _outcome(actual, predicted, is_ng, rejected if ok is not None else None),
            }
        )
    return out


def anomaly_items(
    scores: NDArray[Any],
    is_ng: NDArray[Any],
    ok_class: str | None,
    ng_threshold: float,
    labels: Sequence[str] | None = None,
    indices: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """One record per image on the OK / NG axis (the anomaly score has no defect class); `label` keeps the item's
    own class."""
    ok = ok_class or "OK"
    out = []
    for i, (score, ng) in enumerate(zip(scores, is_ng, strict=True)):
        rejected = bool(score >= ng_threshold)
        actual, predicted = (ANOMALY_NG if ng else ok), (ANOMALY_NG if rejected else ok)
        record = {
            "index": int(indices[i]) if indices is not None else i,
            "actual": actual,
            "predicted": predicted,
            "score": _r(score),
            "outcome": _outcome(actual, predicted, bool(ng), rejected),
        }
        if labels is not None:
            record["label"] = labels[i]
        out.append(record)
    return out


def _iou(a: NDArray[Any], b: NDArray[Any]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def detect_items(
    preds: Sequence[Detections],
    gt_boxes: Sequence[NDArray[Any]],
    gt_labels: Sequence[NDArray[Any]],
    classes: Sequence[str],
    iou: float = 0.5,
) -> list[dict[str, Any]]:
    """One record per image: its image-level label (the most frequent labelled class, `none` without boxes) and the
    predicted one (the highest-scoring detection's class), the boxes both ways, and the labelled boxes no detection
    of their class matched at `iou` (`missed`) and the detections that matched none (`extra`), greedy by score."""
    out = []
    for i, (det, boxes, labels) in enumerate(zip(preds, gt_boxes, gt_labels, strict=True)):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        labels = np.asarray(labels, np.int64).reshape(-1)
        order = np.argsort(-np.asarray(det.scores, np.float64), kind="stable")
        used = np.zeros(len(boxes), bool)
        extra = 0
        for k in order:
            cands = [
                (_iou(det.boxes[k], boxes[j]), j)
                for j in range(len(boxes))
                if not used[j] and labels[j] == det.class_ids[k]
            ]
            best = max(cands, default=(0.0, -1))
            if best[0] >= iou:
                used[best[1]] = True
            else:
                extra += 1
        actual = classes[int(np.bincount(labels).argmax())] if len(labels) else NO_DEFECT
        predicted = classes[int(det.class_ids[order[0]])] if len(det) else NO_DEFECT
        missed = int((~used).sum())
        if len(labels) and not len(det):
            outcome = "escape"
        elif not len(labels) and len(det):
            outcome = "false_reject"
        else:
            outcome = "correct" if missed == 0 and extra == 0 and actual == predicted else "misclassified"
        out.append(
            {
                "index": i,
                "actual": actual,
                "predicted": predicted,
                "score": _r(det.scores[order[0]]) if len(det) else 0.0,
                "outcome": outcome,
                "missed": missed,
                "extra": extra,
                "boxes": [
                    [*(_r(v) for v in det.boxes[k]), classes[int(det.class_ids[k])], _r(det.scores[k])] for k in order
                ],
                "truth_boxes": [[*(_r(v) for v in b), classes[int(c)]] for b, c in zip(boxes, labels, strict=True)],
            }
        )
    return out


def result_labels(kind: str, classes: Sequence[str], ok_class: str | None) -> list[str]:
    """The image-level axis of a kind's per-item records (rows and columns of its confusion matrix)."""
    if kind == "detect":
        return [*classes, NO_DEFECT]
    if kind == "anomaly":
        return [ok_class or "OK", ANOMALY_NG]
    return list(classes)


def per_class_table(records: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per label from the records' actual / predicted labels (image level)."""
    position = {name: i for i, name in enumerate(labels)}
    cm = confusion_matrix(
        np.asarray([position[r["actual"]] for r in records], np.int64),
        np.asarray([position[r["predicted"]] for r in records], np.int64),
        len(labels),
    )
    rows = []
    for i, name in enumerate(labels):
        tp, predicted, actual = int(cm[i, i]), int(cm[:, i].sum()), int(cm[i].sum())
        precision = tp / predicted if predicted else None
        recall = tp / actual if actual else None
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else (0.0 if precision is not None and recall is not None else None)
        )
        rows.append(
            {
                "class": name,
                "precision": None if precision is None else _r(precision),
                "recall": None if recall is None else _r(recall),
                "f1": None if f1 is None else _r(f1),
                "support": actual,
                "predicted": predicted,
            }
        )
    return rows


def records_confusion(records: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> list[list[int]]:
    position = {name: i for i, name in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), np.int64)
    for r in records:
        cm[position[r["actual"]], position[r["predicted"]]] += 1
    return [[int(v) for v in row] for row in cm]


def worst_misses(records: Sequence[Mapping[str, Any]], limit: int = MAX_MISSES) -> list[Mapping[str, Any]]:
    """Escapes first (the expensive error; lowest score first: the most confidently let through), then false rejects
    (highest score first), then the other misclassifications (highest score first); ties by item order."""
    escapes = sorted((r for r in records if r["outcome"] == "escape"), key=lambda r: (r["score"], r["index"]))
    rejects = sorted((r for r in records if r["outcome"] == "false_reject"), key=lambda r: (-r["score"], r["index"]))
    other = sorted((r for r in records if r["outcome"] == "misclassified"), key=lambda r: (-r["score"], r["index"]))
    return [*escapes, *rejects, *other][:limit]


def thumbnail_indices(
    records: Sequence[Mapping[str, Any]], per_cell: int = THUMBS_PER_CELL, misses: int = MAX_MISSES
) -> list[int]:
    """Which items get an overlay: every worst miss and the first `per_cell` of each confusion cell (misses in gallery
    order, correct ones by item order), so any cell a page opens shows images; sorted, each once."""
    chosen = {int(r["index"]) for r in worst_misses(records, misses)}
    cells: dict[tuple[str, str], int] = {}
    for r in [*worst_misses(records, len(records)), *(r for r in records if r["outcome"] == "correct")]:
        key = (r["actual"], r["predicted"])
        if cells.get(key, 0) < per_cell:
            cells[key] = cells.get(key, 0) + 1
            chosen.add(int(r["index"]))
    return sorted(chosen)


def _fit(img: Image.Image, side: int) -> Image.Image:
    """Longest side `side`: smaller images are enlarged (pixels kept sharp) so the caption and labels fit."""
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BILINEAR if scale < 1.0 else Image.Resampling.NEAREST)


def _tint(base: Image.Image, mask: NDArray[Any], colour: tuple[int, int, int], alpha: int) -> Image.Image:
    layer = Image.new("RGB", base.size, colour)
    return Image.composite(layer, base, Image.fromarray(((np.asarray(mask) > 0) * alpha).astype(np.uint8)))


def overlay_thumbnail(
    image: NDArray[Any],
    record: Mapping[str, Any],
    *,
    pred_map: NDArray[Any] | None = None,
    truth_map: NDArray[Any] | None = None,
    heat: NDArray[Any] | None = None,
    side: int = THUMB_SIDE,
) -> Image.Image:
    """A small image of one item with what the model said drawn on it: detected boxes (red, with class and score)
    beside the labelled ones (green); the predicted mask (red) over the labelled one (green); an anomaly map as red
    intensity; and on every kind a caption band: predicted label and score, and the labelled one when they differ."""
    base = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    if heat is not None:
        h = np.clip(np.asarray(heat, np.float64), 0.0, 1.0)
        base = Image.composite(
            Image.new("RGB", base.size, (255, 0, 0)), base, Image.fromarray((h * 150).astype(np.uint8))
        )
    if truth_map is not None:
        base = _tint(base, truth_map, (0, 200, 0), 90)
    if pred_map is not None:
        base = _tint(base, pred_map, (230, 30, 30), 110)
        # The predicted region's outline stays visible over the heat map and the labelled mask.
        edge = np.asarray(pred_map) > 0
        outline = edge & ~(np.roll(edge, 1, 0) & np.roll(edge, -1, 0) & np.roll(edge, 1, 1) & np.roll(edge, -1, 1))
        base = _tint(base, outline, (255, 255, 0), 255)
    scale = side / max(base.size)
    base = _fit(base, side)
    draw = ImageDraw.Draw(base)
    font = ImageFont.load_default()
    for box in record.get("truth_boxes", []):
        draw.rectangle([v * scale for v in box[:4]], outline=(0, 200, 0), width=2)
    for box in record.get("boxes", []):
        xy = [v * scale for v in box[:4]]
        draw.rectangle(xy, outline=(230, 30, 30), width=2)
        draw.text((xy[0] + 2, xy[1] + 1), f"{box[4]} {box[5]:.2f}", fill=(255, 255, 0), font=font)
    caption = f"{record['predicted']} {record['score']:.2f}"
    if record["actual"] != record["predicted"]:
        caption += f" (true {record['actual']})"
    band = Image.new("RGB", (max(base.width, 8), base.height + 14), "black")
    band.paste(base, (0, 14))
    colour = (80, 220, 80) if record["outcome"] == "correct" else (255, 90, 90)
    ImageDraw.Draw(band).text((2, 1), caption, fill=colour, font=font)
    return band


def thumb_name(index: int) -> str:
    return f"{int(index):06d}.png"


def results_document(
    kind: str,
    classes: Sequence[str],
    ok_class: str | None,
    ng_threshold: float | None,
    split: str,
    records: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    threshold_curve: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """predictions.json: every item's record, the per-class table and confusion matrix they give, the worst misses'
    order, and the operating point (the NG recall / false-reject curve and the shipped threshold) where one exists.
    `metrics` ties it to the evaluation it came from (the console matches it with a published version)."""
    labels = result_labels(kind, classes, ok_class)
    inspection = metrics.get("inspection") if isinstance(metrics.get("inspection"), Mapping) else None
    return {
        "format": 1,
        "kind": kind,
        "split": split,
        "classes": list(classes),
        "ok_class": ok_class,
        "labels": labels,
        "ng_threshold": None if ng_threshold is None else _r(ng_threshold),
        "per_class": per_class_table(records, labels),
        "confusion_matrix": records_confusion(records, labels),
        "worst_misses": [int(r["index"]) for r in worst_misses(records)],
        "operating_point": (
            {
                "threshold": inspection.get("threshold"),
                "ng_recall": inspection.get("ng_recall"),
                "false_reject_rate": inspection.get("false_reject_rate"),
                "curve": [dict(row) for row in threshold_curve],
            }
            if inspection is not None and threshold_curve
            else None
        ),
        "metrics": {k: v for k, v in flatten_metrics(metrics).items() if not k.startswith("per_class.")},
        "items": [dict(r) for r in records],
    }

"""Fixture data for the results drill-down (crux.console.results), all four kinds: a signed model remote with
published versions and a refused candidate, and a workspace whose metrics/LINE/ holds what `crux evaluate` writes
(predictions.json and the overlays), built from known predictions through crux.evaluation's own functions so the
tests can state every expected number. Kept apart from tests/console_support.py (the console's main plant)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crux import evaluation as ev
from crux.postprocess import Detections

CLS, DET, SEG, ANO = "res-cls", "res-det", "res-seg", "res-ano"
LINES = {CLS: "classify", DET: "detect", SEG: "segment", ANO: "anomaly"}
CLS_CLASSES = ["ok", "scratch", "spot"]
# (actual, predicted, p(OK)) per classify test item; threshold 0.5 on 1 - p(OK).
CLS_ITEMS: list[tuple[str, str, float]] = (
    [("ok", "ok", 0.9)] * 10
    + [("ok", "scratch", 0.2), ("ok", "scratch", 0.1)]  # false rejects (NG scores 0.8, 0.9)
    + [("scratch", "scratch", 0.05)] * 8
    + [("scratch", "ok", 0.6), ("scratch", "ok", 0.7), ("scratch", "ok", 0.8)]  # escapes (NG scores 0.4, 0.3, 0.2)
    + [("spot", "spot", 0.05)] * 6
    + [("spot", "scratch", 0.1)]  # wrong NG class, rejected all the same
)
THRESHOLD = 0.5
# The classify line's v1 card: per-class figures of an older evaluation (no per-item records in the workspace).
V1_PER_CLASS = {
    "ok": {"precision": 0.91, "recall": 0.95, "f1": 0.93, "support": 12},
    "scratch": {"precision": 0.88, "recall": 0.84, "f1": 0.86, "support": 11},
    "spot": {"precision": 1.0, "recall": 0.9, "f1": 0.947368, "support": 7},
}
REFUSED_MACRO_F1 = 0.6
REFUSED_FLOOR = 0.95


@dataclass(frozen=True)
class ResultsPlant:
    root: Path
    remote: Path
    public_key: Path
    workspace: Path
    docs: dict[str, dict[str, Any]]


def _image(i: int, ng: bool, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    rng = np.random.default_rng(i)
    img = rng.integers(90, 140, (size[1], size[0], 3), dtype=np.uint8)
    if ng:
        img[16:30, 20:44] = 230
    return img


def _rect(shape: tuple[int, int], on: bool, value: int = 1) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    if on:
        m[16:30, 20:44] = value
    return m


def classify_probs() -> tuple[np.ndarray, np.ndarray]:
    probs, targets = [], []
    for actual, predicted, p_ok in CLS_ITEMS:
        row = np.zeros(3)
        row[0] = p_ok
        rest = 1.0 - p_ok
        if predicted == "ok" and actual == "ok":
            row[1], row[2] = rest * 0.5, rest * 0.5
        elif predicted == "ok":
            p = CLS_CLASSES.index(actual)
            row[p], row[3 - p] = rest * 0.75, rest * 0.25
        else:
            p = CLS_CLASSES.index(predicted)
            row[p], row[3 - p] = rest * 0.9, rest * 0.1
        probs.append(row)
        targets.append(CLS_CLASSES.index(actual))
    return np.asarray(probs), np.asarray(targets)


def _write(out: Path, doc: dict[str, Any], thumbs: dict[int, Any]) -> None:
    (out / "results").mkdir(parents=True, exist_ok=True)
    by_index = {r["index"]: r for r in doc["items"]}
    for index, image in thumbs.items():
        image.save(out / "results" / ev.thumb_name(index), format="PNG")
        by_index[index]["thumb"] = ev.thumb_name(index)
    ev.write_json(out / "predictions.json", doc)


def _records_and_images(kind: str) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]], dict[str, Any], Any]:
    """(records, per-index overlay inputs, metrics computed here, threshold curve) of a kind's fixture items."""
    if kind == "classify":
        probs, targets = classify_probs()
        metrics, plots = ev.classification_metrics(probs, targets, CLS_CLASSES, "ok", THRESHOLD, 0.2)
        records = ev.classify_items(probs, targets, CLS_CLASSES, "ok", THRESHOLD)
        inputs = {r["index"]: {"image": _image(r["index"], r["actual"] != "ok")} for r in records}
        return records, inputs, metrics, plots["threshold_curve"]
    if kind == "detect":
        classes = ["scratch", "spot"]
        box = np.asarray([[20.0, 16.0, 44.0, 30.0]])
        none = np.zeros((0, 4))
        cases = [(box, [0], box, [0], [0.9])] * 4 + [
            (box, [1], none, [], []),  # escape: a spot nobody saw
            (none, [], box, [0], [0.85]),  # false reject: a scratch on a clean part
            (box, [0], box, [1], [0.7]),  # wrong class
            (none, [], none, [], []),
        ]
        preds = [Detections(np.asarray(d, float).reshape(-1, 4), np.asarray(s, float), np.asarray(c, int))
                 for _, _, d, c, s in cases]  # fmt: skip
        records = ev.detect_items(
            preds, [g for g, *_ in cases], [np.asarray(lab, int) for _, lab, *_ in cases], classes
        )
        inputs = {r["index"]: {"image": _image(100 + r["index"], bool(r["truth_boxes"]))} for r in records}
        return records, inputs, {"map50": 0.61, "map50_95": 0.33, "n_images": len(cases)}, []
    if kind == "segment":
        classes, defects = ["ok", "crack"], ["crack"]
        cases = [("ok", 0.1)] * 4 + [("ok", 0.7)] + [("crack", 0.9)] * 4 + [("crack", 0.2)]
        scores = np.asarray([s for _, s in cases])
        targets = np.asarray([classes.index(a) for a, _ in cases])
        records = ev.segment_items(scores, np.zeros(len(cases), int), targets, classes, "ok", defects, THRESHOLD)
        inspection, curve = ev.inspection_metrics(scores, targets != 0, THRESHOLD, 0.2)
        inputs = {
            r["index"]: {
                "image": _image(200 + r["index"], r["actual"] != "ok"),
                "truth_map": _rect((48, 64), r["actual"] != "ok"),
                "pred_map": _rect((48, 64), r["predicted"] != "ok"),
            }
            for r in records
        }
        metrics = {"miou": 0.55, "accuracy": 0.8, "n_images": len(cases), "inspection": inspection}
        return records, inputs, metrics, curve
    scores = np.asarray([0.1, 0.15, 0.2, 0.25, 0.3, 0.8, 0.7, 0.8, 0.9, 0.95, 0.3, 0.45])
    is_ng = np.asarray([False] * 6 + [True] * 6)
    labels = ["good"] * 6 + ["defect"] * 6
    records = ev.anomaly_items(scores, is_ng, "good", THRESHOLD, labels)
    inspection, curve = ev.inspection_metrics(scores, is_ng, THRESHOLD, 0.2)
    inputs = {}
    for r in records:
        heat = np.zeros((48, 64))
        heat[14:32, 18:46] = r["score"]
        inputs[r["index"]] = {
            "image": _image(300 + r["index"], r["actual"] == "NG"),
            "truth_map": _rect((48, 64), r["actual"] == "NG"),
            "pred_map": _rect((48, 64), r["predicted"] == "NG"),
            "heat": heat,
        }
    return records, inputs, {"auroc": 0.9, "accuracy": 0.75, "inspection": inspection}, curve


def build_results_plant(tmp: Path) -> ResultsPlant:
    from edge_support import exported

    from crux.ship.gate import GateConfig, GateLineConfig
    from crux.ship.publish import GateRefused, publish
    from crux.ship.signing import generate_private_key, public_key_pem

    key = generate_private_key()
    remote, workspace = tmp / "model-remote", tmp / "repo"
    docs = {}
    # v2 may be worse than v1, the anomaly line (a segment bundle) misses two: the fixture is about what pages show.
    lenient = GateConfig(tolerance=1.0, min={"segment": {"inspection.ng_recall": None}})
    for n, (line, kind) in enumerate(LINES.items()):
        records, inputs, metrics, curve = _records_and_images(kind)
        export_kind = "segment" if kind == "anomaly" else kind  # the tiny bundles have no anomaly model
        # v1: an older evaluation; v2: the one whose per-item records the workspace holds.
        older = {"per_class": V1_PER_CLASS} if kind == "classify" else None
        publish(
            str(remote), line, exported(tmp, export_kind, seed=10 * n, metrics=older, name=f"{line}-1"), key, lenient
        )
        export = exported(tmp, export_kind, seed=10 * n + 1, metrics=metrics, name=f"{line}-2")
        publish(str(remote), line, export, key, lenient)
        card_metrics = json.loads((export / "card.json").read_text())["metrics"]
        ok = {"classify": "ok", "segment": "ok", "anomaly": "good"}.get(kind)
        classes = {"classify": CLS_CLASSES, "detect": ["scratch", "spot"], "segment": ["ok", "crack"]}.get(
            kind, ["good", "defect"]
        )
        for r in records:
            r["id"], r["image"] = f"{line}-{r['index']:03d}", f"../images/{r['index']}.png"
        doc = ev.results_document(kind, classes, ok, THRESHOLD if ok else None, "test", records, card_metrics, curve)
        thumbs = {i: ev.overlay_thumbnail(inputs[i]["image"], records[i], **{k: v for k, v in inputs[i].items()
                                                                              if k != "image"})
                  for i in ev.thumbnail_indices(records)}  # fmt: skip
        _write(workspace / "metrics" / line, doc, thumbs)
        docs[line] = json.loads((workspace / "metrics" / line / "predictions.json").read_text())
    # A candidate the line's own floor refuses: recorded beside the releases with its criterion.
    refused = exported(tmp, "classify", seed=99, metrics={"macro_f1": REFUSED_MACRO_F1}, name="refused")
    strict = GateConfig(lines={CLS: GateLineConfig(min={"macro_f1": REFUSED_FLOOR})})
    try:
        publish(str(remote), CLS, refused, key, strict)
        raise AssertionError("the strict gate published the refused candidate")
    except GateRefused:
        pass
    pub = tmp / "keys" / "publish.pub"
    pub.parent.mkdir(parents=True, exist_ok=True)
    pub.write_bytes(public_key_pem(key.public_key()))
    return ResultsPlant(tmp, remote, pub, workspace, docs)


def results_console_config(plant: ResultsPlant) -> Any:
    from crux.console.deps import ConsoleConfig, LineInfo
    from crux.console.sources import ModelReader
    from crux.ship.signing import load_public_keys

    return ConsoleConfig(
        lines=tuple(LineInfo(line, f"Results {kind}", kind) for line, kind in LINES.items()),
        models=ModelReader(str(plant.remote), load_public_keys([plant.public_key])),
        timeout_s=5.0,
        workspace=plant.workspace,
    )

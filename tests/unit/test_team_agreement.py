"""Agreement figures, provenance rules and the review ranking on small constructed cases (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from crux.config import AgreementSpec, ConfigError, OverlapSpec
from crux.data.agreement import AgreementError, agreement_report, item_agreement, pair_score
from crux.data.manifest import AnnotatorLabels, ItemLabel, ManifestItem, parse_manifest, write_manifest
from crux.data.provenance import IMPORT_IDENTITY, annotation_provenance, provenance_mix
from crux.label.review import build_queue, label_issues


def person(name: str, *labels: ItemLabel, mask: str | None = None, verdict: str | None = None) -> AnnotatorLabels:
    return AnnotatorLabels(name, tuple(labels), mask, verdict)


def item(task_id: int, people: list[AnnotatorLabels], agreement: float | None = None) -> ManifestItem:
    chosen = people[-1]
    return ManifestItem(
        sha256=f"{task_id:064x}",
        task_id=task_id,
        image=f"images/{task_id}.jpg",
        width=100,
        height=100,
        original_name=f"{task_id}.jpg",
        split="train",
        labels=chosen.labels,
        annotators=tuple(p.annotator for p in people),
        by_annotator=tuple(people) if len(people) > 1 else (),
        agreement=agreement,
    )


def test_classify_pairs_and_kappa_as_constructed() -> None:
    a, b = ItemLabel("crazing"), ItemLabel("patches")
    items = [
        item(1, [person("ann@x", a), person("bob@x", a)]),
        item(2, [person("ann@x", b), person("bob@x", b)]),
        item(3, [person("ann@x", a), person("bob@x", b)]),
        item(4, [person("ann@x", b), person("bob@x", b)]),
        item(5, [person("solo@x", a)]),  # one annotator: not part of agreement
    ]
    report = agreement_report(items, "classify", ["crazing", "patches"], threshold=1.0)
    assert (report.overlapped, report.images, report.mean) == (4, 5, 0.75)
    assert [f.task_id for f in report.flagged] == [3]
    (pair,) = report.per_pair
    assert pair["annotators"] == ["ann@x", "bob@x"] and pair["images"] == 4 and pair["mean"] == 0.75
    # kappa: po = 0.75; ann crazing 2/4, bob crazing 1/4 -> pe = 0.5*0.25 + 0.5*0.75 = 0.5 -> (0.75-0.5)/0.5
    assert pair["cohen_kappa"] == 0.5
    # crazing: 2 labels on item 1 (both agree) + ann's on item 3 -> 2 of 3; patches: items 2, 4 + bob's on 3 -> 4 of 5
    assert report.per_class["crazing"]["agreement"] == 0.6667
    assert report.per_class["patches"]["agreement"] == 0.8


def test_detect_matched_f1_at_iou() -> None:
    box = ItemLabel("scratches", (0, 0, 10, 10))
    near = ItemLabel("scratches", (1, 0, 11, 10))  # IoU 0.818
    far = ItemLabel("scratches", (5, 0, 15, 10))  # IoU 0.333
    other = ItemLabel("crazing", (50, 50, 60, 60))
    assert pair_score("detect", person("a", box), person("b", near))[0] == 1.0
    assert pair_score("detect", person("a", box), person("b", far))[0] == 0.0
    assert pair_score("detect", person("a", box), person("b", far), match_iou=0.3)[0] == 1.0
    # 2 boxes vs 1 matching box: F1 = 2*1/3
    score, tallies = pair_score("detect", person("a", box, other), person("b", near))
    assert score == pytest.approx(2 / 3) and tallies["crazing"].agreed == 0 and tallies["scratches"].score == 1.0
    assert pair_score("detect", person("a"), person("b"))[0] == 1.0  # both: no defect
    assert item_agreement("detect", [person("a", box), person("b", near), person("c", far)]) == 0.0


def test_segment_mask_iou_and_verdict() -> None:
    m1 = np.zeros((10, 10), np.uint8)
    m1[0:5, 0:4] = 2
    m2 = np.zeros((10, 10), np.uint8)
    m2[0:5, 0:5] = 2
    masks = {"m1": m1, "m2": m2}
    a = person("a", ItemLabel("Crack", (0, 0, 4, 5)), mask="m1", verdict="Crack")
    b = person("b", ItemLabel("Crack", (0, 0, 5, 5)), mask="m2", verdict="Crack")
    score, tallies = pair_score("segment", a, b, load_mask=masks.__getitem__, classes=["OK", "Crack"])
    assert score == pytest.approx(20 / 25) and tallies["Crack"].score == pytest.approx(0.8)
    c = person("c", ItemLabel("Crack", (0, 0, 5, 5)), mask="m2", verdict="OK")
    assert pair_score("segment", a, c, load_mask=masks.__getitem__, classes=["OK", "Crack"])[0] == 0.0


def test_bad_threshold_and_unknown_annotator_are_clear_errors() -> None:
    items = [item(1, [person("ann@x", ItemLabel("a")), person("bob@x", ItemLabel("a"))])]
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(AgreementError, match="threshold"):
            agreement_report(items, "classify", ["a"], threshold=bad)
    with pytest.raises(AgreementError, match=r"'eve@x' labelled nothing.*ann@x, bob@x"):
        agreement_report(items, "classify", ["a"], threshold=0.5, annotator="eve@x")
    with pytest.raises(ConfigError, match=r"overlap\.share"):
        OverlapSpec(annotators=2, share=1.5)
    with pytest.raises(ConfigError, match=r"agreement\.min_item"):
        AgreementSpec(min_item=2.0)
    with pytest.raises(AgreementError, match="threshold"):
        build_queue(items, ["a"], threshold=7, probabilities=None)


def test_manifest_keeps_single_annotator_lines_byte_identical(tmp_path) -> None:
    old = item(1, [person("ann@x", ItemLabel("a"))])
    line = (
        '{"annotation_ids": [], "annotators": ["ann@x"], "conflicted": false, "height": 100, '
        '"image": "images/1.jpg", "labels": [{"box": null, "class": "a"}], "original_name": "1.jpg", '
        f'"sha256": "{1:064x}", "split": "train", "task_id": 1, "width": 100}}\n'
    )
    write_manifest(tmp_path / "m.jsonl", [old])
    assert (tmp_path / "m.jsonl").read_text() == line
    both = item(2, [person("ann@x", ItemLabel("a")), person("bob@x", ItemLabel("b"))], agreement=0.0)
    write_manifest(tmp_path / "m.jsonl", [old, both])
    assert parse_manifest((tmp_path / "m.jsonl").read_text())[1] == both


def test_provenance_rules() -> None:
    result = [{"type": "choices", "value": {"choices": ["a"]}, "from_name": "choice", "to_name": "image"}]
    edited = [{"type": "choices", "value": {"choices": ["b"]}, "from_name": "choice", "to_name": "image"}]
    prediction = {"id": 7, "result": [{**result[0], "score": 0.9}]}
    assert annotation_provenance("classify", {"result": result}, IMPORT_IDENTITY, [], 1, 1) == "imported"
    changed_import = {"result": result, "updated_by": 1}
    assert annotation_provenance("classify", changed_import, IMPORT_IDENTITY, [], 1, 1) == "edited"
    assert annotation_provenance("classify", {"result": result}, "ann@x", [prediction], 1, 1) == "human"
    accepted = {"result": result, "parent_prediction": 7}
    assert annotation_provenance("classify", accepted, "ann@x", [prediction], 1, 1) == "accepted"
    changed = {"result": edited, "parent_prediction": 7}
    assert annotation_provenance("classify", changed, "ann@x", [prediction], 1, 1) == "edited"
    items = [
        ManifestItem("a" * 64, 1, "i", 1, 1, "x", "train", (ItemLabel("a"),), provenance="imported"),
        ManifestItem("b" * 64, 2, "i", 1, 1, "y", "train", (ItemLabel("a"),), provenance="accepted"),
        ManifestItem("c" * 64, 3, "i", 1, 1, "z", "train", (ItemLabel("b"),)),
    ]
    mix = provenance_mix(items, ["a", "b"])
    assert mix["a"]["imported"] == 1 and mix["a"]["accepted"] == 1 and mix["b"]["unknown"] == 1


def test_review_ranking_finds_planted_flips() -> None:
    """Three well-separated classes, 5 of 90 labels flipped: cleanlab puts the flips on top."""
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    true = np.repeat(np.arange(3), 30)
    probs = np.full((90, 3), 0.05)
    probs[np.arange(90), true] = 0.9
    probs += rng.uniform(0, 0.05, probs.shape)
    probs /= probs.sum(axis=1, keepdims=True)
    given = true.copy()
    flipped = [3, 17, 40, 61, 88]
    for k in flipped:
        given[k] = (true[k] + 1) % 3
    items = [
        ManifestItem(f"{k:064x}", k + 1, f"images/{k}.jpg", 9, 9, f"{k}.jpg", "train", (ItemLabel(classes[given[k]]),))
        for k in range(90)
    ]
    issues, quality = label_issues(given, probs)
    assert sorted(issues) == flipped and quality.shape == (90,)
    queue = build_queue(
        items, classes, threshold=1.0, probabilities=lambda its, labels: (probs, np.ones(len(its), bool))
    )
    assert sorted(e.task_id - 1 for e in queue) == flipped
    assert all(e.reason == "suspected label error" and e.suggested != e.given for e in queue)
    assert [e.rank for e in queue] == [1, 2, 3, 4, 5]


def test_the_cycle_does_not_retry_a_snapshot_stopped_by_a_config_edited_in_the_ui() -> None:
    from crux.loop.steps import ProjectDriftError
    from flows.tasks import _retry_unless_config_drift

    class State:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def result(self) -> None:
            raise self.exc

    assert not _retry_unless_config_drift(None, None, State(ProjectDriftError("neu-det differs from params.yaml")))
    assert _retry_unless_config_drift(None, None, State(ConnectionError("reset")))


def test_cross_validated_review_finds_planted_flips_in_synthetic_images(tmp_path) -> None:
    """Three textures (horizontal stripes, vertical stripes, speckle), 20 images each, 3 labels flipped: the
    queue, built from image features and 5-fold cross-validation, starts with exactly the flipped images."""
    from PIL import Image

    from crux.label.review import cross_val_source

    rng = np.random.default_rng(1)
    classes = ["horizontal", "vertical", "speckle"]
    yy, xx = np.mgrid[0:64, 0:64]
    items = []
    flipped = {5, 27, 48}
    for k in range(60):
        cls = k // 20
        period = rng.uniform(5, 9)
        if cls == 0:
            base = 128 + 90 * np.sin(2 * np.pi * yy / period)
        elif cls == 1:
            base = 128 + 90 * np.sin(2 * np.pi * xx / period)
        else:
            base = rng.uniform(0, 255, (64, 64))
        pixels = np.clip(base + rng.normal(0, 20, (64, 64)), 0, 255).astype(np.uint8)
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / "images" / f"{k}.png")
        given = classes[(cls + 1) % 3] if k in flipped else classes[cls]
        items.append(ManifestItem(f"{k:064x}", k, f"images/{k}.png", 64, 64, f"{k}.png", "train", (ItemLabel(given),)))
    queue = build_queue(items, classes, threshold=1.0, probabilities=cross_val_source(tmp_path, 3, folds=5))
    assert {e.task_id for e in queue[:3]} == flipped
    assert all(e.suggested == classes[e.task_id // 20] for e in queue[:3])


def test_prepare_counts_where_the_training_labels_came_from(tmp_path) -> None:
    """The model card's `lineage.label_provenance` comes from prepared.json: train split only, per class."""
    import json

    from crux.data.synthetic_versions import write_synthetic_dataset
    from crux.train.prepare import prepare
    from crux.train.recipe import DataConfig

    data = write_synthetic_dataset(tmp_path, "classify", n_per_split=(8, 2, 2), size=32)
    manifest = data / "manifest.jsonl"
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    for n, row in enumerate(rows):
        row["provenance"] = ("imported", "human", "accepted", "edited")[n % 4]
    manifest.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    summary = prepare(data, tmp_path / "prep", DataConfig(kind="classify"))
    mix = summary["label_provenance"]
    assert sum(sum(row.values()) for row in mix.values()) == summary["counts"]["train"] == 8
    assert set().union(*mix.values()) <= {"imported", "human", "accepted", "edited"}


def test_model_card_records_the_training_labels_provenance(tmp_path) -> None:
    import json

    from edge_support import prepared_dataset, tiny_bundle

    from crux.ship.export import ExportConfig, export

    prepared = prepared_dataset(tmp_path / "data", "classify")
    info = json.loads((prepared / "prepared.json").read_text())
    info["label_provenance"] = {"ok": {"imported": 3, "human": 1}, "scratch": {"accepted": 2, "edited": 1}}
    (prepared / "prepared.json").write_text(json.dumps(info))
    card = export(
        tiny_bundle(tmp_path / "model.pt", "classify"),
        tmp_path / "out",
        ExportConfig(exporter="torchscript", parity_images=2),
        prepared_dir=prepared,
    )
    assert card["lineage"]["label_provenance"] == info["label_provenance"]


def test_production_model_ranks_only_images_it_did_not_train_on(tmp_path) -> None:
    """`crux review --model`: the model saw the train split, so only val/test images are ranked."""
    from types import SimpleNamespace

    from crux.label.review import ReviewError, model_source

    classes = ["a", "b"]
    items = []
    for k in range(40):
        split = "train" if k < 20 else ("val" if k < 30 else "test")
        given = "b" if k in (3, 25) else ("a" if k % 2 else "b")
        items.append(ManifestItem(f"{k:064x}", k, f"images/{k}.png", 8, 8, f"{k}.png", split, (ItemLabel(given),)))

    class Model:
        classes = ("a", "b")

        def predict_file(self, path):  # confident and right, except that it says "a" for images 3 and 25
            k = int(path.stem)
            p = 0.97 if (k % 2 or k in (3, 25)) else 0.03
            return SimpleNamespace(probs=np.array([p, 1 - p]))

    queue = build_queue(items, classes, threshold=1.0, probabilities=model_source(tmp_path, Model(), classes))
    assert [e.task_id for e in queue] == [25]  # 3 is a train image: in-sample for this model, not ranked
    with pytest.raises(ReviewError, match="classes"):
        model_source(tmp_path, SimpleNamespace(classes=("x", "y")), classes)


def test_printed_urls_use_the_public_address(tmp_path) -> None:
    import yaml
    from typer.testing import CliRunner

    from crux.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"labelstudio": {"public_url": "https://label.plant.example/"}}))
    result = CliRunner().invoke(app, ["labelstudio", "url", "--params", str(params)])
    assert result.exit_code == 0 and result.output.strip() == "https://label.plant.example"
    params.write_text(yaml.safe_dump({"labelstudio": {"public_url": "label.plant.example"}}))
    result = CliRunner().invoke(app, ["labelstudio", "url", "--params", str(params)])
    assert isinstance(result.exception, ConfigError) and "public_url" in str(result.exception)

"""Issue #23: one card schema for predict, publish and the edge; publish refuses a model that cannot run as the edge
runs it, and a production release that fails verification; `crux predict` on a damaged model folder is one error
line naming the item."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_support import exported, onnx_graph_model, with_model
from PIL import Image

from crux.inference import IMAGE_SIZE_LIMITS, ModelCard, ModelError, OnnxModel
from crux.ship.gate import GateConfig
from crux.ship.listing import list_models
from crux.ship.publish import publish, rollback
from crux.ship.releases import PublishError, read_pointer
from crux.ship.signing import generate_private_key

KEY = generate_private_key()


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("card-exports")
    return {
        "cls": exported(root, "classify", seed=0),
        "cls2": exported(root, "classify", seed=1),
        "det": exported(root, "detect", seed=0),
    }


def _changed(like: Path, dest: Path, changes: dict[str, Any]) -> Path:
    return with_model(like, dest, (like / "model.onnx").read_bytes(), changes)


# Each: how to damage a good classifier export, and a piece of the refusal that names what is wrong.
BROKEN: dict[str, tuple[Callable[[dict[str, Path], Path], Path], str]] = {
    "random bytes": (lambda e, d: with_model(e["cls"], d, os.urandom(4096)), "ONNX Runtime cannot load it"),
    "empty file": (lambda e, d: with_model(e["cls"], d, b""), "ONNX Runtime cannot load it"),
    "detector under a classify card": (
        lambda e, d: with_model(e["cls"], d, e["det"] / "model.onnx"),
        "output shape",
    ),
    "image_size 0": (lambda e, d: _changed(e["cls"], d, {"input.image_size": 0}), "input.image_size 0"),
    "image_size 200000": (
        lambda e, d: _changed(e["cls"], d, {"input.image_size": 200000}),
        "input.image_size 200000",
    ),
    "std 0": (lambda e, d: _changed(e["cls"], d, {"input.std": 0}), "input.std 0"),
    "foreign format": (lambda e, d: _changed(e["cls"], d, {"format": "other-card/9"}), "format 'other-card/9'"),
    "onnx.file outside": (
        lambda e, d: _changed(e["cls"], d, {"onnx.file": "../../../../etc/passwd"}),
        "onnx.file '../../../../etc/passwd' is not a plain file name",
    ),
    "sha256 of another model": (
        lambda e, d: _changed(e["cls"], d, {"onnx.sha256": "0" * 64}),
        "does not match the sha256 in its card",
    ),
    "NaN on every frame": (
        lambda e, d: with_model(
            e["cls"], d, onnx_graph_model(d.parent / f"{d.name}.onnx", 1, 32, [1, 0, 0], nan_above=-9)
        ),
        "non-finite",
    ),
    "three classes, four outputs": (
        lambda e, d: with_model(e["cls"], d, onnx_graph_model(d.parent / f"{d.name}.onnx", 1, 32, [1, 0, 0, 0])),
        "output shape",
    ),
    "wrong channels for the network": (lambda e, d: _changed(e["cls"], d, {"input.channels": 3}), "input shape"),
    "classes twice": (lambda e, d: _changed(e["cls"], d, {"classes": ["ok", "ok", "spot"]}), "name a class twice"),
    "ok_class not a class": (lambda e, d: _changed(e["cls"], d, {"ok_class": "fine"}), "ok_class 'fine'"),
    "unknown kind": (lambda e, d: _changed(e["cls"], d, {"kind": "teleport"}), "kind 'teleport'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_publish_refuses_a_model_that_cannot_run_as_the_edge_runs_it(
    case: str, exports: dict[str, Path], tmp_path: Path
) -> None:
    make, message = BROKEN[case]
    candidate = make(exports, tmp_path / "candidate")
    remote = tmp_path / "remote"
    with pytest.raises(PublishError) as refused:
        # --force overrides the gate, never these checks.
        publish(str(remote), "line-a", candidate, KEY, GateConfig(), force=True, reason="try anyway")
    assert message in str(refused.value), str(refused.value)
    assert str(candidate) in str(refused.value)
    assert not remote.exists()  # nothing signed, nothing written


def test_the_same_card_check_guards_predict_and_the_model_class(exports: dict[str, Path], tmp_path: Path) -> None:
    card = json.loads((exports["cls"] / "card.json").read_text())
    parsed = ModelCard.parse(card)
    assert parsed.classes == ("ok", "scratch", "spot") and parsed.input.std > 0 and parsed.files
    lo, hi = IMAGE_SIZE_LIMITS
    for size in (lo - 1, hi + 1, 32.0, True, "32"):
        with pytest.raises(ModelError, match="image_size"):
            ModelCard.parse({**card, "input": {**card["input"], "image_size": size}})
    for std in (0, -1, float("nan"), float("inf"), None):
        with pytest.raises(ModelError, match=r"input\.std"):
            ModelCard.parse({**card, "input": {**card["input"], "std": std}})
    with pytest.raises(ModelError, match=r"input\.mean"):
        ModelCard.parse({**card, "input": {**card["input"], "mean": float("nan")}})
    for classes in ([], ["ok", ""], ["ok", 3], "ok"):
        with pytest.raises(ModelError, match="classes"):
            ModelCard.parse({**card, "classes": classes})
    with pytest.raises(ModelError, match="not a model card"):
        OnnxModel(exports["cls"] / "model.onnx", {**card, "input": {**card["input"], "std": 0}})


def test_publish_refuses_when_production_fails_verification(exports: dict[str, Path], tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    publish(str(remote), "line-a", exports["cls"], KEY, GateConfig())
    publish(str(remote), "line-a", exports["cls2"], KEY, GateConfig(tolerance=1.0))
    model = remote / "line-a" / "000002" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in production's model
    model.write_bytes(bytes(data))
    with pytest.raises(PublishError, match=r"v2's model\.onnx does not match the sha256 in its signed manifest"):
        publish(str(remote), "line-a", exports["cls"], KEY, GateConfig(tolerance=1.0))
    with pytest.raises(PublishError, match=r"v2's model\.onnx"):  # forcing does not skip it either
        publish(str(remote), "line-a", exports["cls"], KEY, GateConfig(tolerance=1.0), force=True, reason="x")
    assert read_pointer(str(remote / "line-a"), [KEY.public_key()])["version"] == 2  # type: ignore[index]
    # The way out: roll back to the intact v1 (with a reason), then publishing works again.
    with pytest.raises(PublishError, match="rollback needs --reason"):
        rollback(str(remote), "line-a", KEY, to_version=1)
    rollback(str(remote), "line-a", KEY, to_version=1, reason="v2 damaged on the remote")
    assert publish(str(remote), "line-a", exports["cls"], KEY, GateConfig(tolerance=1.0)).version == 3
    # A rollback onto a damaged version is refused too (edges would refuse it).
    with pytest.raises(PublishError, match=r"v2's model\.onnx"):
        rollback(str(remote), "line-a", KEY, to_version=2, reason="go back")
    assert [e["action"] for e in list_models(str(remote), "line-a", [KEY.public_key()])["events"]] == [
        "publish",
        "publish",
        "rollback",
        "publish",
    ]


def test_publish_runs_the_model_on_validation_images(exports: dict[str, Path], tmp_path: Path) -> None:
    bright = tmp_path / "val.png"
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(bright)
    nan_on_bright = with_model(
        exports["cls"], tmp_path / "nan", onnx_graph_model(tmp_path / "nan.onnx", 1, 32, [3, 0, 0], nan_above=1.0)
    )
    remote = str(tmp_path / "remote")
    with pytest.raises(PublishError, match="non-finite"):  # fine on the synthetic frame, NaN on the val image
        publish(remote, "line-a", nan_on_bright, KEY, GateConfig(), check_images=[bright])
    assert publish(remote, "line-a", exports["cls"], KEY, GateConfig(), check_images=[bright]).version == 1


# ----------------------------------------------------------------------------------------------------------------
# crux predict on a damaged model folder: one `error:` line naming the item, exit 1, no traceback


def _card_text(text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / "card.json").write_text(text)


def _card_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        card = json.loads((folder / "card.json").read_text())
        change(card)
        (folder / "card.json").write_text(json.dumps(card))

    return apply


def _model_bytes(data: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Damage model.onnx and, so the damage reaches ONNX Runtime, make the card vouch for the damaged bytes."""

    def apply(folder: Path) -> None:
        import hashlib

        damaged = data((folder / "model.onnx").read_bytes())
        (folder / "model.onnx").write_bytes(damaged)
        _card_edit(lambda c: c["onnx"].update(sha256=hashlib.sha256(damaged).hexdigest()))(folder)

    return apply


DAMAGED: dict[str, tuple[Callable[[Path], None], str]] = {
    "bad card.json": (_card_text("{not json"), "card.json: not a model card"),
    "empty card.json": (_card_text(""), "card.json: not a model card"),
    "list card.json": (_card_text("[1, 2]"), "a JSON list, not an object"),
    "NaN in card.json": (_card_text('{"kind": NaN}'), "NaN is not a JSON number"),
    "binary card.json": (lambda f: (f / "card.json").write_bytes(b"\xff\xfe\x00"), "card.json: not a model card"),
    "missing kind": (_card_edit(lambda c: c.pop("kind")), "kind None"),
    "unknown kind": (_card_edit(lambda c: c.update(kind="teleport")), "kind 'teleport'"),
    "missing classes": (_card_edit(lambda c: c.pop("classes")), "classes None"),
    "input.channels 2": (_card_edit(lambda c: c["input"].update(channels=2)), "input.channels 2 is not 1 or 3"),
    "image_size 200000": (_card_edit(lambda c: c["input"].update(image_size=200000)), "input.image_size 200000"),
    "card path outside": (
        _card_edit(lambda c: c["onnx"].update(file="../../../../etc/passwd")),
        "onnx.file '../../../../etc/passwd' is not a plain file name",
    ),
    "model symlinked outside": (
        lambda f: ((f / "model.onnx").unlink(), (f / "model.onnx").symlink_to("/etc/hostname")),
        "not a regular file inside",
    ),
    "card.json linked outside": (
        lambda f: ((f / "card.json").unlink(), (f / "card.json").symlink_to("/etc/hostname")),
        "card.json: a link to a file outside",
    ),
    "missing model.onnx": (lambda f: (f / "model.onnx").unlink(), "model.onnx: model file missing"),
    "garbage model.onnx": (_model_bytes(lambda b: b"garbage" * 100), "ONNX Runtime cannot load it"),
    "empty model.onnx": (_model_bytes(lambda b: b""), "ONNX Runtime cannot load it"),
    "truncated model.onnx": (_model_bytes(lambda b: b[: len(b) // 2]), "ONNX Runtime cannot load it"),
    "model.onnx replaced": (lambda f: (f / "model.onnx").write_bytes(b"x"), "does not match the sha256 in its card"),
    "bad manifest.json": (lambda f: (f / "manifest.json").write_text("{}"), "manifest.json: not a release manifest"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_predict_on_a_damaged_model_folder_is_one_error_line(
    case: str,
    exports: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import shutil

    from crux.cli import main

    folder = tmp_path / "model"
    shutil.copytree(exports["cls"], folder)
    damage, item = DAMAGED[case]
    damage(folder)
    frame = tmp_path / "frame.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(frame)
    monkeypatch.setattr("sys.argv", ["crux", "predict", str(folder), str(frame)])
    with pytest.raises(SystemExit) as exited:
        main()
    output = capfd.readouterr()
    text = " ".join((output.out + output.err).split())
    assert exited.value.code == 1, text
    assert text.startswith("error:") and "Traceback" not in text
    assert "".join(item.split()) in "".join(text.split()), text

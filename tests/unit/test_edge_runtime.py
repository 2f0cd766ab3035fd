"""Edge runtime: verified updates (tamper, wrong key, older version → rejected, old model kept), hot swap while
frames stream, outbox keeping, folder watching, restart."""

from __future__ import annotations

import io
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_support import exported, onnx_graph_model, with_model
from PIL import Image

from crux.config import ConfigError, from_mapping
from crux.edge.runtime import EdgeConfig, EdgeRuntime, LiveView, decide, glob_source, stdin_source, watch_folder
from crux.inference import OnnxModel
from crux.ship.gate import GateConfig
from crux.ship.publish import publish, rollback
from crux.ship.signing import generate_private_key, sign

LINE = "line-a"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("edge-exports")
    return {
        "v1": exported(root, "classify", seed=0, metrics={"macro_f1": 0.8}),
        "v2": exported(root, "classify", seed=1, metrics={"macro_f1": 0.8}),
        "det": exported(root, "detect", seed=0, metrics={"map50": 0.5}),
        "seg": exported(root, "segment", seed=0, metrics={"miou": 0.5}),
    }


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(40):
        p = root / f"frame_{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


class FakeOutbox:
    def __init__(self) -> None:
        self.items: list[tuple[bytes, dict[str, Any], bool]] = []

    def enqueue(self, image: bytes, metadata: dict[str, Any], *, ng: bool, **_: Any) -> None:
        self.items.append((image, metadata, ng))


def make_runtime(tmp_path: Path, key: Any, cfg: EdgeConfig | None = None, **kw: Any) -> tuple[EdgeRuntime, list]:
    events: list[tuple[str, dict]] = []
    rt = EdgeRuntime(
        str(tmp_path / "remote" / LINE),
        LINE,
        cfg or EdgeConfig(poll_interval_s=0.05),
        [key.public_key()],
        tmp_path / "state",
        on_event=lambda n, d: events.append((n, d)),
        seed=0,
        **kw,
    )
    return rt, events


def test_installs_then_follows_new_versions(tmp_path: Path, exports: dict[str, Path], frames: list[Path]) -> None:
    key = generate_private_key()
    remote = str(tmp_path / "remote")
    publish(remote, LINE, exports["v1"], key, GateConfig())
    rt, events = make_runtime(tmp_path, key)
    assert rt.check_update() and rt.running.version == 1  # type: ignore[union-attr]
    assert not rt.check_update()  # nothing new: no download, no swap
    record = rt.process(frames[0])
    assert record["model_version"] == 1 and record["verdict"] in ("OK", "NG") and record["latency_ms"] > 0
    publish(remote, LINE, exports["v2"], key, GateConfig())
    assert rt.check_update() and rt.running.version == 2  # type: ignore[union-attr]
    assert [n for n, _ in events] == ["model_swapped", "model_swapped"]
    # Only the running and the previous release stay on disk.
    assert len(list((tmp_path / "state" / "models").iterdir())) == 2


def _setup_v1_running(tmp_path: Path, exports: dict[str, Path]) -> tuple[Any, EdgeRuntime, list, str]:
    key = generate_private_key()
    remote = str(tmp_path / "remote")
    publish(remote, LINE, exports["v1"], key, GateConfig())
    rt, events = make_runtime(tmp_path, key)
    assert rt.check_update()
    return key, rt, events, remote


def _assert_rejected_and_v1_kept(rt: EdgeRuntime, events: list, frames: list[Path], match: str) -> None:
    assert not rt.check_update()
    assert rt.running is not None and rt.running.version == 1
    assert events[-1][0] == "update_rejected" and match in events[-1][1]["reason"], events[-1]
    assert rt.process(frames[0])["model_version"] == 1  # still inspecting with the old model


def test_tampered_model_is_rejected(tmp_path: Path, exports: dict[str, Path], frames: list[Path]) -> None:
    key, rt, events, remote = _setup_v1_running(tmp_path, exports)
    publish(remote, LINE, exports["v2"], key, GateConfig())
    model = tmp_path / "remote" / LINE / "000002" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF
    model.write_bytes(bytes(data))
    _assert_rejected_and_v1_kept(rt, events, frames, "sha256")
    assert not [p for p in (tmp_path / "state" / "models").iterdir() if p.name.startswith(".incoming")]


def test_tampered_manifest_is_rejected(tmp_path: Path, exports: dict[str, Path], frames: list[Path]) -> None:
    key, rt, events, remote = _setup_v1_running(tmp_path, exports)
    publish(remote, LINE, exports["v2"], key, GateConfig())
    path = tmp_path / "remote" / LINE / "000002" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["metrics"]["macro_f1"] = 0.99
    path.write_text(json.dumps(manifest))
    _assert_rejected_and_v1_kept(rt, events, frames, "tampered")


def test_manifest_swapped_with_matching_pointer_still_needs_the_signature(
    tmp_path: Path, exports: dict[str, Path], frames: list[Path]
) -> None:
    # An attacker with write access replaces the model and rewrites manifest and pointer hashes consistently,
    # but cannot sign them.
    import hashlib

    key, rt, events, remote = _setup_v1_running(tmp_path, exports)
    publish(remote, LINE, exports["v2"], key, GateConfig())
    vdir = tmp_path / "remote" / LINE / "000002"
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["files"]["model.onnx"]["sha256"] = "0" * 64
    mbytes = json.dumps(manifest).encode()
    (vdir / "manifest.json").write_bytes(mbytes)
    pointer = json.loads((tmp_path / "remote" / LINE / "current.json").read_text())
    pointer["manifest_sha256"] = hashlib.sha256(mbytes).hexdigest()
    (tmp_path / "remote" / LINE / "current.json").write_text(json.dumps(pointer))
    _assert_rejected_and_v1_kept(rt, events, frames, "signature")


def test_wrong_key_is_rejected(tmp_path: Path, exports: dict[str, Path], frames: list[Path]) -> None:
    _key, rt, events, remote = _setup_v1_running(tmp_path, exports)
    # Someone else publishes over the same line with their own key: current.json is theirs now.
    intruder = generate_private_key()
    shutil.rmtree(tmp_path / "remote" / LINE)
    publish(remote, LINE, exports["v1"], intruder, GateConfig())
    publish(remote, LINE, exports["v2"], intruder, GateConfig())
    _assert_rejected_and_v1_kept(rt, events, frames, "unknown key")


def test_older_version_and_replayed_pointer_are_rejected(
    tmp_path: Path, exports: dict[str, Path], frames: list[Path]
) -> None:
    key = generate_private_key()
    remote = str(tmp_path / "remote")
    publish(remote, LINE, exports["v1"], key, GateConfig())
    publish(remote, LINE, exports["v2"], key, GateConfig())
    rt, events = make_runtime(tmp_path, key)
    assert rt.check_update() and rt.running.version == 2  # type: ignore[union-attr]
    line_dir = tmp_path / "remote" / LINE
    # Replay: the genuinely signed pointer of version 1 copied back over current.json.
    shutil.copy(line_dir / "events" / "00000001.json", line_dir / "current.json")
    assert not rt.check_update() and rt.running.version == 2  # type: ignore[union-attr]
    assert "sequence" in events[-1][1]["reason"]
    # A signed pointer with a newer sequence but an older version that is not a rollback.
    pointer = json.loads((line_dir / "events" / "00000001.json").read_text())
    pointer.update(sequence=3)
    (line_dir / "current.json").write_text(json.dumps(sign(pointer, key)))
    assert not rt.check_update() and rt.running.version == 2  # type: ignore[union-attr]
    assert "not a signed rollback" in events[-1][1]["reason"]
    assert rt.process(frames[0])["model_version"] == 2


def test_signed_rollback_is_accepted_and_survives_restart(
    tmp_path: Path, exports: dict[str, Path], frames: list[Path]
) -> None:
    key = generate_private_key()
    remote = str(tmp_path / "remote")
    publish(remote, LINE, exports["v1"], key, GateConfig())
    publish(remote, LINE, exports["v2"], key, GateConfig())
    rt, _ = make_runtime(tmp_path, key)
    assert rt.check_update() and rt.running.version == 2  # type: ignore[union-attr]
    rollback(remote, LINE, key, reason="bad batch")
    assert rt.check_update() and rt.running.version == 1  # type: ignore[union-attr]
    assert rt.running.pointer["action"] == "rollback"  # type: ignore[union-attr]
    # Restart: resumes version 1 from disk and still refuses a replay of the version-2 pointer (sequence 2 < 3).
    line_dir = tmp_path / "remote" / LINE
    shutil.copy(line_dir / "events" / "00000002.json", line_dir / "current.json")
    rt2, events2 = make_runtime(tmp_path, key)
    assert rt2.resume() and rt2.running.version == 1  # type: ignore[union-attr]
    assert not rt2.check_update() and events2[-1][0] == "update_rejected"


def test_hot_swap_while_frames_stream(tmp_path: Path, exports: dict[str, Path], frames: list[Path]) -> None:
    """Every frame processed exactly once, by a complete model: its record equals that version's own output."""
    key = generate_private_key()
    remote = str(tmp_path / "remote")
    publish(remote, LINE, exports["v1"], key, GateConfig())
    rt, events = make_runtime(tmp_path, key, EdgeConfig(poll_interval_s=0.01))
    records: list[dict[str, Any]] = []
    published = threading.Event()

    def slow_frames():  # type: ignore[no-untyped-def]
        for i, f in enumerate(frames):
            if i == 10:
                publish(remote, LINE, exports["v2"], key, GateConfig())
                published.set()
            if i >= 10:
                # Give the poller time to swap while frames keep coming.
                threading.Event().wait(0.02)
            yield f

    n = rt.run(slow_frames(), records.append, poll=True)
    assert n == len(frames) == len(records)
    assert [r["image"] for r in records] == [str(f) for f in frames]  # each once, in order
    versions = [r["model_version"] for r in records]
    assert versions == sorted(versions) and versions[0] == 1 and versions[-1] == 2
    assert ("model_swapped", {"version": 2, "action": "publish", "sequence": 2}) in events
    reference = {1: OnnxModel.from_dir(exports["v1"]), 2: OnnxModel.from_dir(exports["v2"])}
    for r, f in zip(records, frames, strict=True):
        expected = reference[r["model_version"]].predict_file(f)
        assert r["label"] == expected.label and r["score"] == pytest.approx(expected.score, abs=1e-5)


def test_outbox_keeps_ng_uncertain_and_sampled_ok(tmp_path: Path, exports: dict[str, Path], frames: list[Path]) -> None:
    key = generate_private_key()
    publish(str(tmp_path / "remote"), LINE, exports["v1"], key, GateConfig())
    outbox = FakeOutbox()
    cfg = EdgeConfig(ok_sample_rate=0.5, uncertain_margin=0.05, station="st-1")
    rt, _ = make_runtime(tmp_path, key, cfg, outbox=outbox)
    rt.wait_for_model(timeout_s=5)
    records = [rt.process(f) for f in frames]
    kept = [r for r in records if r["kept"]]
    assert len(outbox.items) == len(kept)
    assert all(r["kept"] == "ng" for r in records if r["verdict"] == "NG")
    assert {r["kept"] for r in records if r["verdict"] == "OK"} <= {"uncertain", "sample", None}
    ok_kept = [r for r in records if r["verdict"] == "OK" and r["kept"] == "sample"]
    ok_all = [r for r in records if r["verdict"] == "OK" and not r["uncertain"]]
    if ok_all:
        assert 0 < len(ok_kept) < len(ok_all) or len(ok_all) < 4  # a sample, not all or none
    image, meta, ng = outbox.items[0]
    assert Image.open(io.BytesIO(image)).size == (48, 40)
    assert meta["station"] == "st-1" and meta["line"] == LINE and meta["model_version"] == f"{LINE}.v1"
    assert meta["verdict"] in ("ok", "ng") and ng == (meta["verdict"] == "ng")
    from crux.collect.schemas import CaptureMetadata

    for _, meta, _ in outbox.items:
        CaptureMetadata.model_validate(meta)  # what the ingest service accepts


def test_detector_decision_and_error_frames(tmp_path: Path, exports: dict[str, Path], frames: list[Path]) -> None:
    key = generate_private_key()
    publish(str(tmp_path / "remote"), LINE, exports["det"], key, GateConfig())
    outbox = FakeOutbox()
    rt, _ = make_runtime(tmp_path, key, outbox=outbox)
    rt.wait_for_model(timeout_s=5)
    for f in frames[:5]:
        r = rt.process(f)
        assert (r["verdict"] == "NG") == bool(r["boxes"])
        assert r["label"] == (r["boxes"][0]["label"] if r["boxes"] else "OK")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    broken = rt.process(bad)
    assert "error" in broken and broken["verdict"] == "error"  # never OK: the line rejects what was not judged
    from crux.collect.schemas import CaptureMetadata

    for _, meta, _ in outbox.items:
        CaptureMetadata.model_validate(meta)


def test_decide_thresholds(exports: dict[str, Path]) -> None:
    from crux.inference import Result

    model = OnnxModel.from_dir(exports["v1"])
    probs = np.array([0.55, 0.40, 0.05], np.float32)
    result = Result("ok", 0.55, dict(zip(model.classes, map(float, probs), strict=True)), [], probs)
    assert decide(model, result, EdgeConfig(uncertain_margin=0.0)).verdict == "OK"  # ng score 0.45 < 0.5
    assert decide(model, result, EdgeConfig(ng_threshold=0.4, uncertain_margin=0.0)).verdict == "NG"
    assert decide(model, result, EdgeConfig(uncertain_margin=0.2)).uncertain  # top-2 gap 0.15
    with pytest.raises(ConfigError):
        from_mapping(EdgeConfig, {"ok_sample_rate": 2.0}, "edge")


def test_sources(tmp_path: Path, frames: list[Path]) -> None:
    assert list(glob_source(str(frames[0].parent / "frame_00*.png"))) == frames[:10]
    assert list(stdin_source(io.StringIO(f"{frames[0]}\n\n {frames[1]} \n"))) == frames[:2]
    folder = tmp_path / "watch"
    folder.mkdir()
    shutil.copy(frames[0], folder / "old.png")
    stop = threading.Event()
    seen: list[Path] = []

    def consume() -> None:
        for p in watch_folder(folder, stop, interval_s=0.01):
            seen.append(p)
            if len(seen) == 3:
                stop.set()

    t = threading.Thread(target=consume)
    t.start()
    threading.Event().wait(0.3)  # let the watcher take its first inventory (old.png) before new files arrive
    for i in range(3):
        shutil.copy(frames[i], folder / f"new_{i}.png")
        (folder / f"notes_{i}.txt").write_text("ignored")
        threading.Event().wait(0.05)
    t.join(timeout=10)
    stop.set()
    assert [p.name for p in seen] == ["new_0.png", "new_1.png", "new_2.png"]  # each once, pre-existing skipped


def test_live_view_renders(tmp_path: Path) -> None:
    view = LiveView()
    view.update(
        {
            "image": "a.png",
            "verdict": "NG",
            "label": "spot",
            "score": 0.9,
            "boxes": [],
            "model_version": 1,
            "latency_ms": 1.5,
            "uncertain": False,
            "kept": "ng",
        }
    )
    view.update({"image": "b.png", "error": "OSError: x", "model_version": 1})
    # Names and messages are shown as they are: "[/x]" neither crashes the view nor vanishes.
    view.update({"image": "[/x].png", "error": "ImageError: [/x].png: [b]bad", "verdict": "error", "model_version": 1})
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160)
    console.print(view.render())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "a.png" in text and "ERROR" in text and view.counts["NG"] == 1
    assert "[/x].png" in text and "[b]bad" in text


def test_segmenter_frames_carry_regions_to_the_outbox_and_the_overlay(
    tmp_path: Path, exports: dict[str, Path], frames: list[Path]
) -> None:
    from crux.collect.schemas import CaptureMetadata
    from crux.postprocess import rle_decode

    key = generate_private_key()
    publish(str(tmp_path / "remote"), LINE, exports["seg"], key, GateConfig())
    outbox = FakeOutbox()
    rt, _ = make_runtime(tmp_path, key, EdgeConfig(ok_sample_rate=0.0, uncertain_margin=0.0), outbox=outbox)
    rt.wait_for_model(timeout_s=5)
    view = LiveView(overlay_path=tmp_path / "overlay.png")
    records = [rt.process(f) for f in frames[:12]]
    for r in records:
        view.update(r)
        assert r["verdict"] == ("NG" if r["label"] != "ok" else "OK")
        for region in r["regions"]:
            mask = rle_decode(region["mask"]["counts"], *region["mask"]["size"])
            assert mask.shape == (40, 48) and int(mask.sum()) == region["area"]
    ng = [r for r in records if r["verdict"] == "NG"]
    assert ng and any(r["regions"] for r in ng), "the tiny untrained segmenter should reject some noise frames"
    assert len(outbox.items) == len(ng)
    for _, meta, _ in outbox.items:
        parsed = CaptureMetadata.model_validate(meta)
        parsed.check_boxes_inside(48, 40)  # masks of the frame's size, as the ingest service checks
    assert any(b.get("mask") for _, meta, _ in outbox.items for b in meta["boxes"])
    assert Image.open(tmp_path / "overlay.png").size == (48, 40)
    from rich.console import Console

    console = Console(file=io.StringIO(), width=160)
    console.print(view.render())
    assert "overlay.png" in console.file.getvalue()  # type: ignore[attr-defined]


def _bright_and_dark(tmp_path: Path) -> tuple[Path, Path]:
    """A white frame (normalised mean 2.0: the NaN model's NaN) and a dark one (its finite output)."""
    bright, dark = tmp_path / "bright.png", tmp_path / "dark.png"
    Image.fromarray(np.full((40, 48), 255, np.uint8)).save(bright)
    Image.fromarray(np.full((40, 48), 20, np.uint8)).save(dark)
    return bright, dark


def _nan_export(tmp_path: Path, like: Path) -> Path:
    """A classifier of `like`'s card that passes every check on a synthetic frame but outputs NaN on bright ones."""
    model = onnx_graph_model(tmp_path / "nan.onnx", 1, 32, [3.0, 0.0, 0.0], nan_above=1.0)
    return with_model(like, tmp_path / "nan-export", model)


def test_nan_output_is_rejected_kept_counted_and_rolled_back(
    tmp_path: Path, exports: dict[str, Path], frames: list[Path]
) -> None:
    from crux.collect.schemas import CaptureMetadata
    from crux.edge.heartbeat import heartbeat_payload

    key = generate_private_key()
    remote = str(tmp_path / "remote")
    publish(remote, LINE, exports["v1"], key, GateConfig())
    bright, dark = _bright_and_dark(tmp_path)
    outbox = FakeOutbox()
    cfg = EdgeConfig(poll_interval_s=0.05, rollback_after_model_errors=3, ok_sample_rate=0.0)
    rt, events = make_runtime(tmp_path, key, cfg, outbox=outbox)
    assert rt.wait_for_model(timeout_s=5).version == 1
    publish(remote, LINE, _nan_export(tmp_path, exports["v1"]), key, GateConfig(tolerance=1.0))
    assert rt.check_update() and rt.running.version == 2  # type: ignore[union-attr]
    assert rt.process(dark)["verdict"] == "OK"  # the faulty model is fine on some frames
    for n in (1, 2):
        record = rt.process(bright)
        assert record["verdict"] == "error" and record["kept"] == "model_error" and "NaN" in record["error"]
        assert json.loads(json.dumps(record, allow_nan=False)) == record  # valid JSON: no NaN score anywhere
        assert rt.model_errors == n and rt.running.version == 2  # type: ignore[union-attr]
    assert len(outbox.items) == 2 and all(ng for _, _, ng in outbox.items)  # kept for labelling, never evicted
    for _, meta, _ in outbox.items:
        assert meta["verdict"] == "ng" and meta["prediction"] is None
        CaptureMetadata.model_validate(meta)  # the ingest service takes it
    rt.process(dark)  # a finite frame in between: the run of errors starts again
    for _ in range(3):
        assert rt.process(bright)["verdict"] == "error"
    assert rt.running.version == 1  # type: ignore[union-attr]  # the third in a row: back to v1, verified again
    rolled = [d for n, d in events if n == "model_rolled_back"]
    assert (
        rolled == [{"version": 2, "to": 1, "reason": rolled[0]["reason"]}]
        and "3 frames in a row" in rolled[0]["reason"]
    )
    assert rt.process(bright)["verdict"] in ("OK", "NG")  # v1 judges the frame
    assert heartbeat_payload(rt, None, 30.0)["model_errors"] == 5
    # The remote still points at v2: the box does not take it again, nor after a restart.
    assert not rt.check_update() and rt.running.version == 1  # type: ignore[union-attr]
    assert "rolled back on this box" in [d for n, d in events if n == "update_rejected"][-1]["reason"]
    again, _ = make_runtime(tmp_path, key, cfg)
    assert again.resume() and again.running.version == 1  # type: ignore[union-attr]
    assert not again.check_update() and again.running.version == 1  # type: ignore[union-attr]
    # A new release is a new decision: it is installed.
    publish(remote, LINE, exports["v2"], key, GateConfig(tolerance=1.0))
    assert again.check_update() and again.running.version == 3  # type: ignore[union-attr]


def test_without_a_previous_model_every_nan_frame_stays_rejected(tmp_path: Path, exports: dict[str, Path]) -> None:
    key = generate_private_key()
    publish(str(tmp_path / "remote"), LINE, _nan_export(tmp_path, exports["v1"]), key, GateConfig())
    bright, _ = _bright_and_dark(tmp_path)
    rt, events = make_runtime(tmp_path, key, EdgeConfig(rollback_after_model_errors=2))
    rt.wait_for_model(timeout_s=5)
    assert [rt.process(bright)["verdict"] for _ in range(4)] == ["error"] * 4
    assert rt.running.version == 1 and rt.model_errors == 4  # type: ignore[union-attr]
    assert [n for n, _ in events].count("rollback_impossible") == 2


def test_output_checks_refuse_nan_inf_and_wrong_shapes(exports: dict[str, Path]) -> None:
    from crux.inference import ModelOutputError

    model = OnnxModel.from_dir(exports["v1"])
    model.check_raw(np.zeros((2, 3), np.float32), 2)
    for raw in (np.array([[0.0, np.nan, 1.0]]), np.array([[np.inf, 0.0, 0.0]])):
        with pytest.raises(ModelOutputError, match="non-finite"):
            model.check_raw(raw, 1)
    for raw in (np.zeros((1, 4)), np.zeros((1, 3, 1)), np.zeros((2, 3)), np.zeros(3)):
        with pytest.raises(ModelOutputError, match="output shape"):
            model.check_raw(raw, 1)
    with pytest.raises(ModelOutputError):
        model.results_from_raw(np.full((1, 3), np.nan, np.float32), [(32, 32)])


def test_rollback_setting_is_validated() -> None:
    assert from_mapping(EdgeConfig, {"rollback_after_model_errors": 5}, "edge").rollback_after_model_errors == 5
    with pytest.raises(ConfigError, match="rollback_after_model_errors"):
        from_mapping(EdgeConfig, {"rollback_after_model_errors": 0}, "edge")

"""Issue #14: one release-identity check (line, version, signature, hash) for the edge, `crux predict` and publish;
one image opener with the pixel limit; key rotation; rejected updates logged once."""

from __future__ import annotations

import io
import logging
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edge_support import exported
from PIL import Image

from crux.edge.predict import open_model
from crux.edge.runtime import EdgeConfig, EdgeRuntime
from crux.inference import predict_paths
from crux.postprocess import ImageError, load_image, open_image
from crux.ship.fetch import fetch_release
from crux.ship.gate import GateConfig
from crux.ship.publish import publish, rollback
from crux.ship.releases import ReleaseError
from crux.ship.signing import generate_private_key, load_private_key, load_public_key, rotate_keys


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("identity-exports")
    return {
        "v1": exported(root, "classify", seed=0, metrics={"macro_f1": 0.8}),
        "v2": exported(root, "classify", seed=1, metrics={"macro_f1": 0.8}),
    }


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A few-byte PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def good_frame(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8)).save(path)
    return path


def runtime(tmp_path: Path, line: str, keys: list[Any], events: list) -> EdgeRuntime:
    return EdgeRuntime(
        str(tmp_path / "remote" / line),
        line,
        EdgeConfig(poll_interval_s=0.05),
        keys,
        tmp_path / f"state-{line}",
        on_event=lambda n, d: events.append((n, d)),
        seed=0,
    )


def test_another_lines_signed_release_is_refused_by_edge_predict_and_publish(
    tmp_path: Path, exports: dict[str, Path]
) -> None:
    key = generate_private_key()
    remote = tmp_path / "remote"
    publish(str(remote), "line-a", exports["v1"], key, GateConfig())
    publish(str(remote), "line-a", exports["v2"], key, GateConfig())
    publish(str(remote), "line-b", exports["v1"], key, GateConfig())
    events: list = []
    rt = runtime(tmp_path, "line-b", [key.public_key()], events)
    assert rt.check_update() and rt.running.version == 1  # type: ignore[union-attr]
    # Line A's genuinely signed v2 copied under line B's folder (higher version, newer sequence).
    shutil.copytree(remote / "line-a" / "000002", remote / "line-b" / "000002")
    shutil.copy(remote / "line-a" / "current.json", remote / "line-b" / "current.json")
    assert not rt.check_update()
    assert rt.running.version == 1  # type: ignore[union-attr]
    assert events[-1][0] == "update_rejected" and "'line-a', not 'line-b'" in events[-1][1]["reason"]
    # `crux predict` on line B's URL refuses it too.
    with pytest.raises(ReleaseError, match="line 'line-a', not 'line-b'"):
        open_model(str(remote / "line-b"), public_keys=[key.public_key()], cache_dir=tmp_path / "cache")
    # Publish and rollback read production through the same check.
    with pytest.raises(ReleaseError, match="line 'line-a', not 'line-b'"):
        publish(str(remote), "line-b", exports["v2"], key, GateConfig())
    with pytest.raises(ReleaseError, match="line 'line-a', not 'line-b'"):
        rollback(str(remote), "line-b", key, to_version=1, reason="test")


def test_manifest_of_another_line_under_a_matching_pointer_is_refused(tmp_path: Path, exports: dict[str, Path]) -> None:
    """The pointer names line B but the manifest it points at (hash matches) is line A's: refused."""
    import hashlib
    import json

    from crux.ship.signing import sign

    key = generate_private_key()
    remote = tmp_path / "remote"
    publish(str(remote), "line-a", exports["v1"], key, GateConfig())
    publish(str(remote), "line-b", exports["v1"], key, GateConfig())
    manifest = (remote / "line-a" / "000001" / "manifest.json").read_bytes()
    (remote / "line-b" / "000001" / "manifest.json").write_bytes(manifest)
    pointer = json.loads((remote / "line-b" / "current.json").read_text())
    pointer.update(manifest_sha256=hashlib.sha256(manifest).hexdigest())
    (remote / "line-b" / "current.json").write_text(json.dumps(sign(pointer, key)))
    with pytest.raises(ReleaseError, match="manifest of version 1 is for line 'line-a'"):
        fetch_release(str(remote / "line-b"), tmp_path / "dl", [key.public_key()], installed=None)


def test_open_image_refuses_a_decompression_bomb_before_decoding(tmp_path: Path) -> None:
    bomb = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match=r"bomb\.png.*(pixel limit|bomb)") as exc:
        load_image(bomb, 1)
    assert exc.value.reason == "too_large"
    # Under Pillow's own bomb threshold but over ours: refused from the header.
    with pytest.raises(ImageError, match="7000x7000 pixels"), open_image(bomb_png(tmp_path / "big.png", 7000, 7000)):
        pass
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "missing.png", 1)
    assert load_image(good_frame(tmp_path / "ok.png"), 1).shape == (40, 48, 1)


def test_one_bomb_frame_is_an_error_record_and_inspection_goes_on(tmp_path: Path, exports: dict[str, Path]) -> None:
    key = generate_private_key()
    publish(str(tmp_path / "remote"), "line-a", exports["v1"], key, GateConfig())
    events: list = []
    rt = runtime(tmp_path, "line-a", [key.public_key()], events)
    rt.wait_for_model(timeout_s=5)
    bomb, ok = bomb_png(tmp_path / "bomb.png"), good_frame(tmp_path / "ok.png")
    records: list = []
    assert rt.run([ok, bomb, ok], records.append, poll=False) == 3
    assert "error" not in records[0] and "error" not in records[2]
    assert records[1]["image"] == str(bomb)
    assert "ImageError" in records[1]["error"] and "pixel limit" in records[1]["error"]
    # `crux predict`: the batch goes on past the bomb too.
    model = open_model(str(tmp_path / "remote" / "line-a"), public_keys=[key.public_key()])
    out = list(predict_paths(model, [str(ok), str(bomb), str(ok)]))
    assert "error" in out[1] and "label" in out[0] and "label" in out[2]


def test_predict_on_a_line_url_leaves_no_temp_folder(tmp_path: Path, exports: dict[str, Path], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    key = generate_private_key()
    publish(str(tmp_path / "remote"), "line-a", exports["v1"], key, GateConfig())
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    model = open_model(str(tmp_path / "remote" / "line-a"), public_keys=[key.public_key()])
    assert list(tmp.iterdir()) == []
    assert "label" in next(iter(predict_paths(model, [str(good_frame(tmp_path / "ok.png"))])))


def test_rejected_update_is_logged_once_per_rejected_release(
    tmp_path: Path, exports: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    key = generate_private_key()
    remote = str(tmp_path / "remote")
    publish(remote, "line-a", exports["v1"], key, GateConfig())
    events: list = []
    rt = runtime(tmp_path, "line-a", [key.public_key()], events)
    assert rt.check_update()
    intruder = generate_private_key()
    shutil.rmtree(tmp_path / "remote" / "line-a")
    publish(remote, "line-a", exports["v2"], intruder, GateConfig())
    with caplog.at_level(logging.WARNING, logger="crux.edge.runtime"):
        for _ in range(5):
            assert not rt.check_update()
    assert len([r for r in caplog.records if "update rejected" in r.getMessage()]) == 1
    assert [n for n, _ in events].count("update_rejected") == 1


def test_key_rotation_publish_with_the_new_key_over_production_signed_by_the_old(
    tmp_path: Path, exports: dict[str, Path]
) -> None:
    from crux.ship.signing import init_keys

    private, public = tmp_path / "keys" / "publish.key", tmp_path / "keys" / "publish.pub"
    old_id = init_keys(private, public)
    old_key = load_private_key(private.read_bytes())
    remote = str(tmp_path / "remote")
    publish(remote, "line-a", exports["v1"], old_key, GateConfig())

    rotated_old_id, new_id, old_public, retired = rotate_keys(private, public)
    assert rotated_old_id == old_id != new_id
    assert retired.stat().st_mode & 0o777 == 0o600 and private.stat().st_mode & 0o777 == 0o600
    new_key = load_private_key(private.read_bytes())
    trusted = [load_public_key(public.read_bytes()), load_public_key(old_public.read_bytes())]
    # Without the trusted set, production (old key) is refused, as before the fix.
    with pytest.raises(ReleaseError, match="unknown key"):
        publish(remote, "line-a", exports["v2"], new_key, GateConfig())
    result = publish(remote, "line-a", exports["v2"], new_key, GateConfig(), trusted_keys=trusted)
    assert result.version == 2
    # An edge trusting both keys, running v1 (old key), accepts v2 (new key); rollback verifies both too.
    events: list = []
    rt = runtime(tmp_path, "line-a", trusted, events)
    assert rt.check_update() and rt.running.version == 2  # type: ignore[union-attr]
    assert rollback(remote, "line-a", new_key, to_version=1, reason="test", trusted_keys=trusted)["version"] == 1
    assert rt.check_update() and rt.running.version == 1  # type: ignore[union-attr]


def test_restart_removes_downloads_a_killed_edge_left_half_done(tmp_path: Path, exports: dict[str, Path]) -> None:
    key = generate_private_key()
    publish(str(tmp_path / "remote"), "line-a", exports["v1"], key, GateConfig())
    events: list = []
    rt = runtime(tmp_path, "line-a", [key.public_key()], events)
    assert rt.check_update()
    partial = rt.models_dir / ".incoming-0123abcd"
    (partial / "model.onnx").parent.mkdir(parents=True)
    (partial / "model.onnx").write_bytes(b"half a model")
    restarted = runtime(tmp_path, "line-a", [key.public_key()], events)
    assert restarted.resume() and restarted.running.version == 1  # type: ignore[union-attr]
    assert not partial.exists()

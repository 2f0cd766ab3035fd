"""An increment links the previous version's images through its manifest; a manifest path outside the store's
content addresses is never followed, and an image the manifest names but the folder lost is found or fetched."""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_dataset_snapshot import World, box

from crux.data.manifest import read_manifest
from crux.data.synthetic_exports import Ann


def _manifest_rows(world: World) -> list[dict]:
    return [json.loads(line) for line in (world.data / "manifest.jsonl").read_text().splitlines()]


def test_increment_links_previous_images_without_fetching(tmp_path: Path) -> None:
    world = World(tmp_path)
    for n in range(1, 6):
        world.add(n, [Ann([box("crazing", 1, 1, 5, 5)])])
    world.build()
    first = {i.sha256: (world.data / i.image).stat().st_ino for i in read_manifest(world.data / "manifest.jsonl")}
    world.add(6, [Ann([box("patches", 1, 1, 5, 5)])])
    summary = world.build()
    assert (summary.fetched, summary.reused) == (1, 5) and len(world.fetched) == 1
    after = {i.sha256: (world.data / i.image) for i in read_manifest(world.data / "manifest.jsonl")}
    # Hard links: the same inodes, no copies.
    assert all(after[sha].stat().st_ino == ino for sha, ino in first.items())


def test_a_tampered_or_stale_previous_manifest_is_not_trusted(tmp_path: Path) -> None:
    world = World(tmp_path)
    for n in range(1, 4):
        world.add(n, [Ann([box("crazing", 1, 1, 5, 5)])])
    world.build()
    rows = _manifest_rows(world)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not yours")
    # Row 0 points outside the store; row 1's image file is gone (its sha is then fetched again).
    rows[0]["image"] = os.path.relpath(secret, world.data)
    (world.data / rows[1]["image"]).unlink()
    (world.data / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    summary = world.build()
    assert summary.items == 3 and summary.fetched == 1 and summary.reused == 2
    images = {i.image for i in read_manifest(world.data / "manifest.jsonl")}
    assert all(rel.startswith("images/") for rel in images)
    assert all((world.data / rel).read_bytes() != b"not yours" for rel in images)

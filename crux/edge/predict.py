"""`crux predict`: open a model folder or a published line's current release, and predict a list of images.

The inference itself (preprocess → ONNX Runtime → post-processing → the contract record) is `crux.inference`, the
one code path evaluation and the edge share; this module adds where the model comes from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from crux.inference import CARD_FILE, ModelError, OnnxModel


def open_model(
    ref: str,
    *,
    public_keys: Sequence[Any] = (),
    cache_dir: Path | None = None,
    storage_options: Mapping[str, Any] | None = None,
    threads: int = 1,
) -> OnnxModel:
    """`MODEL_OR_REMOTE`: a local model folder (model.onnx + card.json, e.g. `crux export` output or a published
    version folder), or a published line URL (`models/neu-det`, `s3://bucket/models/neu-det`) whose current
    release is downloaded and verified (sha256 always; signature when `public_keys` are given)."""
    local = Path(ref)
    if (local / CARD_FILE).is_file():
        # The card, the model file it names (inside this folder, matching its sha256) and the network are all
        # checked by OnnxModel.from_dir: a damaged folder is one ModelError naming what is wrong.
        return OnnxModel.from_dir(local, version=_folder_version(local), threads=threads)
    import tempfile

    if cache_dir is not None:
        return _open_release(ref, Path(cache_dir), public_keys, storage_options, threads)
    # ONNX Runtime holds the model in memory once the session exists: the download folder goes right away.
    with tempfile.TemporaryDirectory(prefix="crux-predict-") as tmp:
        return _open_release(ref, Path(tmp), public_keys, storage_options, threads)


def _folder_version(folder: Path) -> int | None:
    """The published version of a release folder (its manifest.json), None for a plain `crux export` folder."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        version = json.loads(manifest.read_text(encoding="utf-8"))["version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version {version!r} is not a version number")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{manifest}: not a release manifest ({type(exc).__name__}: {exc})") from None
    return version


def _open_release(
    ref: str, dest: Path, public_keys: Sequence[Any], storage_options: Mapping[str, Any] | None, threads: int
) -> OnnxModel:
    from crux.ship.fetch import fetch_release

    release = fetch_release(
        ref, dest, public_keys, installed=None, storage_options=storage_options, require_signature=bool(public_keys)
    )
    assert release is not None  # installed=None: there is always something to fetch or an error
    return OnnxModel.from_dir(release.path, version=release.version, threads=threads, model_file=release.model_file)

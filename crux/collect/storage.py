"""Content-addressed image store on any fsspec filesystem (local folder by default, s3:// with s3fs)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def image_key(sha256: str, ext: str) -> str:
    """`ab/<sha256>.<ext>`: the same layout as the dataset store, so a capture can be copied as is."""
    return f"{sha256[:2]}/{sha256}.{ext}"


class ImageStore:
    """Writes blobs under content-addressed keys; writing the same key twice is a no-op."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.fs, root = fsspec.core.url_to_fs(url, **dict(options or {}))
        self.root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            os.makedirs(self.root, exist_ok=True)

    def path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        if self._local:
            if os.path.exists(path):
                return
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # Write-then-rename: a crash never leaves a truncated blob under a valid content key.
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
            return
        if self.fs.exists(path):
            return
        # Object stores make a PUT visible atomically, so no temporary key is needed.
        self.fs.pipe_file(path, data)

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self.path(key)))

    def get(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(key)))

    def check(self) -> None:
        """Raise when the store is unreachable (health check)."""
        if self._local:
            if not os.path.isdir(self.root):
                raise OSError(f"image store {self.root} is not a folder")
            return
        self.fs.ls(self.root, detail=False)

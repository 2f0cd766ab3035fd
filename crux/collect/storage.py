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
        # No existence check first: the key is the content's hash, so writing it again stores the same bytes, and
        # a HEAD before every PUT doubled the object-store round trips of each upload. Object stores make a PUT
        # visible atomically, so no temporary key is needed.
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
        # The bucket, not the prefix: before the first capture an object store has no "folder" at the prefix, and a
        # fresh service reported itself degraded until something was uploaded.
        bucket = self.root.split("/", 1)[0]
        if not self.fs.exists(bucket):
            raise OSError(f"bucket {bucket} is not reachable")

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
        self._options = dict(options or {})
        self.fs, root = fsspec.core.url_to_fs(url, **self._options)
        self.root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            os.makedirs(self.root, exist_ok=True)
        # An instance of the same filesystem bound to a server's event loop (`open_async`), for `aput`.
        self._afs: Any = None
        self._session: Any = None

    @property
    def is_async(self) -> bool:
        """Whether `aput` awaits the write on the caller's event loop (an object store after `open_async`)."""
        return self._afs is not None

    async def open_async(self) -> None:
        """On an async-capable object store (s3fs), open a client on the running event loop: each upload then awaits
        its PUT there, instead of holding a thread that waits for fsspec's own I/O thread. A no-op on a folder."""
        if self._local or not getattr(self.fs, "async_impl", False):
            return
        afs = type(self.fs)(**{**self._options, "asynchronous": True, "skip_instance_cache": True})
        self._session = await afs.set_session()
        self._afs = afs

    async def close_async(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._afs = self._session = None

    async def aput(self, key: str, data: bytes) -> None:
        """`put` for an event loop; on a store without `open_async`, the caller runs `put` in a thread instead."""
        if self._afs is None:
            raise RuntimeError("ImageStore.aput needs open_async() first")
        # Same reasoning as `put`: a content key written again stores the same bytes, so no existence check.
        await self._afs._pipe_file(self.path(key), data)

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

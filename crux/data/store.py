"""Content-addressed image store and the fetchers that fill it.

Images live at `images/ab/<sha256>.<ext>` (ab = first two hex characters), so an image is stored once
however many tasks point at it, a new version reuses every image the previous one had, and only
missing images are fetched. Every fetched image is decoded once (Pillow) to prove it is an image and
to read its size; a file that does not decode or cannot be fetched is reported with the task id by
the caller, never silently dropped.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from crux.data.manifest import IMAGES

if TYPE_CHECKING:
    import httpx

# What a fetcher is: an image URL in, the image bytes out, FetchError when it cannot.
Fetcher = Callable[[str], bytes]

LOCAL_FILES_PREFIX = "/data/local-files/"
# Pillow format name → the extension the store uses; one extension per format keeps paths canonical.
FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp", "GIF": "gif"}


class FetchError(Exception):
    """An image could not be fetched; `reason` is short enough for dataset.json."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CorruptImageError(FetchError):
    pass


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    ext: str


def decode_image(data: bytes) -> ImageInfo:
    """Decode the whole image (not only its header) so truncated files are caught."""
    from crux.postprocess import open_image

    try:
        with open_image(io.BytesIO(data)) as img:
            fmt = img.format or ""
            img.load()
            width, height = img.size
    except ValueError as exc:  # ImageError included (unreadable, truncated, over the pixel limit)
        raise CorruptImageError(f"image does not decode: {exc}") from exc
    ext = FORMAT_EXT.get(fmt)
    if ext is None:
        raise CorruptImageError(f"unsupported image format {fmt!r}")
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"image has no pixels ({width}x{height})")
    return ImageInfo(width=width, height=height, ext=ext)


def image_size(path: Path) -> tuple[int, int]:
    """Size from the header only, for images already in a store (decoded when they were first fetched)."""
    from crux.postprocess import open_image

    with open_image(path) as img:
        return img.size


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (models and images alike; light enough for the edge)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def relative_image_path(sha256: str, ext: str) -> str:
    return f"{IMAGES}/{sha256[:2]}/{sha256}.{ext}"


def find_image(root: Path, sha256: str) -> Path | None:
    """The stored file for `sha256` under dataset folder `root`, whatever its extension."""
    folder = root / IMAGES / sha256[:2]
    if not folder.is_dir():
        return None
    for ext in FORMAT_EXT.values():
        path = folder / f"{sha256}.{ext}"
        if path.is_file():
            return path
    return None


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible (same file system: instant, no extra space), else copy.

    Stored images are never modified in place, so sharing an inode with the previous version is safe.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except FileExistsError:
        return
    except OSError:
        tmp = dst.with_name(dst.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def write_image(root: Path, sha256: str, ext: str, data: bytes) -> str:
    rel = relative_image_path(sha256, ext)
    path = root / rel
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a crash never leaves a truncated file under a content address.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{id(data)}.part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return rel


# --------------------------------------------------------------------------------------------------
# Fetchers


def local_files_relpath(url: str) -> str | None:
    """The `d=` path of a Label Studio local-files URL (absolute or host-relative), else None."""
    parts = urlsplit(url)
    if not parts.path.startswith(LOCAL_FILES_PREFIX.rstrip("/")):
        return None
    values = parse_qs(parts.query).get("d")
    if not values:
        raise FetchError(f"local-files URL without a d= parameter: {url}")
    return values[0]


def resolve_under(files_root: Path, relpath: str, *, root_resolved: bool = False) -> Path:
    """`files_root / relpath`, refusing anything that escapes files_root (.., absolute paths, symlinks out).
    `root_resolved`: files_root is already absolute and resolved (a fetcher resolves it once, not per image)."""
    rel = PurePosixPath(unquote(relpath))
    if rel.is_absolute() or ".." in rel.parts or "\x00" in relpath:
        raise FetchError(f"local-files path escapes the files root: {relpath!r}")
    root = files_root if root_resolved else files_root.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise FetchError(f"local-files path escapes the files root: {relpath!r}")
    return path


def local_files_fetcher(files_root: Path) -> Fetcher:
    root = Path(files_root).resolve()  # once: a 100k-image snapshot would otherwise resolve it 100k times

    def fetch(url: str) -> bytes:
        rel = local_files_relpath(url)
        if rel is None:
            raise FetchError(f"not a local-files URL: {url}")
        path = resolve_under(root, rel, root_resolved=True)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise FetchError(f"not found: {rel}") from None
        except OSError as exc:
            raise FetchError(f"cannot read {rel}: {exc.strerror or exc}") from None

    return fetch


def fsspec_fetcher(storage_options: Mapping[str, object] | None = None) -> Fetcher:
    """s3://, gs://, file:// and any other fsspec URL; credentials come from storage_options or the environment."""
    options = dict(storage_options or {})

    def fetch(url: str) -> bytes:
        import fsspec

        try:
            with fsspec.open(url, "rb", **options) as f:
                data: bytes = f.read()
                return data
        except FileNotFoundError:
            raise FetchError(f"not found: {url}") from None
        except (OSError, ValueError) as exc:
            raise FetchError(f"cannot read {url}: {exc}") from None

    return fetch


def http_fetcher(
    *,
    token: str | None = None,
    auth_base_url: str | None = None,
    retries: int = 3,
    backoff_s: float = 0.5,
    timeout_s: float = 30.0,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Fetcher:
    """http(s) GET with bounded retries on connection errors and 5xx/429; 4xx fails at once.

    The Label Studio token is only sent to URLs under `auth_base_url` (the Label Studio server), never to
    third-party hosts that tasks may point at.
    """
    import httpx

    own = client or httpx.Client(timeout=timeout_s, follow_redirects=True)
    prefix = auth_base_url.rstrip("/") + "/" if auth_base_url else None

    def fetch(url: str) -> bytes:
        headers = {}
        if token and prefix and url.startswith(prefix):
            headers["Authorization"] = f"Token {token}"
        last = ""
        for attempt in range(retries + 1):
            if attempt:
                sleep(backoff_s * 2 ** (attempt - 1))
            try:
                response = own.get(url, headers=headers)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 200:
                return response.content
            if response.status_code == 404:
                raise FetchError(f"not found (HTTP 404): {url}")
            if response.status_code >= 500 or response.status_code == 429:
                last = f"HTTP {response.status_code}"
                continue
            raise FetchError(f"HTTP {response.status_code}: {url}")
        raise FetchError(f"gave up after {retries + 1} attempts ({last}): {url}")

    return fetch


def make_fetcher(
    *,
    files_root: Path | None = None,
    ls_url: str | None = None,
    token: str | None = None,
    storage_options: Mapping[str, object] | None = None,
    retries: int = 3,
    http_client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Fetcher:
    """One fetcher for every URL form a Label Studio task may hold.

    - `/data/local-files/?d=rel` (also with the Label Studio host in front): read from `files_root` on disk
      when given (fast, no HTTP), else through the Label Studio server;
    - other host-relative paths (`/data/upload/...`): through the Label Studio server at `ls_url`;
    - `http(s)://`: httpx with retries; `s3://`, `gs://`, `file://`...: fsspec.
    """
    local = local_files_fetcher(files_root) if files_root is not None else None
    remote = fsspec_fetcher(storage_options)
    http: Fetcher | None = None

    def get_http() -> Fetcher:
        nonlocal http
        if http is None:
            http = http_fetcher(token=token, auth_base_url=ls_url, retries=retries, client=http_client, sleep=sleep)
        return http

    def fetch(url: str) -> bytes:
        scheme = urlsplit(url).scheme.lower()
        if local is not None and local_files_relpath(url) is not None:
            return local(url)
        if not scheme:
            if not ls_url:
                raise FetchError(f"relative URL {url!r} needs the Label Studio URL")
            return get_http()(ls_url.rstrip("/") + "/" + url.lstrip("/"))
        if scheme in ("http", "https"):
            return get_http()(url)
        return remote(url)

    return fetch

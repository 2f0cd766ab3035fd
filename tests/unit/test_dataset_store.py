from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from crux.data.store import (
    CorruptImageError,
    FetchError,
    decode_image,
    find_image,
    http_fetcher,
    local_files_fetcher,
    make_fetcher,
    write_image,
)
from crux.data.synthetic_exports import image_bytes


def test_decode_reads_size_and_rejects_corrupt_or_truncated_images() -> None:
    data = image_bytes(1, 40, 30)
    info = decode_image(data)
    assert (info.width, info.height, info.ext) == (40, 30, "jpg")
    assert decode_image(image_bytes(2, 8, 8, fmt="PNG")).ext == "png"
    with pytest.raises(CorruptImageError):
        decode_image(b"not an image at all")
    with pytest.raises(CorruptImageError):
        decode_image(image_bytes(3, 64, 64, fmt="PNG")[:100])


def test_store_layout_is_content_addressed(tmp_path: Path) -> None:
    rel = write_image(tmp_path, "ab" + "0" * 62, "jpg", b"x")
    assert rel == f"images/ab/ab{'0' * 62}.jpg"
    assert find_image(tmp_path, "ab" + "0" * 62) == tmp_path / rel
    assert find_image(tmp_path, "cd" + "0" * 62) is None


def test_local_files_fetcher_reads_under_root_and_refuses_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a b").mkdir(parents=True)
    (root / "a b" / "x.jpg").write_bytes(b"img")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.txt", root / "link.jpg")
    fetch = local_files_fetcher(root)
    assert fetch("/data/local-files/?d=a%20b/x.jpg") == b"img"
    assert fetch("http://ls:8080/data/local-files/?d=a b/x.jpg") == b"img"
    for bad in ("../secret.txt", "a b/../../secret.txt", "/etc/passwd", "link.jpg"):
        with pytest.raises(FetchError, match="escapes"):
            fetch(f"/data/local-files/?d={bad}")
    with pytest.raises(FetchError, match="not found"):
        fetch("/data/local-files/?d=a b/missing.jpg")


def test_make_fetcher_dispatches_fsspec_urls(tmp_path: Path) -> None:
    (tmp_path / "i.jpg").write_bytes(b"abc")
    fetch = make_fetcher(files_root=tmp_path)
    assert fetch(f"file://{tmp_path}/i.jpg") == b"abc"
    with pytest.raises(FetchError, match="not found"):
        fetch(f"file://{tmp_path}/nope.jpg")
    with pytest.raises(FetchError, match="needs the Label Studio URL"):
        fetch("/data/upload/1/x.jpg")


def test_http_fetcher_retries_5xx_then_succeeds_and_sends_token_only_to_label_studio() -> None:
    calls: list[tuple[str, str | None]] = []
    failures = [503, 502]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((str(request.url), request.headers.get("authorization")))
        if failures:
            return httpx.Response(failures.pop())
        return httpx.Response(200, content=b"IMG")

    sleeps: list[float] = []
    client = httpx.Client(transport=httpx.MockTransport(handler))
    fetch = make_fetcher(ls_url="http://ls:8080", token="tok", http_client=client, retries=3, sleep=sleeps.append)
    assert fetch("/data/upload/1/x.jpg") == b"IMG"
    assert calls[-1] == ("http://ls:8080/data/upload/1/x.jpg", "Token tok")
    assert sleeps == [0.5, 1.0]
    calls.clear()
    assert fetch("https://elsewhere.example/x.jpg") == b"IMG"
    assert calls == [("https://elsewhere.example/x.jpg", None)]


def test_http_fetcher_404_fails_at_once_and_connection_errors_are_bounded() -> None:
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if request.url.path == "/gone.jpg":
            return httpx.Response(404)
        raise httpx.ConnectError("refused")

    client = httpx.Client(transport=httpx.MockTransport(handler))
    fetch = http_fetcher(client=client, retries=2, sleep=lambda s: None)
    with pytest.raises(FetchError, match="404"):
        fetch("http://h/gone.jpg")
    assert attempts == 1
    with pytest.raises(FetchError, match="gave up after 3 attempts"):
        fetch("http://h/down.jpg")
    assert attempts == 4

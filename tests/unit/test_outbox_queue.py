"""Edge outbox against a fake server (httpx.MockTransport): order, retry, idempotency keys, quota."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from crux.edge.outbox import Outbox, decode_capture


class FakeServer:
    """Records uploads; `down` makes it unreachable, `fail_next` answers 503 a few times."""

    def __init__(self) -> None:
        self.down = False
        self.fail_next = 0
        self.status_for: dict[str, int] = {}
        self.keys: list[str] = []
        self.stored: dict[str, dict[str, object]] = {}
        self.lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            if self.down:
                raise httpx.ConnectError("connection refused", request=request)
            if self.fail_next:
                self.fail_next -= 1
                return httpx.Response(503, json={"detail": "busy"})
            key = request.headers["idempotency-key"]
            assert request.headers["authorization"] == "Bearer tok"
            self.keys.append(key)
            body = request.read()
            meta = json.loads(body.split(b'name="metadata"\r\n\r\n', 1)[1].split(b"\r\n--", 1)[0])
            if meta.get("seq") in self.status_for:
                return httpx.Response(self.status_for[meta["seq"]], json={"detail": "bad capture"})
            replay = key in self.stored
            self.stored.setdefault(key, meta)
            return httpx.Response(200 if replay else 201, json={"id": len(self.stored), "replayed": replay})

    @property
    def seqs(self) -> list[object]:
        return [m["seq"] for m in self.stored.values()]


def make_outbox(tmp_path: Path, server: FakeServer, **kw: object) -> Outbox:
    client = httpx.Client(transport=httpx.MockTransport(server.handler))
    kw.setdefault("backoff_initial_s", 0.01)
    kw.setdefault("backoff_max_s", 0.05)
    return Outbox(tmp_path / "outbox", "http://127.0.0.1:1", "tok", client=client, fsync=False, **kw)  # type: ignore[arg-type]


def test_offline_then_drains_in_order_once(tmp_path: Path) -> None:
    server = FakeServer()
    server.down = True
    with make_outbox(tmp_path, server) as box:
        box.start()
        for i in range(20):
            box.enqueue(b"img%d" % i, {"seq": i}, ng=i % 3 == 0)
        assert not box.drain(0.3)
        assert len(box.pending()) == 20 and server.stored == {}
        assert box.stats.failed_attempts >= 2
        server.down = False
        assert box.drain(10)
    assert server.seqs == list(range(20))
    assert len(server.keys) == len(set(server.keys)) == 20
    assert box.stats.uploaded == 20


def test_5xx_is_retried_with_the_same_key(tmp_path: Path) -> None:
    server = FakeServer()
    server.fail_next = 3
    with make_outbox(tmp_path, server) as box:
        box.enqueue(b"x", {"seq": 0}, ng=False)
        box.start()
        assert box.drain(5)
    assert server.seqs == [0] and box.stats.failed_attempts == 3


def test_lost_response_is_not_a_duplicate(tmp_path: Path) -> None:
    """The server stores the capture but the answer never arrives: the retry replays (200), one row."""
    server = FakeServer()
    inner = server.handler
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        response = inner(request)
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ReadTimeout("response lost", request=request)
        return response

    client = httpx.Client(transport=httpx.MockTransport(flaky))
    box = Outbox(tmp_path / "o", "http://127.0.0.1:1", "tok", client=client, fsync=False, backoff_initial_s=0.01)
    with box:
        box.enqueue(b"x", {"seq": 0}, ng=True)
        box.start()
        assert box.drain(5)
    assert len(server.stored) == 1 and len(server.keys) == 2 and box.stats.replayed == 1


def test_survives_restart_and_keeps_order(tmp_path: Path) -> None:
    server = FakeServer()
    with make_outbox(tmp_path, server) as box:
        for i in range(5):
            box.enqueue(b"i", {"seq": i}, ng=False)
    # A crash mid-enqueue leaves only a temporary file, which the next start discards.
    (tmp_path / "outbox" / "tmp" / "junk.part").write_bytes(b"half")
    with make_outbox(tmp_path, server) as box:
        assert [i.seq for i in box.pending()] == [1, 2, 3, 4, 5]
        box.enqueue(b"i", {"seq": 5}, ng=False)
        box.start()
        assert box.drain(5)
        assert not list((tmp_path / "outbox" / "tmp").iterdir())
    assert server.seqs == [0, 1, 2, 3, 4, 5]


def test_one_owner_per_folder(tmp_path: Path) -> None:
    server = FakeServer()
    with make_outbox(tmp_path, server), pytest.raises(RuntimeError, match="in use"):
        make_outbox(tmp_path, server)


def test_permanent_rejection_is_kept_aside_and_queue_moves_on(tmp_path: Path) -> None:
    server = FakeServer()
    server.status_for[1] = 422
    with make_outbox(tmp_path, server) as box:
        for i in range(3):
            box.enqueue(b"i", {"seq": i}, ng=True)
        box.start()
        assert box.drain(5)
        rejected = box.rejected()
    assert server.seqs == [0, 2]
    assert len(rejected) == 1
    header, image = decode_capture(rejected[0].read_bytes())
    assert header["metadata"]["seq"] == 1 and image == b"i"
    reason = json.loads(rejected[0].with_name(rejected[0].name + ".reason.json").read_text())
    assert reason["status"] == 422


def test_revoked_token_is_retried_not_dropped(tmp_path: Path) -> None:
    server = FakeServer()
    server.status_for[0] = 401
    with make_outbox(tmp_path, server) as box:
        box.enqueue(b"i", {"seq": 0}, ng=True)
        box.start()
        assert not box.drain(0.3)
        assert len(box.pending()) == 1 and box.rejected() == []
        del server.status_for[0]
        assert box.drain(5)
    assert server.seqs == [0]


def test_item_file_format_and_verdict(tmp_path: Path) -> None:
    with make_outbox(tmp_path, FakeServer()) as box:
        item = box.enqueue(b"\xff\xd8jpeg", {"station": "cam-1"}, ng=True, filename="a.jpg")
        assert item is not None and item.ng and item.path.name.startswith("0000000000000001-ng-")
        header, image = decode_capture(item.path.read_bytes())
    assert image == b"\xff\xd8jpeg"
    assert header["metadata"] == {"station": "cam-1", "verdict": "ng"}

"""Outbox disk quota: oldest OK captures go first; an NG capture is never dropped silently."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from crux.edge.outbox import Outbox, OutboxFullError, encode_capture

IMAGE = b"x" * 1000


def size_of(meta: dict[str, object], ng: bool) -> int:
    return len(encode_capture(IMAGE, {**meta, "verdict": "ng" if ng else "ok"}, "image/jpeg", "capture.jpg"))


def outbox(tmp_path: Path, items: int) -> Outbox:
    # Room for exactly `items` captures of this shape (metadata sizes are equal: single-digit seq).
    quota = items * size_of({"seq": 0}, False)
    return Outbox(tmp_path / "o", "http://127.0.0.1:1", "tok", quota_bytes=quota, fsync=False)


def seqs(box: Outbox) -> list[object]:
    from crux.edge.outbox import decode_capture

    return [decode_capture(i.path.read_bytes())[0]["metadata"]["seq"] for i in box.pending()]


def test_oldest_ok_evicted_first_ng_kept(tmp_path: Path) -> None:
    with outbox(tmp_path, 4) as box:
        box.enqueue(IMAGE, {"seq": 0}, ng=False)
        box.enqueue(IMAGE, {"seq": 1}, ng=True)
        box.enqueue(IMAGE, {"seq": 2}, ng=False)
        box.enqueue(IMAGE, {"seq": 3}, ng=False)
        assert box.pending_bytes <= box.quota_bytes
        box.enqueue(IMAGE, {"seq": 4}, ng=True)  # evicts OK 0
        assert seqs(box) == [1, 2, 3, 4]
        box.enqueue(IMAGE, {"seq": 5}, ng=False)  # evicts OK 2 (oldest OK), not NG 1
        assert seqs(box) == [1, 3, 4, 5]
        assert box.stats.evicted_ok == 2
        assert box.pending_bytes <= box.quota_bytes
        assert len(list((tmp_path / "o" / "queue").iterdir())) == 4


def test_ng_that_cannot_fit_raises_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with outbox(tmp_path, 2) as box:
        box.enqueue(IMAGE, {"seq": 0}, ng=True)
        box.enqueue(IMAGE, {"seq": 1}, ng=True)
        with caplog.at_level(logging.ERROR), pytest.raises(OutboxFullError, match="NG capture"):
            box.enqueue(IMAGE, {"seq": 2}, ng=True)
        assert "outbox full" in caplog.text
        assert seqs(box) == [0, 1]


def test_ok_that_cannot_fit_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with outbox(tmp_path, 2) as box:
        box.enqueue(IMAGE, {"seq": 0}, ng=True)
        box.enqueue(IMAGE, {"seq": 1}, ng=True)
        with caplog.at_level(logging.WARNING):
            assert box.enqueue(IMAGE, {"seq": 2}, ng=False) is None
        assert "dropped a new OK capture" in caplog.text
        assert box.stats.dropped_ok == 1 and seqs(box) == [0, 1]


def test_no_eviction_when_it_would_not_make_room(tmp_path: Path) -> None:
    with outbox(tmp_path, 3) as box:
        box.enqueue(IMAGE, {"seq": 0}, ng=False)
        box.enqueue(IMAGE, {"seq": 1}, ng=True)
        with pytest.raises(OutboxFullError):
            box.enqueue(IMAGE * 3, {"seq": 2}, ng=True)  # needs more than all OKs can free
        assert seqs(box) == [0, 1] and box.stats.evicted_ok == 0


def test_quota_accounting_survives_restart(tmp_path: Path) -> None:
    with outbox(tmp_path, 3) as box:
        for i in range(3):
            box.enqueue(IMAGE, {"seq": i}, ng=i == 0)
        used = box.pending_bytes
    with outbox(tmp_path, 3) as box:
        assert box.pending_bytes == used
        box.enqueue(IMAGE, {"seq": 3}, ng=False)
        assert seqs(box) == [0, 2, 3]

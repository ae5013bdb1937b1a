"""Outbox: seq is durable and never reused; events leave only when acknowledged; bounds drop oldest first and count."""

from __future__ import annotations

import json
from pathlib import Path

from edge_daemon.outbox import Outbox


def test_seq_increases_by_one_and_continues_after_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    assert [box.append({"n": i}) for i in range(3)] == [1, 2, 3]
    for seq in (1, 2, 3):
        box.ack(seq)
    box.close()
    box = Outbox(tmp_path)  # a restart with an empty queue must not reuse 1..3
    assert box.append({"n": 3}) == 4
    assert box.depth() == 1


def test_unacknowledged_events_survive_a_restart_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    for i in range(5):
        box.append({"n": i})
    box.ack(2)
    box.close()
    box = Outbox(tmp_path)
    pending = box.pending(after_seq=0, limit=10)
    assert [p.seq for p in pending] == [1, 3, 4, 5]
    assert json.loads(pending[0].payload) == {"n": 0, "seq": 1}
    assert [p.seq for p in box.pending(after_seq=3, limit=1)] == [4]


def test_size_bound_drops_oldest_first_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_events=10)
    for i in range(25):
        box.append({"n": i})
    assert box.depth() == 10
    assert [p.seq for p in box.pending(0, 100)] == list(range(16, 26))
    assert box.dropped == 15


def test_age_bound_drops_stale_events(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_age_s=60)
    box.append({"n": 0})
    box._db.execute("UPDATE events SET created = created - 120")  # as if it had waited two minutes
    box.append({"n": 1})
    assert [p.seq for p in box.pending(0, 10)] == [2]
    assert box.dropped == 1


def test_outbox_uses_wal_journal(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

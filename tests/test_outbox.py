"""Outbox: seq is durable and never reused; events leave only when acknowledged; bounds drop oldest first and count."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from edge_daemon import outbox
from edge_daemon.errors import UserError
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


def test_drops_are_said_once_a_minute_with_the_count_since_the_last_line(
    monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # the Throttle's clock
    drops = outbox.Drops(max_events=10, max_age_s=60)
    with caplog.at_level("WARNING", logger="edge_daemon.outbox"):
        for _ in range(30):  # an outbox at its bound drops on every append
            drops.add(1)
        now[0] += 61
        drops.add(2)
    lines = [r.getMessage() for r in caplog.records]
    assert drops.total == 32 and len(lines) == 2, lines
    assert lines[0].startswith("outbox full: dropped 1 ") and lines[1].startswith("outbox full: dropped 31 ")
    assert "outbox.max_events 10, outbox.max_age_s 60" in lines[0]


@pytest.mark.parametrize(
    "last, mark, stored_last, top, holding, expected",
    [
        (1000, 1000, 40, 40, False, 40),  # a clean close: continue right after what the database knows
        (1000, 1000, 40, 40, True, 1000),  # events were held at a crash: above the mark, a gap and no repeat
        (1000, 1000, 40, 1200, False, 1200),  # a stored seq above the mark (an older mark file) still counts
        (57, 1000, 0, 0, False, 57),  # a reopen while running (a replaced file): never back to a lower seq
        (57, 1000, 0, 0, True, 1000),  # a reopen with events still held in memory
    ],
)
def test_seq_continues_after_an_open_never_below_what_was_handed_out(
    last: int, mark: int, stored_last: int, top: int, holding: bool, expected: int
) -> None:
    assert outbox.continue_seq(last, mark, stored_last, top, holding) == expected


def test_age_bound_drops_stale_events(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_age_s=60)
    box.append({"n": 0})
    box._db.execute("UPDATE events SET mono = mono - 120")  # as if it had waited two minutes
    box.append({"n": 1})
    assert [p.seq for p in box.pending(0, 10)] == [2]
    assert box.dropped == 1


def test_a_wall_clock_step_does_not_age_waiting_events(tmp_path: Path, monkeypatch: Any) -> None:
    # A Pi without a real-time clock: events wait at a stale time, then NTP steps the clock a month ahead.
    box = Outbox(tmp_path, max_age_s=3600)
    box.append({"n": 0})
    stepped = time.time() + 30 * 86400
    monkeypatch.setattr(outbox.time, "time", lambda: stepped)
    box.append({"n": 1})
    assert [p.seq for p in box.pending(0, 10)] == [1, 2] and box.dropped == 0


@pytest.mark.parametrize(
    ("created_ago_s", "kept"),
    [(120.0, False), (30.0, True), (None, True)],  # None: stored while the clock read 1970
)
def test_events_from_an_earlier_boot_are_aged_by_the_wall_clock_when_it_can_tell(
    tmp_path: Path, created_ago_s: float | None, kept: bool
) -> None:
    box = Outbox(tmp_path, max_age_s=60)
    box.append({"n": 0})
    created = 1000.0 if created_ago_s is None else time.time() - created_ago_s
    box._db.execute("UPDATE events SET boot = 'an earlier boot', mono = 123456789, created = ?", (created,))
    box.close()
    box = Outbox(tmp_path, max_age_s=60)
    box.append({"n": 1})
    assert [p.seq for p in box.pending(0, 10)] == ([1, 2] if kept else [2])


def test_a_queue_from_before_monotonic_ages_opens_with_its_events(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / outbox.FILENAME)
    db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, created REAL, payload TEXT)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER)")
    db.execute("INSERT INTO meta VALUES ('last_seq', 7), ('dropped', 0)")
    db.execute("INSERT INTO events VALUES (7, ?, '{\"seq\":7}')", (time.time() - 5,))
    db.commit()
    db.close()
    box = Outbox(tmp_path, max_age_s=60)
    assert box.append({"n": 1}) == 8
    assert [p.seq for p in box.pending(0, 10)] == [7, 8]


def test_outbox_uses_wal_journal(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_state_dir_that_cannot_be_made_is_a_clear_user_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    for state_dir in (tmp_path / "a-file", tmp_path / "a-file" / "below", Path("/proc/no-such-dir")):
        with pytest.raises(UserError, match="cannot open the outbox .*check state_dir"):
            Outbox(state_dir)


@pytest.mark.parametrize("has", [(), ("boot",)])  # ("boot",): a migration of an earlier version cut short
def test_a_queue_from_before_monotonic_ages_is_migrated_whatever_it_already_has(
    tmp_path: Path, has: tuple[str, ...]
) -> None:
    db = sqlite3.connect(tmp_path / outbox.FILENAME)
    db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, created REAL, payload TEXT)")
    for column in has:
        db.execute(f"ALTER TABLE events ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
    db.commit()
    db.close()
    box = Outbox(tmp_path)
    assert box.append({"n": 1}) == 1 and [p.seq for p in box.pending(0, 10)] == [1]


def test_the_boot_id_from_systemd_names_the_same_boot_as_proc(monkeypatch: Any) -> None:
    from_proc = outbox.boot_id()
    # systemd's %b is the same 128-bit id without dashes; the unit passes it because its sandbox hides /proc/sys.
    monkeypatch.setenv(
        "EMOTION_EDGE_BOOT_ID", Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    )
    assert outbox.boot_id() == from_proc and len(from_proc) == 32

"""The storage layer under the outbox and the history: only real corruption moves a file aside; a lock, a full
database, a dead file system or a deleted file is a failed write that is retried, never a reason to lose what is
stored; the history commits in batches and gives state_dir's space to the outbox first. Real SQLite files, real
locks from a second connection, real ext4 file systems on loop devices where this machine has them."""

from __future__ import annotations

import dataclasses
import logging
import re
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from edge_daemon import history as history_mod
from edge_daemon import outbox as outbox_mod
from edge_daemon import storage
from edge_daemon.history import History, HistoryReader
from edge_daemon.outbox import Outbox, OutboxWriteError

from .test_reliability import ext4


def _event(i: int) -> dict[str, Any]:
    when = datetime.now(timezone.utc) - timedelta(hours=1) + timedelta(seconds=2 * i)
    iso = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    end = (when + timedelta(seconds=2)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "seq": i, "event_id": f"e{i}", "window_start": iso, "window_end": end, "emotion": "happy", "confidence": 0.5,
        "modalities": {"face": {"label": "happy", "confidence": 0.5}, "speech": None},
    }  # fmt: skip


def _record(h: History, seqs: range) -> None:
    for i in seqs:
        h.record(_event(i))


def _stored(state: Path) -> list[int]:
    return [r["seq"] for r in HistoryReader(state).events()]


def _aside(state: Path) -> list[Path]:
    return sorted(state.glob("*.corrupt-*"))


def test_a_write_lock_held_by_another_process_loses_no_event_and_moves_nothing_aside(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # `history purge` on a big file holds the write lock for seconds; here a second connection holds it longer
    # than the history waits for it (shortened from 5 s so that the test is quick).
    monkeypatch.setattr(history_mod, "SETTINGS", dataclasses.replace(history_mod.SETTINGS, busy_timeout_s=0.2))
    h = History(tmp_path)
    h.start()
    _record(h, range(1, 100))
    assert h.flush()
    other = sqlite3.connect(tmp_path / history_mod.FILENAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    _record(h, range(100, 110))
    assert h.flush()  # this commit meets the lock and fails: its events wait
    assert h.stats()["queued"] == 10 and h.stats()["written"] == 99
    other.execute("ROLLBACK")
    other.close()
    assert h.flush()
    h.close()
    assert _stored(tmp_path) == list(range(1, 110)) and not _aside(tmp_path)
    assert h.stats()["write_failed"] == 0


def test_a_full_database_is_a_failed_write_tried_again_not_a_corruption(tmp_path: Path) -> None:
    h = History(tmp_path)
    h.start()
    _record(h, range(1, 11))
    assert h.flush()
    db = h._file.db
    assert db is not None
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")  # SQLite answers SQLITE_FULL as on a full disk
    _record(h, range(11, 211))
    assert h.flush()
    assert h.stats()["queued"] == 200 and _stored(tmp_path) == list(range(1, 11)) and not _aside(tmp_path)
    db.execute("PRAGMA max_page_count=1073741823")  # space is back
    assert h.flush()
    h.close()
    assert _stored(tmp_path) == list(range(1, 211)) and not _aside(tmp_path)


def test_a_file_system_that_dies_keeps_what_was_committed_and_the_history_carries_on_after(
    tmp_path: Path, caplog: Any
) -> None:
    with ext4(tmp_path) as fs:
        if fs is None:
            pytest.skip("no loop devices here")
        h = History(fs.mnt)
        h.start()
        _record(h, range(1, 21))
        assert h.flush()
        fs.cut()  # I/O errors from now on; what was not synced is gone, as after a power cut
        _record(h, range(21, 31))
        with caplog.at_level(logging.ERROR):
            assert h.flush()
        assert h.stats()["queued"] == 10 and any("history: cannot write" in r.message for r in caplog.records)
        assert h._file.db is None  # closed after the I/O error: the remount below can happen
        fs.remount()  # power back
        assert h.flush()
        h.close()
        assert _stored(fs.mnt) == list(range(1, 31)) and not _aside(fs.mnt)


def test_a_history_file_deleted_under_the_daemon_is_reopened_and_later_events_are_stored(
    tmp_path: Path, caplog: Any
) -> None:
    h = History(tmp_path)
    h.start()
    _record(h, range(1, 4))
    assert h.flush()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / history_mod.FILENAME}{suffix}").unlink(missing_ok=True)
    _record(h, range(4, 6))
    with caplog.at_level(logging.WARNING):
        assert h.flush()
    h.close()
    assert _stored(tmp_path) == [4, 5]
    assert any("deleted or replaced" in r.message for r in caplog.records)


def test_an_outbox_file_deleted_under_the_daemon_is_reopened_and_seq_goes_on(tmp_path: Path, caplog: Any) -> None:
    box = Outbox(tmp_path)
    for i in range(3):
        box.append({"n": i})
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / outbox_mod.FILENAME}{suffix}").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING):
        assert box.append({"n": 3}) == 4
    assert [p.seq for p in box.pending(0, 10)] == [4]
    assert (tmp_path / outbox_mod.FILENAME).exists()
    assert any("deleted or replaced" in r.getMessage() and "(3)" in r.getMessage() for r in caplog.records)
    box.close()
    assert [p.seq for p in Outbox(tmp_path).pending(0, 10)] == [4]


def test_a_file_that_is_not_a_database_is_moved_aside_with_the_time_in_its_name(tmp_path: Path, caplog: Any) -> None:
    path = tmp_path / "x.sqlite3"
    path.write_bytes(b"not a database at all " * 200)
    f = storage.SqliteFile(path, history_mod.SETTINGS, lambda db: None, "test file", "what it held")
    with caplog.at_level(logging.ERROR):
        db = f.open()
    assert f.moved_aside is not None and re.fullmatch(r"x\.sqlite3\.corrupt-\d{8}T\d{6}Z", f.moved_aside.name)
    assert f.moved_aside.read_bytes().startswith(b"not a database")
    assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert any(f.moved_aside.name in r.getMessage() and "4400 bytes" in r.getMessage() for r in caplog.records)
    f.close()


def test_only_a_damaged_file_counts_as_corrupt(tmp_path: Path) -> None:
    def error_of(fn: Any) -> BaseException:
        try:
            fn()
        except sqlite3.Error as exc:
            return exc
        raise AssertionError("no error")

    (tmp_path / "bad").write_bytes(b"garbage " * 1000)
    not_a_db = error_of(lambda: sqlite3.connect(tmp_path / "bad").execute("PRAGMA page_count"))
    closed = sqlite3.connect(tmp_path / "ok")
    closed.close()
    was_closed = error_of(lambda: closed.execute("SELECT 1"))
    a = sqlite3.connect(tmp_path / "ok", isolation_level=None)
    a.execute("CREATE TABLE t (x)")
    a.execute("BEGIN IMMEDIATE")
    b = sqlite3.connect(tmp_path / "ok", timeout=0, isolation_level=None)
    busy = error_of(lambda: b.execute("BEGIN IMMEDIATE"))
    a.execute("ROLLBACK")
    a.execute("PRAGMA max_page_count=1")
    full = error_of(lambda: a.execute("INSERT INTO t VALUES (zeroblob(100000))"))
    assert storage.is_corrupt(not_a_db)
    assert not any(storage.is_corrupt(e) for e in (was_closed, busy, full)), (was_closed, busy, full)


def test_a_zero_byte_outbox_is_said_with_what_it_may_have_held(tmp_path: Path, caplog: Any) -> None:
    box = Outbox(tmp_path)
    for i in range(3):
        box.append({"n": i})
    box.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / outbox_mod.FILENAME}{suffix}").unlink(missing_ok=True)
    (tmp_path / outbox_mod.FILENAME).write_bytes(b"")  # what a cut power or a full disk can leave
    with caplog.at_level(logging.WARNING):
        box = Outbox(tmp_path)
    lines = [r.getMessage() for r in caplog.records if "0 bytes" in r.getMessage()]
    assert len(lines) == 1 and "outbox" in lines[0] and "the events it queued" in lines[0] and "lost" in lines[0]
    assert box.append({"n": 3}) > 3  # and no seq comes again
    box.close()


def test_a_minute_of_events_is_one_commit_that_touches_few_pages_and_all_are_readable(tmp_path: Path) -> None:
    h = History(tmp_path)
    h.start()
    _record(h, range(1, 2))  # the first event is committed at once (the page and the CLI see a history at once)
    deadline = time.monotonic() + 5
    while h.stats()["written"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    wal = Path(f"{tmp_path / history_mod.FILENAME}-wal")
    before = wal.stat().st_size
    _record(h, range(2, 202))  # these wait for the end of the interval
    time.sleep(0.5)
    assert h.stats()["commits"] == 1 and h.stats()["queued"] == 200
    assert h.flush()
    assert h.stats()["commits"] == 2 and h.stats()["written"] == 201
    frames = (wal.stat().st_size - before) // (1024 + 24)
    assert frames < 60, frames  # one transaction: each page once (one per event and index entry before the fix)
    _record(h, range(202, 212))
    h.close()  # a clean stop commits what waits
    assert _stored(tmp_path) == list(range(1, 212)) and h.stats()["commits"] == 3


def test_the_writer_commits_on_its_own_at_the_end_of_each_interval(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(history_mod, "FLUSH_EVERY_S", 0.3)
    h = History(tmp_path)
    h.start()
    _record(h, range(1, 6))
    deadline = time.monotonic() + 5
    while h.stats()["written"] < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stored(tmp_path) == [1, 2, 3, 4, 5]
    h.close()


@pytest.mark.slow
def test_on_a_small_state_dir_the_history_gives_its_space_to_the_outbox(tmp_path: Path) -> None:
    with ext4(tmp_path, size_mb=4) as fs:  # about 2.4 MB free
        if fs is None:
            pytest.skip("no loop devices here")
        h = History(fs.mnt)
        box = Outbox(fs.mnt)
        box.make_room = h.give_way  # as the daemon wires them
        h.start()
        for start in range(1, 10_001, 100):  # far more history than the card holds
            _record(h, range(start, start + 100))
            assert h.flush()
        assert h.stats()["written"] > 1000
        free = storage.free_bytes(fs.mnt)
        assert free is not None and free >= storage.history_floor(fs.mnt) - 64 * 1024  # it left the outbox's room
        # The broker is away: events go to disk. The outbox takes the history's space before it refuses one.
        stored = 0
        try:
            for _ in range(5000):
                box.append({"pad": "x" * 700})
                stored += 1
        except OutboxWriteError:
            pass
        assert h.stats()["gave_way"] > 0
        assert HistoryReader(fs.mnt).count() < 300, "the outbox refused events while the history kept its own"
        assert stored > 1500, stored
        box.close()
        h.close()


def test_a_history_from_an_earlier_version_is_converted_and_keeps_its_events(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / history_mod.FILENAME)
    db.executescript(history_mod.SCHEMA_TABLE.replace("event_id TEXT,", "event_id TEXT UNIQUE,") + ";")
    cols = ", ".join(("ts", *history_mod._STORED))
    db.executemany(
        f"INSERT INTO events ({cols}) VALUES ({', '.join('?' * 13)})", [history_mod.row_of(_event(i)) for i in (1, 2)]
    )
    db.commit()
    db.close()
    h = History(tmp_path)
    h.start()
    _record(h, range(3, 5))
    h.close()
    db = sqlite3.connect(tmp_path / history_mod.FILENAME)
    assert db.execute("PRAGMA page_size").fetchone()[0] == 1024
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    assert not db.execute("SELECT 1 FROM sqlite_master WHERE name='sqlite_autoindex_events_1'").fetchone()
    db.close()
    assert _stored(tmp_path) == [1, 2, 3, 4]


def test_give_way_never_waits_long_for_a_writer_stuck_on_a_lock(tmp_path: Path) -> None:
    h = History(tmp_path)
    with h._db_lock:  # the writer, waiting on another process's lock
        t0 = time.monotonic()
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(h.give_way(1 << 20)))
        t.start()
        t.join(5)
    assert result == [0] and time.monotonic() - t0 < 3


# ---------------------------------------------------------------------------- state_dir itself (check and run)


def test_a_state_dir_where_nothing_can_be_made_is_named_with_what_to_do(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    assert storage.state_dir_problem(a_file / "state") == f"state_dir: {a_file} is not a directory (state_dir)"
    # As root `os.access` says yes for /proc: only trying to create something there tells.
    problem = storage.state_dir_problem(Path("/proc/emotion-edge"))
    assert problem is not None and problem.startswith("state_dir: cannot create files in /proc (")
    assert problem.endswith("set state_dir to a folder on a writable disk")
    assert storage.state_dir_problem(tmp_path / "new" / "state") is None, "a folder that can be made is fine"
    assert list(tmp_path.iterdir()) == [a_file], "the probe leaves nothing behind"

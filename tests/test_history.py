"""The local emotion history: every event kept in state_dir, exported and purged by the CLI, bounded by age and size,
and never a reason for the daemon to stop (a corrupt or unwritable file is counted, said, and recovered from)."""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from edge_daemon import history as history_mod
from edge_daemon.history import COLUMNS, History, HistoryReader
from edge_daemon.labels import CANONICAL, EMOJI, NO_ONE, PAUSED, UNCERTAIN

from .conftest import CLIP_AUDIO, CLIP_VIDEO, SEGMENTS, assert_clean_error, run_cli, write_config
from .webtools import wait_until


def replay(tmp: Path, state: Path, *extra: str, **sections: Any) -> tuple[Any, list[dict[str, Any]]]:
    cfg = write_config(tmp / "config.yaml", **sections)
    out = tmp / f"events-{len(list(tmp.glob('events-*')))}.jsonl"
    r = run_cli(
        "--config", str(cfg), "replay", "--video", str(CLIP_VIDEO), "--audio", str(CLIP_AUDIO), "--no-mqtt",
        "--state-dir", str(state), "--events-out", str(out), *extra,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r, [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """One replay of the clip into a state_dir of its own: (state_dir, the events it produced)."""
    tmp = tmp_path_factory.mktemp("history")
    state = tmp / "state"
    _, events = replay(tmp, state)
    return state, events


def export(state: Path, *args: str) -> Any:
    return run_cli("history", "export", "--state-dir", str(state), *args)


def test_every_event_of_a_replay_is_kept_and_exported_as_csv_rows(replayed: Any) -> None:
    state, events = replayed
    r = export(state)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert tuple(csv.DictReader(io.StringIO(r.stdout)).fieldnames or ()) == COLUMNS
    assert [row["event_id"] for row in rows] == [e["event_id"] for e in events] and len(rows) == 9
    for row, e in zip(rows, events, strict=True):
        assert (row["seq"], row["window_start"], row["window_end"]) == (
            str(e["seq"]),
            e["window_start"],
            e["window_end"],
        )
        assert (row["emotion"], row["emoji"], float(row["confidence"])) == (e["emotion"], e["emoji"], e["confidence"])
        face, speech = e["modalities"]["face"], e["modalities"]["speech"]
        assert row["face_label"] == (face["label"] if face else "")
        assert row["speech_label"] == (speech["label"] if speech else "")
        if speech:
            assert float(row["speech_confidence"]) == speech["confidence"]
    # What the clip shows, segment by segment (window 7 straddles two speakers, see the README).
    for start, end, emotion in SEGMENTS:
        inside = [r for r in rows if start <= float(r["media_start_s"]) and float(r["media_end_s"]) <= end]
        assert sum(r["emotion"] == emotion for r in inside) >= 2, (emotion, inside)


def test_export_filters_by_time_and_writes_json_lines_to_a_file(replayed: Any, tmp_path: Path) -> None:
    state, events = replayed
    since, until = events[2]["window_start"], events[5]["window_start"]
    out = tmp_path / "part.jsonl"
    r = export(state, "--since", since, "--until", until, "--format", "jsonl", "--out", str(out))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["seq"] for x in rows] == [e["seq"] for e in events[2:5]]
    assert set(rows[0]) == set(COLUMNS)
    # A date alone and an offset are ISO 8601 too.
    day = datetime.fromisoformat(events[0]["window_start"].replace("Z", "+00:00"))
    assert export(state, "--since", day.date().isoformat()).stdout.count("\n") == 10  # header + 9
    later = (day + timedelta(days=1)).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert export(state, "--since", later).stdout.count("\n") == 1  # only the header


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--since", "last week"], "--since"),
        (["--until", "2026-02-30"], "--until"),
        (["--out", "/proc/nope/x"], "/proc"),
    ],
)
def test_export_mistakes_are_one_line_and_exit_code_2(replayed: Any, args: list[str], needle: str) -> None:
    assert_clean_error(export(replayed[0], *args), needle)


def test_export_without_a_history_says_where_it_looked(tmp_path: Path) -> None:
    assert_clean_error(export(tmp_path / "empty"), str(tmp_path / "empty"), "no history")


def test_purge_before_deletes_only_older_events_and_purge_deletes_the_rest(replayed: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(replayed[0], state)
    events = replayed[1]
    r = run_cli("history", "purge", "--state-dir", str(state), "--before", events[4]["window_start"])
    assert r.returncode == 0 and "purged 4 event(s)" in r.stdout, r.stderr
    assert [e["seq"] for e in HistoryReader(state).events()] == [e["seq"] for e in events[4:]]
    r = run_cli("history", "purge", "--state-dir", str(state))
    assert r.returncode == 0 and "purged 5 event(s)" in r.stdout
    assert HistoryReader(state).count() == 0


def test_history_survives_a_restart_and_keeps_growing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    replay(tmp_path, state)
    _, second = replay(tmp_path, state)
    rows = HistoryReader(state).events()
    # Ordered by window time; a fast replay's windows are stamped from its start, so two runs interleave.
    assert sorted(r["seq"] for r in rows) == list(range(1, 19))
    assert second[-1]["event_id"] in {r["event_id"] for r in rows}


def test_history_disabled_keeps_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _, events = replay(tmp_path, state, history={"enabled": False})
    assert len(events) == 9 and not (state / "history.sqlite3").exists()
    assert_clean_error(export(state), "no history")


def test_a_history_that_cannot_be_written_costs_no_event_and_is_said_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "history.sqlite3").mkdir(parents=True)  # stands in for a read-only card: SQLite cannot open it
    r, events = replay(tmp_path, state)
    assert len(events) == 9, "the daemon stopped on a broken history"
    assert r.stderr.count("history: cannot write") == 1 and "stats.history.write_failed" in r.stderr


def _event(i: int, when: datetime, emotion: str = "happy") -> dict[str, Any]:
    iso = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    end = (when + timedelta(seconds=2)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "seq": i, "event_id": f"e{i}", "window_start": iso, "window_end": end, "emotion": emotion, "confidence": 0.5,
        "modalities": {"face": {"label": emotion, "confidence": 0.5}, "speech": None},
    }  # fmt: skip


def _drain(h: History, n: int) -> None:
    """Have the writer commit now (it would at the end of its interval) what `record` gave it."""
    assert h.flush(30), "the writer did not answer"
    st = h.stats()
    assert st["written"] + st["write_failed"] + st["queued"] >= n, st


def test_events_older_than_max_days_are_purged_and_counted(tmp_path: Path) -> None:
    h = History(tmp_path, max_days=1)
    h.start()
    now = datetime.now(timezone.utc)
    h.record(_event(1, now - timedelta(days=2)))
    h.record(_event(2, now))
    _drain(h, 2)
    h.close()
    assert h.stats()["purged_age"] == 1 and [r["seq"] for r in HistoryReader(tmp_path).events()] == [2]


def test_the_size_cap_deletes_the_oldest_events_first(tmp_path: Path) -> None:
    h = History(tmp_path, max_mb=1)
    h.start()
    t0 = datetime.now(timezone.utc) - timedelta(hours=12)
    n = 0
    for _ in range(8):  # about 2 MB of rows, in batches the queue holds
        for _ in range(1500):
            n += 1
            h.record(_event(n, t0 + timedelta(seconds=2 * n)))
        _drain(h, n)
    h.close()
    st = h.stats()
    assert st["purged_size"] > 0 and st["dropped"] == 0
    rows = HistoryReader(tmp_path).events()
    assert rows[-1]["seq"] == n and rows[0]["seq"] == n - len(rows) + 1  # the newest kept, the oldest gone
    db = sqlite3.connect(tmp_path / "history.sqlite3")
    used = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
    assert used * db.execute("PRAGMA page_size").fetchone()[0] <= 1.2 * 1024 * 1024


def test_a_corrupt_history_is_moved_aside_and_a_new_one_started(tmp_path: Path, caplog: Any) -> None:
    (tmp_path / "history.sqlite3").write_bytes(b"this is not a database, a power cut mangled it " * 100)
    h = History(tmp_path)
    h.start()
    with caplog.at_level(logging.ERROR):
        h.record(_event(1, datetime.now(timezone.utc)))
        _drain(h, 1)
    h.close()
    aside = list(tmp_path.glob("history.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert [r["seq"] for r in HistoryReader(tmp_path).events()] == [1]
    assert any("was unreadable" in r.message and aside[0].name in r.message for r in caplog.records)


def test_an_unusable_history_recovers_by_itself_once_it_can_be_written(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(history_mod, "REOPEN_AFTER_S", 0.2)
    blocker = tmp_path / "history.sqlite3"
    blocker.mkdir()  # cannot be opened as a database
    h = History(tmp_path)
    h.start()
    h.record(_event(1, datetime.now(timezone.utc)))
    _drain(h, 1)
    assert h.stats()["queued"] == 1 and h.stats()["written"] == 0  # it waits in memory for the next try
    blocker.rmdir()  # space or permissions are back
    h.record(_event(2, datetime.now(timezone.utc)))
    wait_until(lambda: h.flush() and h.stats()["written"] == 2, 10, "the history to be written again")
    h.close()
    assert [r["seq"] for r in HistoryReader(tmp_path).events()] == [1, 2]


def test_the_fusion_thread_never_waits_for_the_history(tmp_path: Path) -> None:
    h = History(tmp_path)  # not started: a writer that is stuck
    import time

    t0 = time.monotonic()
    for i in range(history_mod.QUEUE_MAX + 100):
        h.record(_event(i, datetime.now(timezone.utc)))
    assert time.monotonic() - t0 < 1.0 and h.stats()["dropped"] == 100


def test_every_label_has_one_emoji_and_events_carry_it(replayed: Any) -> None:
    assert set(EMOJI) == {*CANONICAL, UNCERTAIN, NO_ONE, PAUSED} and len(set(EMOJI.values())) == len(EMOJI)
    assert all(e["emoji"] == EMOJI[e["emotion"]] for e in replayed[1])


def test_reading_a_history_the_writer_has_only_just_created_gives_no_rows(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "history.sqlite3").close()  # the file exists, its table not yet
    reader = HistoryReader(tmp_path)
    assert reader.events() == [] and reader.count() == 0 and reader.hourly(0, 2e9) == []


def test_a_damaged_history_is_unavailable_to_readers_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "history.sqlite3").write_bytes(b"garbage " * 1000)
    with pytest.raises(history_mod.HistoryUnavailable):
        HistoryReader(tmp_path).events()
    assert_clean_error(export(tmp_path), "cannot read the history")


def test_a_read_by_the_page_commits_what_waits_so_that_export_agrees(tmp_path: Path) -> None:
    h = History(tmp_path)
    h.start()
    now = datetime.now(timezone.utc)
    h.record(_event(1, now - timedelta(seconds=10)))
    _drain(h, 1)
    h.record(_event(2, now - timedelta(seconds=8)))
    h.record(_event(3, now - timedelta(seconds=6)))  # these wait for the end of the writer's interval
    page, export = HistoryReader(tmp_path, h), HistoryReader(tmp_path)
    assert h.stats()["queued"] == 2 and [r["seq"] for r in export.events()] == [1]
    assert [r["seq"] for r in page.events()] == [1, 2, 3]  # the page's read commits what waits...
    assert [r["seq"] for r in export.events()] == [1, 2, 3]  # ...so `history export` shows the same
    h.record(_event(4, now - timedelta(seconds=4)))  # within 10 s of that commit: no commit for a read yet
    assert page.count() == 3 and h.stats()["queued"] == 1
    h._next_read_commit = 0.0  # as 10 s later
    assert [r["seq"] for r in page.events(limit=2)] == [3, 4]
    assert sum(sum(x["counts"].values()) for x in page.hourly(0, 2e9)) == 4
    h.close()
    assert [r["seq"] for r in export.events()] == [1, 2, 3, 4]

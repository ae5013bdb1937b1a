"""Event times: live events follow the wall clock, replay events are reproducible."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from edge_daemon import events


def test_live_event_times_follow_a_wall_clock_step(monkeypatch: Any) -> None:
    # A board without a real-time clock boots with a stale time and NTP steps it later, while the daemon runs.
    clock = events.Clock(started=time.monotonic() - 100)
    before = clock.wall(100)  # stream second 100 is now
    assert abs((before - datetime.now(timezone.utc)).total_seconds()) < 1

    class SteppedAnHourAhead(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + timedelta(hours=1)

    monkeypatch.setattr(events, "datetime", SteppedAnHourAhead)
    after = clock.wall(100)
    assert abs((after - before).total_seconds() - 3600) < 1, "event times stayed on the clock at start-up"
    assert not clock.replay


def test_replay_event_times_count_from_a_fixed_origin() -> None:
    origin = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    clock = events.Clock(started=time.monotonic(), replay_origin=origin)
    assert clock.replay
    assert events.iso_utc(clock.wall(2.5)) == "2026-11-23T12:00:02.500Z"
    time.sleep(0.05)
    assert clock.wall(2.5) == origin + timedelta(seconds=2.5)  # not moved by time passing

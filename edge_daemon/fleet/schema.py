"""The fleet database: one row per event, each device's current status, and the collector's narrow role.

`emotion-edge collect --init-db` runs this as the database owner (an administrator's connection string); the
collector itself connects as a role that may insert and update these tables and nothing else: no DELETE, no
TRUNCATE, no DDL. Old events are deleted through `emotion_edge_purge(days)`, a function that runs with the owner's
rights and can delete only rows older than the retention it is given (at least one day).

`events` is partitioned by month of `window_start` (PostgreSQL's declarative partitioning): a year of a large fleet
is billions of rows, and per month each partition's indexes stay a twelfth of that, the retention drops whole months
instead of deleting rows, and a query over a time range reads only its months. `emotion_edge_partition(at)` (owner's
rights, like the purge) creates the month that holds `at`; the collector calls it for this month and the next at
start and every retention interval, and for the month of any event it is about to store (an outbox emptied after a
long outage). It refuses times more than 62 days ahead or 20 years back: an event from a device whose clock is that
far off finds no partition and is kept in `rejected`, with the reason. A database set up before partitioning keeps
its one table; --init-db gives it the unique key the collector's INSERT names, and the partition function does
nothing there.
"""

from __future__ import annotations

import re

from ..errors import UserError

TABLES = r"""
-- The key includes window_start because a partitioned table's unique keys must hold its partition key; an event sent
-- again carries the same window_start, so (device_id, event_id) stays unique in effect.
CREATE TABLE IF NOT EXISTS events (
    device_id    text        NOT NULL,
    event_id     text        NOT NULL,
    seq          bigint,
    window_start timestamptz NOT NULL,
    window_end   timestamptz,
    emotion      text,
    confidence   real,
    face_count   integer,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    payload      jsonb       NOT NULL,
    PRIMARY KEY (device_id, event_id, window_start)
) PARTITION BY RANGE (window_start);
-- A table made before partitioning: the key the collector's ON CONFLICT names.
DO $$ BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'events'::regclass) = 'r' THEN
        CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events (device_id, event_id, window_start);
    END IF;
END $$;
-- Time-range queries over the whole fleet, and one device's history in time order.
CREATE INDEX IF NOT EXISTS events_window_start ON events (window_start);
CREATE INDEX IF NOT EXISTS events_device_window ON events (device_id, window_start);

CREATE TABLE IF NOT EXISTS devices (
    device_id       text PRIMARY KEY,
    room            text,           -- yours to fill in (the collector never writes it): UPDATE devices SET room = ...
    availability    text,
    availability_at timestamptz,
    state           jsonb,
    state_at        timestamptz,
    status          jsonb,
    status_at       timestamptz,
    stats           jsonb,
    stats_at        timestamptz,
    last_seq        bigint,
    last_event_at   timestamptz
);

-- Messages that were not events the collector could read (kept for a look, acknowledged so they stop coming).
CREATE TABLE IF NOT EXISTS rejected (
    id          bigserial PRIMARY KEY,
    topic       text        NOT NULL,
    reason      text        NOT NULL,
    payload     text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION emotion_edge_partition(at timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    first timestamptz := date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    name text := 'events_' || to_char(first AT TIME ZONE 'UTC', 'YYYY_MM');
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'events'::regclass) <> 'p' THEN
        RETURN NULL;  -- one table, made before partitioning
    END IF;
    IF at > now() + interval '62 days' OR at < now() - interval '20 years' THEN
        RAISE EXCEPTION 'no partition for %: more than 62 days ahead or 20 years back (a device clock?)', at;
    END IF;
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                   name, first, first + interval '1 month');
    RETURN name;
EXCEPTION WHEN duplicate_table OR unique_violation THEN
    RETURN name;  -- another collector made it at the same moment
END $$;
REVOKE ALL ON FUNCTION emotion_edge_partition(timestamptz) FROM PUBLIC;

CREATE OR REPLACE FUNCTION emotion_edge_purge(days integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    cutoff timestamptz;
    n bigint := 0;
    m bigint;
    part record;
BEGIN
    IF days < 1 THEN
        RAISE EXCEPTION 'retention must be at least one day, got %', days;
    END IF;
    cutoff := now() - make_interval(days => days);
    -- Whole months before the cutoff go at once (no row-by-row delete, no bloat); the rest row by row.
    FOR part IN
        SELECT c.oid::regclass AS rel, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass
    LOOP
        IF (regexp_match(part.bound, 'TO \(''([^'']+)''\)'))[1]::timestamptz <= cutoff THEN
            EXECUTE format('SELECT count(*) FROM %s', part.rel) INTO m;
            EXECUTE format('DROP TABLE %s', part.rel);
            n := n + m;
        END IF;
    END LOOP;
    DELETE FROM events WHERE window_start < cutoff;
    GET DIAGNOSTICS m = ROW_COUNT;
    DELETE FROM rejected WHERE received_at < cutoff;
    RETURN n + m;
END $$;
REVOKE ALL ON FUNCTION emotion_edge_purge(integer) FROM PUBLIC;
"""

# INSERT ... ON CONFLICT needs SELECT on the conflict target's columns; nothing else is read.
GRANTS = """
REVOKE ALL ON events, devices, rejected FROM {role};
GRANT INSERT ON events TO {role};
GRANT SELECT (device_id, event_id, window_start) ON events TO {role};
-- ON CONFLICT DO UPDATE reads the row it updates: the status table is readable, the events are not.
GRANT SELECT, INSERT, UPDATE ON devices TO {role};
GRANT INSERT ON rejected TO {role};
GRANT USAGE ON SEQUENCE rejected_id_seq TO {role};
GRANT EXECUTE ON FUNCTION emotion_edge_purge(integer) TO {role};
GRANT EXECUTE ON FUNCTION emotion_edge_partition(timestamptz) TO {role};
"""


# This month and the next, so that the collector's first events find their partition.
MONTHS_AHEAD = """
SELECT emotion_edge_partition(now()), emotion_edge_partition(date_trunc('month', now()) + interval '1 month');
"""


def role_name(name: str) -> str:
    """A role name safe to put into GRANT (identifiers cannot be bound as parameters)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise UserError(f"database role {name!r}: use lower-case letters, digits and _ only")
    return name


def statements(role: str) -> list[str]:
    """Everything --init-db runs, in order; idempotent (a second run changes nothing)."""
    return [TABLES, GRANTS.format(role=role_name(role)), MONTHS_AHEAD]

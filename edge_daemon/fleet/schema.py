"""The fleet database: one row per event, each device's current status, and the collector's narrow role.

`emotion-edge collect --init-db` runs this as the database owner (an administrator's connection string); the
collector itself connects as a role that may insert and update these tables and nothing else: no DELETE, no
TRUNCATE, no DDL. Old events are deleted through `emotion_edge_purge(days)`, a function that runs with the owner's
rights and can delete only rows older than the retention it is given (at least one day).
"""

from __future__ import annotations

import re

from ..errors import UserError

TABLES = """
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
    PRIMARY KEY (device_id, event_id)
);
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

CREATE OR REPLACE FUNCTION emotion_edge_purge(days integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    n bigint;
BEGIN
    IF days < 1 THEN
        RAISE EXCEPTION 'retention must be at least one day, got %', days;
    END IF;
    DELETE FROM events WHERE window_start < now() - make_interval(days => days);
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM rejected WHERE received_at < now() - make_interval(days => days);
    RETURN n;
END $$;
REVOKE ALL ON FUNCTION emotion_edge_purge(integer) FROM PUBLIC;
"""

# INSERT ... ON CONFLICT needs SELECT on the conflict target's columns; nothing else is read.
GRANTS = """
REVOKE ALL ON events, devices, rejected FROM {role};
GRANT INSERT ON events TO {role};
GRANT SELECT (device_id, event_id) ON events TO {role};
-- ON CONFLICT DO UPDATE reads the row it updates: the status table is readable, the events are not.
GRANT SELECT, INSERT, UPDATE ON devices TO {role};
GRANT INSERT ON rejected TO {role};
GRANT USAGE ON SEQUENCE rejected_id_seq TO {role};
GRANT EXECUTE ON FUNCTION emotion_edge_purge(integer) TO {role};
"""


def role_name(name: str) -> str:
    """A role name safe to put into GRANT (identifiers cannot be bound as parameters)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise UserError(f"database role {name!r}: use lower-case letters, digits and _ only")
    return name


def statements(role: str) -> list[str]:
    """Everything --init-db runs, in order; idempotent (a second run changes nothing)."""
    return [TABLES, GRANTS.format(role=role_name(role))]

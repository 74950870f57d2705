"""The outbox schema and its migrations; ``PRAGMA user_version`` holds the applied version.

To change the schema, append a migration: never edit one that has shipped.
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from relay.errors import OutboxError
from relay.store.polled import CURSORS_TABLE, LEDGER_REPORTED_BY

MIGRATIONS: tuple[str, ...] = (
    # 1: events with their canonical body bytes, and the delivery log of attempts.
    """
    CREATE TABLE events (
        id               INTEGER PRIMARY KEY,
        server_id        TEXT    NOT NULL,
        token            TEXT    NOT NULL,
        event            TEXT    NOT NULL,
        server_event_id  TEXT    NOT NULL,
        rank             INTEGER NOT NULL,  -- registered 0, qualified 1, reversed 2
        test             INTEGER NOT NULL,
        body             BLOB    NOT NULL,  -- the exact bytes signed and sent
        fingerprint      TEXT    NOT NULL,  -- digest of what the client sent
        status           TEXT    NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead')),
        outcome          TEXT,              -- accepted/duplicate/ignored/test, or why it died
        attempts         INTEGER NOT NULL DEFAULT 0,
        created_at       REAL    NOT NULL,
        next_attempt_at  REAL    NOT NULL,  -- for in_flight rows: when the lease runs out
        last_error       TEXT,
        last_http_status INTEGER,
        response         TEXT,              -- MMOLove's last answer, trimmed
        referral_id      TEXT,
        state            TEXT,
        finished_at      REAL,
        -- Token first, so the same index serves lookups by token and the ordering check.
        UNIQUE (token, server_id, event, server_event_id)
    );
    -- Claims walk one server's due range at a time, so a paused server's backlog is skipped.
    CREATE INDEX events_due ON events (status, server_id, next_attempt_at);
    CREATE INDEX events_server_event_id ON events (server_event_id);
    CREATE INDEX events_finished ON events (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE attempts (
        id          INTEGER PRIMARY KEY,
        event_id    INTEGER NOT NULL,
        started_at  REAL    NOT NULL,
        duration_ms REAL    NOT NULL,
        http_status INTEGER,
        outcome     TEXT    NOT NULL,
        detail      TEXT
    );
    CREATE INDEX attempts_event ON attempts (event_id, id);
    CREATE INDEX attempts_started ON attempts (started_at);
    """,
    # 2: an operator's retry of a dead event restarts its max_age clock from that moment.
    """
    ALTER TABLE events ADD COLUMN replayed_at REAL;
    """,
    # 3: migration 1 was edited after it shipped (claims walk one server's due range), so
    # outboxes created before that edit still have the old events_due index.
    """
    DROP INDEX IF EXISTS events_due;
    CREATE INDEX events_due ON events (status, server_id, next_attempt_at);
    """,
    # 4: operator visibility. The player anchor on events; rejected inputs (bounded by
    # count); a compact ledger of delivered events that outlives their bodies; and the
    # alert state machine, so a restart is not a new incident.
    """
    ALTER TABLE events ADD COLUMN referee_identity TEXT;
    UPDATE events SET referee_identity = json_extract(CAST(body AS TEXT), '$.referee_identity')
        WHERE event = 'registered';
    CREATE INDEX events_referee ON events (referee_identity) WHERE referee_identity IS NOT NULL;
    CREATE TABLE rejected (
        id               INTEGER PRIMARY KEY,  -- grows with time: newest first is id order
        at               REAL    NOT NULL,
        http_status      INTEGER NOT NULL,
        code             TEXT    NOT NULL,
        field            TEXT,
        message          TEXT    NOT NULL,
        server_event_id  TEXT,
        token            TEXT,
        referee_identity TEXT,
        peer             TEXT,
        body             BLOB                  -- the first 512 bytes the client sent
    );
    CREATE TABLE ledger (
        event_id         INTEGER PRIMARY KEY,  -- the id the event had in the outbox
        server_id        TEXT    NOT NULL,
        token            TEXT    NOT NULL,
        event            TEXT    NOT NULL,
        server_event_id  TEXT    NOT NULL,
        referee_identity TEXT,
        test             INTEGER NOT NULL,
        outcome          TEXT,
        referral_id      TEXT,
        state            TEXT,
        attempts         INTEGER NOT NULL,
        created_at       REAL    NOT NULL,
        finished_at      REAL    NOT NULL
    );
    CREATE INDEX ledger_token ON ledger (token, server_id);
    CREATE INDEX ledger_referee ON ledger (referee_identity) WHERE referee_identity IS NOT NULL;
    CREATE INDEX ledger_finished ON ledger (finished_at);
    CREATE TABLE alert_state (
        key        TEXT PRIMARY KEY,  -- condition and subject, e.g. paused:srv-1
        since      REAL NOT NULL,     -- when it started firing
        last_sent  REAL NOT NULL,     -- the firing message or the last reminder
        summary    TEXT NOT NULL      -- what the firing message said
    );
    CREATE TABLE alert_marks (
        name   TEXT PRIMARY KEY,      -- e.g. the last dead event already alerted on
        value  REAL NOT NULL
    );
    """,
    # 5: each registration watcher's cursor, written with the events of its poll.
    CURSORS_TABLE.format(real="REAL"),
    # 6: the ledger keeps which source reported each event, as the events table does.
    LEDGER_REPORTED_BY,
)


def require_current(version: int, path: Path, *, doing: str, remedy: str) -> None:
    """Refuse a file of another schema version where this relay reads it without migrating:
    ``doing`` is what it would do with the file, ``remedy`` what the operator does instead."""
    if version != len(MIGRATIONS):
        raise OutboxError(
            f"the outbox {path} has schema version {version} and this relay {doing} version "
            f"{len(MIGRATIONS)}. {remedy}"
        )


async def migrate(db: aiosqlite.Connection) -> int:
    """Apply pending migrations in one transaction each; returns the schema version."""
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise OutboxError(
            f"the outbox has schema version {version}, newer than this relay knows "
            f"({len(MIGRATIONS)}); run the newer relay or restore a matching outbox."
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # executescript commits first, so wrap the migration and its version in one script.
        await db.executescript(
            f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
        )
        version = number
    return version

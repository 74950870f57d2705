"""The PostgreSQL outbox schema and its migrations; ``relay_schema`` holds the applied version.

The tables mirror the SQLite ones (times are Unix seconds in both), plus what a fleet needs:
each claim's lease owner and fencing token. To change the schema, append a migration:
never edit one that has shipped.
"""

from __future__ import annotations

from relay.errors import OutboxError
from relay.store.polled import CURSORS_TABLE, LEASES_TABLE, LEDGER_REPORTED_BY
from relay.store.postgres_sql import Db

# Replicas starting together migrate one at a time under this transaction-scoped lock.
_MIGRATION_LOCK = 0x6D6D6F6C  # "mmol"

MIGRATIONS: tuple[str, ...] = (
    # 1: events, the delivery log, and the lease fencing sequence.
    """
    CREATE TABLE events (
        id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        server_id        TEXT    NOT NULL,
        token            TEXT    NOT NULL,
        event            TEXT    NOT NULL,
        server_event_id  TEXT    NOT NULL,
        rank             INTEGER NOT NULL,  -- registered 0, qualified 1, reversed 2
        test             BOOLEAN NOT NULL,
        body             BYTEA   NOT NULL,  -- the exact bytes signed and sent
        fingerprint      TEXT    NOT NULL,  -- digest of what the client sent
        status           TEXT    NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead')),
        outcome          TEXT,
        attempts         INTEGER NOT NULL DEFAULT 0,
        created_at       DOUBLE PRECISION NOT NULL,
        next_attempt_at  DOUBLE PRECISION NOT NULL,  -- for in_flight rows: the lease's end
        last_error       TEXT,
        last_http_status INTEGER,
        response         TEXT,
        referral_id      TEXT,
        state            TEXT,
        finished_at      DOUBLE PRECISION,
        replayed_at      DOUBLE PRECISION,
        lease_owner      TEXT,              -- the replica that claimed the row last
        lease            BIGINT NOT NULL DEFAULT 0,  -- fencing token of the latest claim
        UNIQUE (token, server_id, event, server_event_id)
    );
    CREATE INDEX events_due ON events (status, server_id, next_attempt_at);
    CREATE INDEX events_server_event_id ON events (server_event_id);
    CREATE INDEX events_finished ON events (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE attempts (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id    BIGINT NOT NULL,
        started_at  DOUBLE PRECISION NOT NULL,
        duration_ms DOUBLE PRECISION NOT NULL,
        http_status INTEGER,
        outcome     TEXT NOT NULL,
        detail      TEXT
    );
    CREATE INDEX attempts_event ON attempts (event_id, id);
    CREATE INDEX attempts_started ON attempts (started_at);
    CREATE SEQUENCE leases;
    """,
    # 2: what each replica decided about delivery, for the others to follow (relay/fleet.py).
    """
    CREATE TABLE replicas (
        owner              TEXT PRIMARY KEY,
        seen_at            DOUBLE PRECISION NOT NULL,
        circuit_open_until DOUBLE PRECISION,
        paused             TEXT NOT NULL DEFAULT '[]'  -- JSON [[server_id, reason], ...]
    );
    """,
    # 3: operator visibility, as SQLite's migration 4: the player anchor on events; rejected
    # inputs (bounded by count); the ledger of delivered events that outlives their bodies;
    # and the alert state machine, so a restart is not a new incident.
    """
    ALTER TABLE events ADD COLUMN referee_identity TEXT;
    UPDATE events SET referee_identity = convert_from(body, 'UTF8')::jsonb->>'referee_identity'
        WHERE event = 'registered';
    CREATE INDEX events_referee ON events (referee_identity) WHERE referee_identity IS NOT NULL;
    CREATE TABLE rejected (
        id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- newest: highest
        at               DOUBLE PRECISION NOT NULL,
        http_status      INTEGER NOT NULL,
        code             TEXT    NOT NULL,
        field            TEXT,
        message          TEXT    NOT NULL,
        server_event_id  TEXT,
        token            TEXT,
        referee_identity TEXT,
        peer             TEXT,
        body             BYTEA                 -- the first 512 bytes the client sent
    );
    CREATE INDEX rejected_at ON rejected (at);
    CREATE TABLE ledger (
        event_id         BIGINT PRIMARY KEY,   -- the id the event had in the outbox
        server_id        TEXT    NOT NULL,
        token            TEXT    NOT NULL,
        event            TEXT    NOT NULL,
        server_event_id  TEXT    NOT NULL,
        referee_identity TEXT,
        test             BOOLEAN NOT NULL,
        outcome          TEXT,
        referral_id      TEXT,
        state            TEXT,
        attempts         INTEGER NOT NULL,
        created_at       DOUBLE PRECISION NOT NULL,
        finished_at      DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX ledger_token ON ledger (token, server_id);
    CREATE INDEX ledger_referee ON ledger (referee_identity) WHERE referee_identity IS NOT NULL;
    CREATE INDEX ledger_finished ON ledger (finished_at);
    CREATE TABLE alert_state (
        key        TEXT PRIMARY KEY,  -- condition and subject, e.g. paused:srv-1
        since      DOUBLE PRECISION NOT NULL,
        last_sent  DOUBLE PRECISION NOT NULL,
        summary    TEXT NOT NULL
    );
    CREATE TABLE alert_marks (
        name   TEXT PRIMARY KEY,      -- e.g. the last dead event already alerted on
        value  DOUBLE PRECISION NOT NULL
    );
    """,
    # 4: each registration watcher's cursor, as SQLite's migration 5; and which replica
    # polls each source.
    CURSORS_TABLE.format(real="DOUBLE PRECISION") + LEASES_TABLE,
    # 5: the ledger keeps which source reported each event, as SQLite's migration 6.
    LEDGER_REPORTED_BY,
)


async def migrate(db: Db) -> int:
    """Apply pending migrations, each with its version in one transaction; returns the version."""
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await db.execute("CREATE TABLE IF NOT EXISTS relay_schema (version INTEGER NOT NULL)")
        version = await db.fetchval("SELECT max(version) FROM relay_schema") or 0
        if version > len(MIGRATIONS):
            raise OutboxError(
                f"the outbox database has schema version {version}, newer than this relay "
                f"knows ({len(MIGRATIONS)}); run the newer relay, or point MMOLOVE_RELAY_DB "
                "at another database."
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await db.execute(script)
            await db.execute("INSERT INTO relay_schema (version) VALUES ($1)", number)
            version = number
    return int(version)

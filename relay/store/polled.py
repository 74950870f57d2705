"""What the source watchers keep in the outbox, in SQL both backends share (``?``
placeholders, numbered by the dialect): each registration watcher's cursor, stored in the
same transaction as the events its poll produced, and the players a milestone watcher asks
about."""

from __future__ import annotations

# The cursor is JSON text: an auto-increment id stays a number, a timestamp a string.
SET_CURSOR = (
    "INSERT INTO source_cursors (name, cursor, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at"
)
GET_CURSOR = "SELECT cursor FROM source_cursors WHERE name = ?"

# Not yet qualified: no qualified event for the token, in the outbox or in the ledger its
# delivered rows are pruned into. Test events and dead registrations are nobody to watch.
_NOT_QUALIFIED = """
  AND NOT EXISTS (SELECT 1 FROM events AS q WHERE q.token = r.token
                  AND q.server_id = r.server_id AND q.event = 'qualified')
  AND NOT EXISTS (SELECT 1 FROM ledger AS q WHERE q.token = r.token
                  AND q.server_id = r.server_id AND q.event = 'qualified')
"""
# Players referred to a server since a time and not yet qualified: (referee_identity, token).
WATCHED = f"""
SELECT r.referee_identity, r.token FROM events AS r
WHERE r.event = 'registered' AND r.server_id = ? AND r.created_at >= ? AND NOT r.test
  AND r.status <> 'dead' AND r.referee_identity IS NOT NULL {_NOT_QUALIFIED}
UNION
SELECT r.referee_identity, r.token FROM ledger AS r
WHERE r.event = 'registered' AND r.server_id = ? AND r.created_at >= ? AND NOT r.test
  AND r.referee_identity IS NOT NULL {_NOT_QUALIFIED}
"""

# A fleet's one poller per source: the lease is taken when free or run out, renewed by its
# holder; the row comes back only to the replica that holds it now (PostgreSQL only).
CLAIM = (
    "INSERT INTO source_leases (name, owner, until) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until"
    " WHERE source_leases.owner = excluded.owner OR source_leases.until < ?"
    " RETURNING owner"
)
LEASES_TABLE = """
    CREATE TABLE source_leases (
        name   TEXT PRIMARY KEY,           -- the source's name in [[sources]]
        owner  TEXT NOT NULL,              -- the replica polling it
        until  DOUBLE PRECISION NOT NULL   -- when another replica may take it over
    );
"""

# The schema both backends add for it (SQLite's migration 5, PostgreSQL's 4): which source
# reported each event (the player view and the console say it), and the cursors.
CURSORS_TABLE = """
    ALTER TABLE events ADD COLUMN reported_by TEXT;
    CREATE TABLE source_cursors (
        name        TEXT PRIMARY KEY,  -- the source's name in [[sources]]
        cursor      TEXT NOT NULL,     -- JSON: the last row's cursor the outbox holds events of
        updated_at  {real} NOT NULL
    );
"""
# The ledger names it too (SQLite's migration 6, PostgreSQL's 5), so an event's story says
# who reported it after the prune; entries pruned before stay without (their events are gone).
LEDGER_REPORTED_BY = "ALTER TABLE ledger ADD COLUMN reported_by TEXT;"

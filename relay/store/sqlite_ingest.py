"""Storing ingested events: every ``add`` queued behind one commit goes in as one statement.

The writer's thread shares the interpreter with the event loop, and each SQLite statement
step hands the GIL back and waits to take it again while the loop is busy answering. Row by
row, a group of 17 ingests cost 36 steps and 1.5 ms of mostly waiting; here it costs five
in the usual case, whatever the group's size: one multi-row INSERT, and one read of the
rows it added, as a JSON array, matched to the events by key (SQLite does not promise the
order of RETURNING rows, and RETURNING would cost a step per row).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from relay.events import Event
from relay.store.contract import INGEST_COLUMNS, Added, ingest_values

Adds = tuple[Sequence[Event], float]  # one ``add`` call: its events and its ``now``
Key = tuple[str, str, str, str]  # token, server_id, event, server_event_id: unique

_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_PER_STATEMENT = 1000  # rows: 12,000 parameters, well under SQLite's 32,766
# The rows just added (ids only grow: INTEGER PRIMARY KEY takes the largest plus one).
_ADDED = (
    "SELECT json_group_array(json_array(id, token, server_id, event, server_event_id))"
    " FROM events WHERE id > ?"
)
# The rows already holding some keys: a repeat, or a key sent twice in one group.
_EXISTING = """
SELECT json_group_array(json_array(e.id, e.token, e.server_id, e.event, e.server_event_id,
                                   e.status, e.fingerprint))
FROM json_each(?) AS j
JOIN events AS e ON e.token = j.value ->> 0 AND e.server_id = j.value ->> 1
                AND e.event = j.value ->> 2 AND e.server_event_id = j.value ->> 3
"""


def insert_events(db: sqlite3.Connection, groups: list[Adds]) -> list[list[Added]]:
    """Store every event of every ``add`` (inside the writer's transaction); answer each add.

    An existing key is reported, not stored: ``conflict`` if its stored payload differs.
    The same key twice in one group is stored once; the second is its duplicate.
    """
    rows = [ingest_values(ev, now) for events, now in groups for ev in events]
    newest = db.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
    for start in range(0, len(rows), _PER_STATEMENT):
        chunk = rows[start : start + _PER_STATEMENT]
        db.execute(
            f"INSERT INTO events ({INGEST_COLUMNS}) VALUES {', '.join([_ROW] * len(chunk))}"
            " ON CONFLICT DO NOTHING",
            [value for row in chunk for value in row],
        )
    added: dict[Key, int] = {
        (token, server_id, event, sid): row_id
        for row_id, token, server_id, event, sid in _json_rows(db, _ADDED, newest)
    }
    answers: list[list[Added]] = []
    repeats: list[tuple[list[Added], int, Event]] = []  # answered once their row is read
    for events, _ in groups:
        answer: list[Added] = []
        for ev in events:
            row_id = added.pop(_key(ev), None)  # popped: a second send of it is a repeat
            if row_id is None:
                repeats.append((answer, len(answer), ev))  # its placeholder is replaced below
            answer.append(Added(id=row_id or 0, status="pending", created=True, conflict=False))
        answers.append(answer)
    if repeats:
        keys = json.dumps([_key(ev) for _, _, ev in repeats])
        stored = {
            (token, server_id, event, sid): (row_id, status, fingerprint)
            for row_id, token, server_id, event, sid, status, fingerprint in _json_rows(
                db, _EXISTING, keys
            )
        }
        for answer, place, ev in repeats:
            row_id, status, fingerprint = stored[_key(ev)]
            conflict = fingerprint != ev.fingerprint
            answer[place] = Added(id=row_id, status=status, created=False, conflict=conflict)
    return answers


def _key(ev: Event) -> Key:
    return (ev.token, ev.server_id, ev.event, ev.server_event_id)


def _json_rows(db: sqlite3.Connection, sql: str, param: object) -> list[list[Any]]:
    """One statement whose single row is a JSON array: one step, however many rows."""
    rows: list[list[Any]] = json.loads(db.execute(sql, (param,)).fetchone()[0])
    return rows

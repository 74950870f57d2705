"""``migrate-outbox``: copy a SQLite outbox into PostgreSQL, whatever state its events are in.

Events keep their ids (clients and operators hold them), statuses, outcomes, attempt counts
and answers, and their delivery log comes along, as do the ledger and the rejected inputs
(alert state is not copied: the fleet's rules find what is firing again). Each chunk commits
as one transaction and a row already in the target is left as it is, so an interrupted copy
is simply run again. The relay on the file must be stopped: its file lock is taken for the
whole copy, and a row it left in flight is copied as pending, as its own start-up would have
made it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from relay.errors import OutboxError
from relay.store.contract_records import LEDGER_COLUMNS, REJECTED_COLUMNS
from relay.store.postgres import PostgresOutbox
from relay.store.reads import EVENT_COLUMNS
from relay.store.sqlite_file import lock
from relay.store.sqlite_schema import require_current

CHUNK = 1000
# Every stored column of an event: what operators see, and what ordering and duplicates need.
_EVENT_COLUMNS = (*EVENT_COLUMNS.split(", "), "rank", "fingerprint")
# Kept beside the events: the ledger of pruned deliveries and the rejected inputs, each by
# its key, with the column SQLite stores as an integer and PostgreSQL as a boolean.
_RECORDS = (
    ("ledger", "event_id", LEDGER_COLUMNS.split(", "), "test"),
    ("rejected", "id", REJECTED_COLUMNS.split(", "), None),
)
_ATTEMPT_COLUMNS = (
    "id",
    "event_id",
    "started_at",
    "duration_ms",
    "http_status",
    "outcome",
    "detail",
)


@dataclass(frozen=True, slots=True)
class Copied:
    """What one run of the copy did."""

    events: int  # rows in the source
    copied: int  # newly written to the target
    already_there: int  # written by an earlier run
    attempts: int  # attempt rows newly written
    records: int  # ledger entries and rejected inputs newly written


async def copy_outbox(
    source: Path,
    url: str,
    *,
    where: str,
    password: str | None,
    progress: Callable[[str], None],
) -> Copied:
    """Copy every event and attempt of the SQLite outbox at ``source`` into ``url``."""
    if not source.exists():  # noqa: ASYNC240 - once, before any work starts
        raise OutboxError(f"there is no outbox at {source}; name the SQLite file with --from.")
    held = lock(source)  # refuses while a relay holds the file
    try:
        with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as db:
            # The copy reads the columns of this relay's schema: an older file is migrated first.
            require_current(
                int(db.execute("PRAGMA user_version").fetchone()[0]),
                source,
                doing="copies",
                remedy="Start this relay's daemon on the file once (it migrates the schema as "
                "it starts), stop it, then run migrate-outbox again.",
            )
            return await _copy(db, url, where=where, password=password, progress=progress)
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot read the outbox {source}: {exc}.") from exc
    finally:
        os.close(held)


async def _copy(
    db: sqlite3.Connection,
    url: str,
    *,
    where: str,
    password: str | None,
    progress: Callable[[str], None],
) -> Copied:
    box = await PostgresOutbox.open(url, where=where, password=password)  # creates the schema
    await box.close()
    total = int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    target = await asyncpg.connect(url, password=password)
    copied = already = attempts = 0
    try:
        last_id = 0
        while True:
            rows = db.execute(
                f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, CHUNK),
            ).fetchall()
            if not rows:
                break
            last_id = rows[-1][0]
            ids = [row[0] for row in rows]
            logged = db.execute(
                f"SELECT {', '.join(_ATTEMPT_COLUMNS)} FROM attempts"
                f" WHERE event_id IN ({', '.join('?' * len(ids))}) ORDER BY id",
                ids,
            ).fetchall()
            new, logged_new = await _copy_chunk(target, [_event(r) for r in rows], logged)
            copied, already, attempts = (
                copied + new,
                already + len(rows) - new,
                attempts + logged_new,
            )
            progress(f"events: {copied + already}/{total} ({already} already there)")
        records = 0
        for table, key, columns, flag in _RECORDS:
            records += await _copy_records(db, target, table, key, columns, flag)
        await _continue_ids(target)
    finally:
        await target.close()
    return Copied(
        events=total, copied=copied, already_there=already, attempts=attempts, records=records
    )


async def _copy_records(
    db: sqlite3.Connection,
    target: asyncpg.Connection,
    table: str,
    key: str,
    columns: list[str],
    flag: str | None,
) -> int:
    """Copy ``table`` in chunks of its key; rows already there stay. How many were new."""
    marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    insert = (
        f"INSERT INTO {table} ({', '.join(columns)}) OVERRIDING SYSTEM VALUE VALUES ({marks})"
        " ON CONFLICT DO NOTHING"
    )
    new, last = 0, 0
    while rows := db.execute(
        f"SELECT {', '.join(columns)} FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?",
        (last, CHUNK),
    ).fetchall():
        last = rows[-1][columns.index(key)]
        async with target.transaction():
            for row in rows:
                values = dict(zip(columns, row, strict=True))
                if flag is not None:
                    values[flag] = bool(values[flag])
                new += (await target.execute(insert, *values.values())).endswith(" 1")
    return new


def _event(row: tuple[Any, ...]) -> tuple[Any, ...]:
    values = dict(zip(_EVENT_COLUMNS, row, strict=True))
    values["test"] = bool(values["test"])
    if values["status"] == "in_flight":  # the stopped relay's attempt proved nothing
        values["status"] = "pending"
    return tuple(values.values())


async def _copy_chunk(
    target: asyncpg.Connection, events: list[tuple[Any, ...]], logged: list[tuple[Any, ...]]
) -> tuple[int, int]:
    """One transaction: the events not yet there, then their attempts. How many of each."""
    columns = ", ".join(_EVENT_COLUMNS)
    marks = ", ".join(f"${i}" for i in range(1, len(_EVENT_COLUMNS) + 1))
    attempt_marks = ", ".join(f"${i}" for i in range(1, len(_ATTEMPT_COLUMNS) + 1))
    async with target.transaction():
        new = 0
        for values in events:
            inserted = await target.fetchval(
                f"INSERT INTO events ({columns}) OVERRIDING SYSTEM VALUE VALUES ({marks})"
                " ON CONFLICT DO NOTHING RETURNING id",
                *values,
            )
            if inserted is not None:
                new += 1
                continue
            same = await target.fetchval(
                "SELECT count(*) FROM events WHERE id = $1 AND server_id = $2 AND token = $3"
                " AND event = $4 AND server_event_id = $5",
                *values[:5],
            )
            if not same:
                raise OutboxError(
                    f"the target database already holds a different event with id {values[0]}"
                    " (or this event's key under another id); copy into an empty database, or"
                    " the one an earlier run of this copy filled."
                )
        logged_new = 0
        for values in logged:
            result = await target.execute(
                f"INSERT INTO attempts ({', '.join(_ATTEMPT_COLUMNS)}) OVERRIDING SYSTEM VALUE"
                f" VALUES ({attempt_marks}) ON CONFLICT DO NOTHING",
                *values,
            )
            logged_new += result.endswith(" 1")
    return new, logged_new


async def _continue_ids(target: asyncpg.Connection) -> None:
    """New events and attempts get ids after the copied ones."""
    for table in ("events", "attempts", "rejected"):
        await target.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
            f" GREATEST((SELECT max(id) FROM {table}), 1))"
        )

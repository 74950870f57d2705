"""Fill an outbox file directly with SQL, fast, in the relay's real schema.

A million events through HTTP would take minutes; this takes seconds and produces the same
rows ingest would (canonical body bytes, pending, due now).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from relay.store.sqlite_schema import MIGRATIONS

_FILL = """
WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
INSERT INTO events (server_id, token, event, server_event_id, rank, test, body, fingerprint,
                    created_at, next_attempt_at, referee_identity)
SELECT ?3, 'mmref-' || ?4 || i, 'registered', 'reg-' || ?4 || i, 0, 0,
       CAST('{"event":"registered","token":"mmref-' || ?4 || i || '","server_id":"' || ?3 ||
            '","referee_identity":"player-' || ?4 || i || '","server_event_id":"reg-' || ?4 ||
            i || '","ts":' || CAST(?5 AS INTEGER) || '}' AS BLOB),
       printf('%064x', i), ?5, ?5, 'player-' || ?4 || i
FROM n
"""
# Delivered events as prune leaves them in the ledger: realistic ids, tokens and answers.
_LEDGER = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
INSERT INTO ledger (event_id, server_id, token, event, server_event_id, referee_identity, test,
                    outcome, referral_id, state, attempts, created_at, finished_at)
SELECT i, 'srv-123', 'mmref-' || printf('%024x', i), 'registered', 'reg-' || i,
       'player-' || i, 0, 'accepted', 'ref_' || printf('%016x', i), 'registered', 1, ?2, ?2
FROM n
"""
# Rejected inputs as a client looping on bad input leaves them: the table full at its cap.
_REJECTED = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
INSERT INTO rejected (at, http_status, code, field, message, server_event_id, token,
                      referee_identity, peer, body)
SELECT ?2 - (?1 - i), 422, 'missing_field', 'referee_identity', 'referee_identity is required.',
       'reg-r' || i, 'mmref-r' || i, NULL, '127.0.0.1',
       CAST('{"event":"registered","token":"mmref-r' || i || '","server_event_id":"reg-r' || i ||
            '"}' AS BLOB)
FROM n
"""
_CHUNK = 100_000


def fill(path: Path, count: int, *, server_id: str, prefix: str) -> float:
    """Create ``path`` with the relay's schema and ``count`` pending events; seconds taken."""
    started = time.monotonic()
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        # The fill is the bench's own set-up, not the product: no need to fsync each chunk.
        db.execute("PRAGMA synchronous = OFF")
        for number, script in enumerate(MIGRATIONS, start=1):
            db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        now = time.time()
        for start in range(1, count + 1, _CHUNK):
            end = min(count, start + _CHUNK - 1)
            db.execute("BEGIN")
            db.execute(_FILL, (start, end, server_id, prefix, now))
            db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return time.monotonic() - started


def rejections(path: Path, count: int) -> None:
    """Add ``count`` rejected inputs to ``path``, one a second up to now."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")
        db.execute(_REJECTED, (count, time.time()))
        db.execute("COMMIT")
    finally:
        db.close()


def ledger_bytes(path: Path, count: int) -> int:
    """Bytes ``count`` ledger entries (with their indexes) add to an empty outbox file."""
    fill(path, 0, server_id="srv-123", prefix="l-")
    empty = path.stat().st_size
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        db.execute(_LEDGER, (count, time.time()))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return path.stat().st_size - empty


def delivered(path: Path) -> int:
    """Attempts that ended delivered so far, read beside the running relay (WAL allows it)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        row = db.execute("SELECT COUNT(*) FROM events WHERE status = 'delivered'").fetchone()
        return int(row[0])
    finally:
        db.close()


def accepted_times(path: Path) -> dict[str, float]:
    """When each delivered event's accepting answer arrived, by server_event_id."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT e.server_event_id, a.started_at + a.duration_ms / 1000.0 FROM attempts AS a"
            " JOIN events AS e ON e.id = a.event_id WHERE a.outcome = 'accepted'"
        ).fetchall()
    finally:
        db.close()
    return {str(sid): float(at) for sid, at in rows}

"""The outbox's state changes, written once for both backends: claim, finish, retry, prune
and purge.

SQLite writes synchronously on its writer's thread, PostgreSQL awaits each statement, so the
logic cannot simply call the database. Each change is instead a generator of ``Step``s: it
yields a statement and is sent back its rows (``fetch``) or its row count, and each backend
drives it inside one of its transactions (``sqlite.run_steps``, ``postgres_sql.run_steps``).
Only what truly differs stays per backend: the claim's candidate query (SKIP LOCKED on
PostgreSQL), its take of the ready rows (the fencing lease), and the spelling (``Dialect``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple, TypeVar

from relay.store.contract import (
    WAITING_FOR_REGISTERED,
    Attempt,
    EventFilter,
    EventRecord,
    Outcome,
    Retried,
    claim_rule,
)
from relay.store.contract_records import EVENT_AS_LEDGER, LEDGER_COLUMNS
from relay.store.dialect import Dialect

T = TypeVar("T")


class Step(NamedTuple):
    """One statement, in the backend's own spelling; ``fetch``: its rows are wanted, not its
    row count. A tuple: made for every statement on the claim and finish paths."""

    sql: str
    params: tuple[Any, ...]
    fetch: bool = False


Steps = Generator[Step, Any, T]
_LEDGER_KEEPS = ", ".join(
    f"{column} = excluded.{column}" for column in LEDGER_COLUMNS.split(", ")[1:]
)


class Transitions:
    """The state changes of one backend's outbox, as steps in its dialect.

    ``fenced``: an outcome is written only while the claim it was sent on still holds its
    lease (PostgreSQL, where a replica back from a pause may find its row moved on).
    """

    def __init__(self, dialect: Dialect, *, fenced: bool) -> None:
        self.dialect = dialect
        self.fenced = fenced
        sql, off, hint = dialect.sql, dialect.unindexed, dialect.hinted
        # The off-index status keeps the planner on the token index: the status index would
        # walk the server's whole pending backlog to find one referral's events.
        self.wake_followers = sql(
            "UPDATE events SET next_attempt_at = ? WHERE token = ? AND server_id = ?"
            f" AND {off('status')} = 'pending' AND attempts = 0 AND id != ?"
        )
        self._wake_waiting = sql(
            "UPDATE events SET next_attempt_at = ? WHERE token = ? AND server_id = ?"
            f" AND {off('status')} = 'pending' AND outcome = ?"
        )
        self._log_attempt = sql(
            "INSERT INTO attempts (event_id, started_at, duration_ms, http_status, outcome,"
            " detail) VALUES (?, ?, ?, ?, ?, ?)"
        )
        finish_row = (
            "UPDATE events SET status = ?, outcome = ?, next_attempt_at = ?, last_error = ?,"
            " last_http_status = COALESCE(?, last_http_status), response = COALESCE(?, response),"
            " referral_id = COALESCE(?, referral_id), state = COALESCE(?, state), finished_at = ?"
            " WHERE id = ?"
        )
        self._finish_row = sql(finish_row)
        self._finish_fenced = sql(finish_row + " AND status = 'in_flight' AND lease = ?")
        self._due_at = sql("UPDATE events SET next_attempt_at = ? WHERE id = ?")
        self._look = sql(
            "SELECT status, server_id, token, rank, test FROM events WHERE id = ?"
            + dialect.lock_row
        )
        requeue = (
            "UPDATE events SET status = 'pending', outcome = NULL, next_attempt_at = ?,"
            " finished_at = NULL, replayed_at = ? WHERE "
        )
        self._requeue_dead = sql(requeue + "id = ?")
        self._requeue_followers = sql(
            requeue + f"token = ? AND server_id = ? AND {hint('status')} = 'dead'"
            " AND outcome = 'predecessor_dead' AND rank > ? AND NOT test RETURNING id"
        )
        self._to_ledger = sql(
            f"INSERT INTO ledger ({LEDGER_COLUMNS}) SELECT {EVENT_AS_LEDGER} FROM events"
            f" WHERE finished_at < ? AND {hint('status')} = 'delivered'"
            f" ON CONFLICT (event_id) DO UPDATE SET {_LEDGER_KEEPS}"
        )
        self._prune = (
            sql("DELETE FROM ledger WHERE finished_at < ?"),
            sql(f"DELETE FROM events WHERE finished_at < ? AND {hint('status')} = 'delivered'"),
            sql("DELETE FROM attempts WHERE started_at < ?"),
        )
        self._purge = sql(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE status = ?"
            " AND finished_at < ? ORDER BY id LIMIT ?) RETURNING id"
        )

    def claim(
        self,
        requeue: Step,
        candidates: Step,
        take: Callable[[list[int]], Step],
        now: float,
        max_age_s: float,
    ) -> Steps[list[EventRecord]]:
        """``requeue`` hands back rows whose lease ran out; then the claim rules
        (``claim_rule``) over the due ``candidates``; ``take`` leases the ready ids and returns
        them as event rows. Oldest due first."""
        yield requeue
        ready: list[int] = []
        for candidate in (yield candidates):
            verdict = claim_rule(candidate, now, max_age_s)
            if verdict is None:
                ready.append(candidate["id"])
            elif isinstance(verdict, Outcome):
                yield from self.finish_row(candidate["id"], verdict, now)
            else:
                yield Step(self._due_at, (verdict, candidate["id"]))
        if not ready:
            return []
        rows = yield take(ready)
        return sorted((EventRecord.from_row(r) for r in rows), key=lambda r: ready.index(r.id))

    def finish(self, record: EventRecord, outcome: Outcome, attempt: Attempt) -> Steps[bool]:
        """Log the attempt and write what it decided (fenced: only under the lease it was sent
        on); a finished event wakes its followers. Whether the outcome was written."""
        yield Step(
            self._log_attempt,
            (
                attempt.event_id,
                attempt.started_at,
                attempt.duration_ms,
                attempt.http_status,
                attempt.outcome,
                attempt.detail,
            ),
        )
        lease = record.lease if self.fenced else None
        if not (yield from self.finish_row(record.id, outcome, attempt.started_at, lease)):
            return False
        if outcome.status in ("delivered", "dead"):
            woken = (time.time(), record.token, record.server_id)
            yield Step(self.wake_followers, (*woken, record.id))
            if record.event == "registered" and not record.test:
                # The events that overtook this registered may go now (or die with it).
                yield Step(self._wake_waiting, (*woken, WAITING_FOR_REGISTERED))
        return True

    def finish_row(
        self, event_id: int, outcome: Outcome, now: float, lease: int | None = None
    ) -> Steps[bool]:
        """Write an outcome; with ``lease``, only if that claim still holds the row. Written?"""
        finished = now if outcome.status in ("delivered", "dead") else None
        values = (
            outcome.status,
            outcome.outcome,
            outcome.next_attempt_at or now,
            outcome.error,
            outcome.http_status,
            outcome.response,
            outcome.referral_id,
            outcome.state,
            finished,
            event_id,
        )
        if lease is None:
            yield Step(self._finish_row, values)
            return True
        written = yield Step(self._finish_fenced, (*values, lease))
        return bool(written)

    def retry(
        self, ids: Sequence[int] | EventFilter, now: float, limit: int
    ) -> Steps[list[Retried]]:
        """Re-queue the dead events named (or the first ``limit`` the filter picks) and the
        followers that died with them; make pending ones due now."""
        if isinstance(ids, EventFilter):
            where, params = ids.where()
            rows = yield Step(
                self.dialect.sql(f"SELECT id FROM events WHERE {where} ORDER BY id LIMIT ?"),
                (*params, limit),
                fetch=True,
            )
            chosen = [row[0] for row in rows]
        else:
            chosen = list(ids)
        results: list[Retried] = []
        requeued_as_followers: set[int] = set()
        for event_id in chosen:
            if event_id not in requeued_as_followers:
                results.append((yield from self._retry_one(event_id, now)))
                requeued_as_followers.update(results[-1].followers)
        return results

    def _retry_one(self, event_id: int, now: float) -> Steps[Retried]:
        rows = yield Step(self._look, (event_id,), fetch=True)
        if not rows:
            return Retried(event_id, "not_found")
        row = rows[0]
        if row["status"] == "pending":
            yield Step(self._due_at, (now, event_id))
            return Retried(event_id, "due_now")
        if row["status"] != "dead":
            return Retried(event_id, row["status"])
        yield Step(self._requeue_dead, (now, now, event_id))
        followers: list[Any] = []
        if not row["test"]:
            followers = yield Step(
                self._requeue_followers,
                (now, now, row["token"], row["server_id"], row["rank"]),
                fetch=True,
            )
        return Retried(event_id, "requeued", tuple(sorted(r[0] for r in followers)))

    def prune(self, before: float, ledger_before: float) -> Steps[tuple[int, int]]:
        """Delete delivered events finished and attempt rows started before ``before``, each
        event leaving its ledger entry; drop ledger entries finished before ``ledger_before``."""
        yield Step(self._to_ledger, (before,))
        drop_ledger, drop_events, drop_attempts = self._prune
        yield Step(drop_ledger, (ledger_before,))
        events = yield Step(drop_events, (before,))
        attempts = yield Step(drop_attempts, (before,))
        return int(events), int(attempts)

    def purge(self, status: str, before: float, limit: int) -> Steps[int]:
        """Delete up to ``limit`` events of ``status`` finished before ``before``, and their
        attempts; how many events."""
        rows = yield Step(self._purge, (status, before, limit), fetch=True)
        ids = [row[0] for row in rows]
        if ids:
            yield Step(
                self.dialect.sql(
                    f"DELETE FROM attempts WHERE event_id IN ({', '.join('?' * len(ids))})"
                ),
                tuple(ids),
            )
        return len(ids)

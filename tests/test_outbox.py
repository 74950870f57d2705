"""The outbox contract on both backends (a real SQLite file, a real PostgreSQL database):
claims that keep per-referral order, leases, duplicates, retries, pruning and schema
versions; then what only SQLite has (file modes, group commit, the file lock)."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
from dataclasses import fields, replace
from pathlib import Path

import asyncpg
import pytest

from relay.errors import OutboxError, OutboxUnavailable
from relay.events import Event, validate
from relay.store.contract import (
    WAITING_FOR_REGISTERED,
    Attempt,
    EventFilter,
    EventRecord,
    Outbox,
    Outcome,
    Retried,
)
from relay.store.contract_records import AlertState, RejectedFilter, Rejection
from relay.store.postgres import PostgresOutbox
from relay.store.sqlite import SqliteOutbox
from relay.store.sqlite_schema import MIGRATIONS
from tests.support import SERVER, Backend, qualified, registered

NOW = 1_800_000_000.0


def event(body: dict[str, object]) -> Event:
    return validate(body, server_ids=[SERVER], allow_extra_fields=False, now=NOW)


@pytest.fixture
async def sqlite_outbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    box = await SqliteOutbox.open(tmp_path / "outbox.db")
    yield box
    await box.close()


async def claim(box: Outbox, now: float = NOW, limit: int = 10) -> list[int]:
    records = await box.claim(now, limit, servers=[SERVER], lease_s=30, max_age_s=3600)
    return [r.id for r in records]


@pytest.mark.unit
async def test_file_is_private_and_durable_settings_hold(sqlite_outbox: SqliteOutbox) -> None:
    outbox = sqlite_outbox
    await outbox.add([event(registered("t", "p"))], NOW)
    for suffix in ("", "-wal", "-shm"):
        mode = stat.S_IMODE(outbox.path.with_name(outbox.path.name + suffix).stat().st_mode)
        assert mode & 0o077 == 0, (suffix, oct(mode))
    with sqlite3.connect(outbox.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_acknowledged_events_survive_reopen(backend: Backend) -> None:
    box = await backend.open()
    [added] = await box.add([event(registered("t", "p"))], NOW)
    await box.close()
    box = await backend.open()
    try:
        record = await box.get(added.id)
        assert record is not None
        assert record.body == event(registered("t", "p")).body
    finally:
        await box.close()


@pytest.mark.unit
async def test_second_relay_on_the_same_file_is_refused(sqlite_outbox: SqliteOutbox) -> None:
    outbox = sqlite_outbox
    with pytest.raises(OutboxError, match="another relay is already using"):
        await SqliteOutbox.open(outbox.path)


@pytest.mark.unit
async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(OutboxError, match="newer than this relay knows"):
        await SqliteOutbox.open(path)


@pytest.mark.unit
async def test_concurrent_adds_share_transactions(sqlite_outbox: SqliteOutbox) -> None:
    outbox = sqlite_outbox
    """Group commit: 200 concurrent single-event adds take far fewer than 200 commits."""
    before = outbox.writer.commits
    results = await asyncio.gather(
        *(outbox.add([event(registered(f"t{i}", f"p{i}"))], NOW) for i in range(200))
    )
    assert len({r[0].id for r in results}) == 200
    assert outbox.writer.jobs >= 200
    assert outbox.writer.commits - before < 100, outbox.writer.commits - before


async def test_one_key_sent_concurrently_is_stored_once(outbox: Outbox) -> None:
    """Concurrent adds share one commit (one statement on SQLite): the same key in it is
    stored once, its repeats are duplicates, and a different payload is a conflict."""
    same = event(registered("t", "p"))
    other = event(registered("t", "p", test=True))
    bystander = event(registered("u", "q"))
    results = await asyncio.gather(
        *(outbox.add([ev], NOW) for ev in (same, bystander, same, other, same))
    )
    answers = [r[0] for r in results]
    repeats = [answers[i] for i in (0, 2, 4)]  # which of them arrives first is not fixed
    assert sorted(a.created for a in repeats) == [False, False, True]
    assert not any(a.conflict for a in repeats)
    assert answers[3].conflict
    assert not answers[3].created
    assert answers[1].created
    assert not answers[1].conflict
    assert len({answers[i].id for i in (0, 2, 3, 4)}) == 1
    assert answers[1].id != answers[0].id
    record = await outbox.get(answers[0].id)
    assert record is not None
    assert record.body == same.body
    # One batch naming a new key twice: the second is the first's duplicate.
    fresh = event(registered("v", "r"))
    first, second = await outbox.add([fresh, fresh], NOW)
    assert (first.created, second.created, second.id) == (True, False, first.id)


async def test_stored_bodies_keep_their_exact_bytes(outbox: Outbox) -> None:
    """The body signed later is byte for byte the one validated: non-ASCII text, escapes,
    quotes and backslashes included, however many events share the commit."""
    texts = ["игрок «1»", 'quote " and \\ backslash', "line\u2028separator \\u0041", "😀 emoji"]
    events = [event(registered(f"tok-{i}", text)) for i, text in enumerate(texts)]
    results = await asyncio.gather(*(outbox.add([ev], NOW) for ev in events))
    for ev, [added] in zip(events, results, strict=True):
        record = await outbox.get(added.id)
        assert record is not None
        assert record.body == ev.body, (record, ev.body)
        assert record.created_at == NOW


async def test_duplicate_and_conflict_are_reported_not_stored(outbox: Outbox) -> None:
    [first] = await outbox.add([event(registered("t", "p"))], NOW)
    [again] = await outbox.add([event(registered("t", "p"))], NOW + 5)
    [clash] = await outbox.add([event(registered("t", "p", ts=1733500000))], NOW)
    assert (first.created, again.created, again.conflict) == (True, False, False)
    assert again.id == first.id == clash.id
    assert clash.conflict
    assert (await outbox.counts_by_server())[SERVER]["pending"] == 1


async def test_claim_keeps_per_token_order(outbox: Outbox) -> None:
    """qualified waits for registered; finishing registered wakes it."""
    added = await outbox.add(
        [event(qualified("t", "p")), event(registered("t", "p")), event(registered("u", "q"))], NOW
    )
    qual, reg, other = (a.id for a in added)
    assert sorted(await claim(outbox)) == sorted([reg, other])
    deferred = await outbox.get(qual)
    assert deferred is not None
    assert deferred.status == "pending"
    assert await claim(outbox) == []  # still waiting on the in-flight registered
    [reg_record] = [r for r in [await outbox.get(reg)] if r]
    await outbox.finish(
        reg_record,
        Outcome(status="delivered", outcome="accepted"),
        Attempt(reg, NOW, 1.0, 200, "accepted", None),
    )
    assert await claim(outbox, now=time.time()) == [qual]


@pytest.mark.unit
async def test_requeue_in_flight_after_a_crash(sqlite_outbox: SqliteOutbox) -> None:
    outbox = sqlite_outbox
    await outbox.add([event(registered("t", "p"))], NOW)
    [event_id] = await claim(outbox)
    assert await outbox.requeue_in_flight(NOW + 1) == 1
    record = await outbox.get(event_id)
    assert record is not None
    assert (record.status, record.attempts) == ("pending", 1)
    assert await claim(outbox, now=NOW + 1) == [event_id]


async def test_claim_takes_back_an_expired_lease(outbox: Outbox) -> None:
    """An attempt that died without recording its outcome is retried once its lease ends."""
    await outbox.add([event(registered("t", "p"))], NOW)
    [event_id] = await claim(outbox)
    assert await claim(outbox, now=NOW + 29) == []  # lease (30 s) still running
    assert await claim(outbox, now=NOW + 31) == [event_id]


async def test_claim_skips_servers_not_asked_for(outbox: Outbox) -> None:
    """A paused server's events are left alone by claims for the others."""
    await outbox.add([event(registered("t", "p"))], NOW)
    assert await outbox.claim(NOW, 10, servers=["srv-other"], lease_s=30, max_age_s=60) == []
    assert await outbox.next_due(["srv-other"]) is None
    assert await outbox.next_due([SERVER]) == NOW


async def test_test_events_and_same_rank_events_do_not_block(outbox: Outbox) -> None:
    added = await outbox.add(
        [
            event(registered("t", "p", test=True)),
            event(qualified("t", "p")),
            event({**qualified("t", "p"), "server_event_id": "qual-again"}),
        ],
        NOW,
    )
    assert sorted(await claim(outbox)) == sorted(a.id for a in added)


async def test_prune_removes_old_delivered_and_keeps_dead(outbox: Outbox) -> None:
    added = await outbox.add([event(registered("t", "p")), event(registered("u", "q"))], NOW)
    await claim(outbox)  # an outcome is written under the lease of a claim
    for a, status in zip(added, ("delivered", "dead"), strict=True):
        record = await outbox.get(a.id)
        assert record is not None
        await outbox.finish(
            record, Outcome(status=status, outcome="x"), Attempt(a.id, NOW, 1.0, 200, "x", None)
        )
    assert await outbox.prune(NOW + 10) == (1, 2)
    counts = (await outbox.counts_by_server())[SERVER]
    assert (counts["delivered"], counts["dead"]) == (0, 1)


async def finish_as(box: Outbox, event_id: int, status: str, outcome: str, at: float) -> None:
    record = await box.get(event_id)
    assert record is not None
    await box.finish(
        record,
        Outcome(status=status, outcome=outcome, error=f"{outcome} at {at}"),
        Attempt(event_id, at, 1.0, 404, outcome, None),
    )


async def test_retry_requeues_a_dead_event_with_its_followers(outbox: Outbox) -> None:
    """A replay restarts the max_age clock, and the held-back qualified comes back too."""
    reg, qual = (
        a.id
        for a in await outbox.add([event(registered("t", "p")), event(qualified("t", "p"))], NOW)
    )
    assert await claim(outbox) == [reg]
    await finish_as(outbox, reg, "dead", "not_found", NOW)
    assert await claim(outbox, now=NOW + 2) == []  # qualified is dead-lettered behind it
    held = await outbox.get(qual)
    assert held is not None
    assert (held.status, held.outcome) == ("dead", "predecessor_dead")

    later = NOW + 7200  # past the 3600 s max_age of ingest: only the replay keeps them alive
    [result] = await outbox.retry([reg], later)
    assert result == Retried(reg, "requeued", (qual,))
    assert outbox.new_events.is_set()
    assert await claim(outbox, now=later) == [reg]
    await finish_as(outbox, reg, "delivered", "accepted", later)
    assert await claim(outbox, now=later + 1) == [qual]
    replayed = await outbox.get(qual)
    assert replayed is not None
    assert (replayed.replayed_at, replayed.age_from) == (later, later)


async def test_retry_leaves_delivered_and_in_flight_alone(outbox: Outbox) -> None:
    done, flying, waiting = (
        a.id for a in await outbox.add([event(registered(t, t)) for t in ("a", "b", "c")], NOW)
    )
    await claim(outbox, limit=2)
    await finish_as(outbox, done, "delivered", "accepted", NOW)
    results = await outbox.retry([done, flying, waiting, 999], NOW + 5)
    assert [r.result for r in results] == ["delivered", "in_flight", "due_now", "not_found"]
    record = await outbox.get(waiting)
    assert record is not None
    assert record.next_attempt_at == NOW + 5


async def test_retry_by_filter_picks_dead_of_one_reason_in_chunks(outbox: Outbox) -> None:
    ids = [a.id for a in await outbox.add([event(registered(t, t)) for t in "abcde"], NOW)]
    await claim(outbox)
    for event_id, reason in zip(ids, ["not_found"] * 3 + ["bad_request"] * 2, strict=True):
        await finish_as(outbox, event_id, "dead", reason, NOW)
    where = EventFilter(status="dead", outcome="not_found")
    assert await outbox.count(where) == 3
    first = await outbox.retry(where, NOW + 1, limit=2)
    rest = await outbox.retry(replace(where, after_id=first[-1].id), NOW + 1, limit=2)
    assert [r.id for r in first + rest] == ids[:3]
    assert await outbox.count(where) == 0
    assert await outbox.count(EventFilter(status="dead")) == 2


async def test_purge_deletes_old_finished_events_of_one_status(outbox: Outbox) -> None:
    ids = [a.id for a in await outbox.add([event(registered(t, t)) for t in "abcd"], NOW)]
    await claim(outbox)
    for event_id, status, at in zip(
        ids, ["dead", "dead", "delivered", "dead"], [NOW, NOW, NOW, NOW + 100], strict=True
    ):
        await finish_as(outbox, event_id, status, "x", at)
    assert await outbox.purge("dead", NOW + 50, limit=1) == 1
    assert await outbox.purge("dead", NOW + 50) == 1
    assert await outbox.purge("dead", NOW + 50) == 0
    assert [r.id for r in await outbox.select(EventFilter())] == [ids[3], ids[2]]
    assert await outbox.attempts(ids[0]) == []
    with pytest.raises(ValueError, match="only dead or delivered"):
        await outbox.purge("pending", NOW)


async def test_select_filters_newest_first(outbox: Outbox) -> None:
    await outbox.add(
        [event(registered("t", "p")), event(qualified("t", "p")), event(registered("u", "q"))],
        NOW,
    )
    newest_first = await outbox.select(EventFilter(token="t"))
    assert [(r.event, r.token) for r in newest_first] == [("qualified", "t"), ("registered", "t")]
    assert [r.token for r in await outbox.select(EventFilter(event="registered"), limit=1)] == ["u"]
    assert await outbox.select(EventFilter(since=NOW + 1)) == []
    summary = await outbox.counts_by_server()
    assert summary == {SERVER: {"pending": 3, "in_flight": 0, "delivered": 0, "dead": 0}}


async def _hot_path_work(tmp_path: Path, backlog: int) -> int:
    """SQLite VM steps (in hundreds) for one claim, its finish and next_due, with ``backlog``
    other events pending: a count of work done, not a time, so it does not depend on load."""
    box = await SqliteOutbox.open(tmp_path / f"backlog-{backlog}.db")
    try:
        pair = [event(registered("t", "p")), event(qualified("t", "p"))]
        await box.add(pair, NOW - 10)
        for start in range(0, backlog, 500):
            await box.add(
                [event(registered(f"b{i}", f"q{i}")) for i in range(start, start + 500)], NOW
            )
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        box.writer.db.set_progress_handler(count, 100)
        await box._reader.set_progress_handler(count, 100)  # test-only peek at the reader
        [claimed] = await box.claim(NOW, 1, servers=[SERVER], lease_s=30, max_age_s=3600)
        await box.finish(
            claimed,
            Outcome(status="delivered", outcome="accepted"),
            Attempt(claimed.id, NOW, 1.0, 200, "accepted", None),
        )
        await box.next_due([SERVER])
        return steps[0]
    finally:
        await box.close()


@pytest.mark.unit
async def test_hot_path_work_does_not_grow_with_the_backlog(tmp_path: Path) -> None:
    """Claim, finish and next_due use indexes: ten times the backlog is not ten times the
    work (a query that walked the pending backlog made delivery crawl at 1,000,000 rows)."""
    small = await _hot_path_work(tmp_path, 500)
    large = await _hot_path_work(tmp_path, 5000)
    assert large < small * 2, (small, large)


@pytest.mark.unit
async def test_health_measures_the_disk_that_ingest_then_refuses_on(tmp_path: Path) -> None:
    """/readyz's check is the outbox's own: a full disk it finds stops the next add at once."""
    box = await SqliteOutbox.open(tmp_path / "outbox.db", min_free_bytes=2**62)
    try:
        box._disk_checked_at = time.monotonic() + 3600  # ingest's own check would not run yet
        health = await box.health()
        assert health.problems[0].startswith("disk nearly full")
        assert health.free_bytes > 0
        with pytest.raises(OutboxError, match="less than"):
            await box.add([event(registered("t", "p"))], NOW)
    finally:
        await box.close()


@pytest.mark.unit
async def test_records_are_decoded_by_column_name_not_position(
    sqlite_outbox: SqliteOutbox,
) -> None:
    """A SELECT listing the columns in another order yields the same record."""
    outbox = sqlite_outbox
    [added] = await outbox.add([event(registered("t", "p"))], NOW)
    stored = await outbox.get(added.id)
    assert stored is not None
    names = [f.name for f in fields(EventRecord) if f.name != "lease"]
    with sqlite3.connect(outbox.path) as db:
        db.row_factory = sqlite3.Row
        row = db.execute(f"SELECT {', '.join(reversed(names))} FROM events").fetchone()
    assert EventRecord.from_row(row) == stored


async def test_records_are_decoded_by_column_name_on_postgresql(
    pg_url: str, pg_password: str | None
) -> None:
    """As on SQLite: a row whose columns come in another order (the lease first) yields the
    record the outbox reads, leased by a claim."""
    box = await PostgresOutbox.open(pg_url, where=pg_url, password=pg_password)
    try:
        [added] = await box.add([event(registered("t", "p"))], NOW)
        [claimed] = await box.claim(NOW, 1, servers=[SERVER], lease_s=30, max_age_s=3600)
        assert claimed.lease > 0
        assert await box.get(added.id) == claimed
        names = [f.name for f in fields(EventRecord)]
        db = await asyncpg.connect(pg_url, password=pg_password)
        try:
            row = await db.fetchrow(f"SELECT {', '.join(reversed(names))} FROM events")
        finally:
            await db.close()
        assert EventRecord.from_row(row) == claimed
    finally:
        await box.close()


# -- integrated promises, on both backends ------------------------------------------------


async def test_a_waiting_event_is_woken_by_its_registered_or_orphaned_at_max_age(
    outbox: Outbox,
) -> None:
    """WAITING_FOR_REGISTERED: a qualified MMOLove refused before its registered waits, is
    due at once when the registered is delivered, and dies as orphaned if none comes."""
    qual, lone = await outbox.add([event(qualified("t", "p")), event(qualified("u", "q"))], NOW)
    waiting = Outcome(status="pending", outcome=WAITING_FOR_REGISTERED, next_attempt_at=NOW + 3000)
    for record in await outbox.claim(NOW, 10, servers=[SERVER], lease_s=30, max_age_s=3600):
        await outbox.finish(record, waiting, Attempt(record.id, NOW, 1.0, 422, "illegal", None))
    [reg] = await outbox.add([event(registered("t", "p"))], NOW + 1)
    [record] = await outbox.claim(NOW + 1, 10, servers=[SERVER], lease_s=30, max_age_s=3600)
    assert record.id == reg.id
    assert await outbox.registered_delivered_at(SERVER, "t") is None
    attempt = Attempt(reg.id, NOW + 1, 1.0, 200, "accepted", None)
    await outbox.finish(record, Outcome(status="delivered", outcome="accepted"), attempt)
    assert await outbox.registered_delivered_at(SERVER, "t") == NOW + 1
    assert await outbox.registered_delivered_at(SERVER, "u") is None
    # t's qualified is due now that its registered is delivered; u's still waits.
    assert await claim(outbox, now=NOW + 2) == [qual.id]
    still = await outbox.get(lone.id)
    assert still is not None
    assert (still.status, still.next_attempt_at) == ("pending", NOW + 3000)
    assert await claim(outbox, now=NOW + 3600) == []  # u's qualified: past max_age_s
    orphan = await outbox.get(lone.id)
    assert orphan is not None
    assert (orphan.status, orphan.outcome) == ("dead", "orphaned")
    assert "orphaned" in [d.outcome for d in await outbox.records.dead_since(0)]


async def test_player_lookup_and_the_ledger_outlive_pruning(outbox: Outbox) -> None:
    """The registered names the player; the referral's events are found by it, and once
    pruned, the ledger still tells by token and by player, and which source reported it."""
    polled = replace(event(registered("t", "alice")), reported_by="registrations")
    reg, qual, _ = await outbox.add(
        [polled, event(qualified("t", "alice")), event(registered("u"))], NOW
    )
    stored = await outbox.get(reg.id)
    assert stored is not None
    assert stored.referee_identity == "alice"
    found = await outbox.select(EventFilter(player="alice"))
    assert [r.id for r in found] == [qual.id, reg.id]
    assert await outbox.count(EventFilter(player="nobody")) == 0
    for record in await outbox.claim(NOW, 1, servers=[SERVER], lease_s=30, max_age_s=3600):
        attempt = Attempt(record.id, NOW, 1.0, 200, "accepted", None)
        await outbox.finish(record, Outcome(status="delivered", outcome="accepted"), attempt)
    assert await outbox.prune(NOW + 1, ledger_before=NOW - 1) == (1, 1)
    assert await outbox.get(reg.id) is None
    [entry] = await outbox.records.ledger(referee_identity="alice")
    assert (entry.event_id, entry.token, entry.outcome, entry.test, entry.reported_by) == (
        reg.id,
        "t",
        "accepted",
        False,
        "registrations",
    )
    assert await outbox.records.ledger(token="t") == [entry]
    await outbox.prune(NOW + 1, ledger_before=NOW + 1)  # the ledger's own retention
    assert await outbox.records.ledger(token="t") == []


async def test_the_first_delivered_of_a_type_is_found_before_and_after_pruning(
    outbox: Outbox,
) -> None:
    """The console's "Getting started" reads it: a test event or an undelivered one does not
    count, and the first stays found once its body is pruned to the ledger."""
    assert await outbox.records.first_delivered("registered") is None
    probe, first, second, qual = await outbox.add(
        [
            event(registered("t0", "tester", test=True)),
            event(registered("t1", "alice")),
            event(registered("t2", "bob")),
            event(qualified("t1", "alice")),
        ],
        NOW,
    )
    claimed = {
        r.id: r for r in await outbox.claim(NOW, 10, servers=[SERVER], lease_s=30, max_age_s=3600)
    }
    assert qual.id not in claimed  # behind its registered

    async def deliver(event_id: int, at: float, outcome: str = "accepted") -> None:
        attempt = Attempt(event_id, at, 1.0, 200, outcome, None)
        await outbox.finish(claimed[event_id], Outcome("delivered", outcome=outcome), attempt)

    await deliver(probe.id, NOW, "test")
    await deliver(second.id, NOW + 2)
    assert await outbox.records.first_delivered("qualified") is None  # pending
    found = await outbox.records.first_delivered("registered")
    assert found is not None
    assert (found.event_id, found.referee_identity) == (second.id, "bob")
    test = await outbox.records.first_delivered("registered", test=True)
    assert test is not None
    assert test.event_id == probe.id

    await deliver(first.id, NOW + 1)
    await outbox.prune(NOW + 1.5, ledger_before=0.0)  # first to the ledger, second stays
    assert await outbox.get(first.id) is None
    found = await outbox.records.first_delivered("registered")
    assert found is not None
    assert (found.event_id, found.referee_identity) == (first.id, "alice")


async def test_rejections_are_kept_newest_first_and_bounded(outbox: Outbox) -> None:
    def rejected(n: int, token: str | None) -> Rejection:
        return Rejection(
            NOW + n, 422, "invalid_event", f"bad {n}", "ts", None, token, None, None, b"x" * 600
        )

    assert await outbox.records.add_rejections([rejected(n, "t") for n in range(3)], keep=10)
    assert await outbox.records.add_rejections([rejected(3, "u"), rejected(4, None)], keep=4)
    kept = await outbox.records.rejections(RejectedFilter())
    assert [r.message for r in kept] == ["bad 4", "bad 3", "bad 2", "bad 1"]
    assert all(len(r.body) == 512 and r.id > 0 for r in kept)
    only_t = await outbox.records.rejections(RejectedFilter(token="t", since=NOW + 2))
    assert [r.message for r in only_t] == ["bad 2"]
    assert await outbox.records.count_rejections(NOW + 3) == 2


async def test_alert_state_and_marks_survive_a_reopen(backend: Backend) -> None:
    box = await backend.open()
    try:
        await box.records.save_alert(AlertState("paused:srv", NOW, NOW, "paused"))
        await box.records.save_alert(AlertState("paused:srv", NOW, NOW + 60, "paused again"))
        await box.records.save_alert(AlertState("disk", NOW, NOW, "full"))
        await box.records.clear_alert("disk")
        await box.records.set_mark("dead", 7.0)
        await box.records.set_mark("dead", 9.0)
    finally:
        await box.close()
    box = await backend.open()
    try:
        assert await box.records.alert_states() == {
            "paused:srv": AlertState("paused:srv", NOW, NOW + 60, "paused again")
        }
        assert await box.records.mark("dead") == 9.0
        assert await box.records.mark("never") is None
        assert (await box.health()).problems == ()
        assert await box.check_file() is None
        assert await box.can_deliver()
    finally:
        await box.close()


@pytest.mark.unit
async def test_a_failing_write_fails_its_group_and_the_writer_goes_on(
    sqlite_outbox: SqliteOutbox,
) -> None:
    """A bug in a job, or SQL that fails, rolls back the group it was in and tells every
    caller why; the next write commits as usual."""
    writer = sqlite_outbox.writer

    def crash(db: sqlite3.Connection) -> None:
        raise RuntimeError("a bug")

    def bad_sql(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(OutboxError, match="relay bug"):
        await writer.run(crash)
    with pytest.raises(OutboxUnavailable, match="no such table"):
        await writer.run(bad_sql)
    [added] = await sqlite_outbox.add([event(registered("after", "p"))], NOW)
    assert added.created
    assert await sqlite_outbox.get(added.id) is not None

"""A fleet on one outbox: relays sharing a real PostgreSQL database.

First two outboxes on one database, as two replicas see it (claims that skip each other,
fenced leases, order across replicas, wake-ups); then the backend chosen by configuration,
its password kept out of sight; then three real relay processes sharing the work while one
of them is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from relay.config.loading import load_settings
from relay.config.values import Secret
from relay.errors import OutboxError
from relay.events import Event, validate
from relay.sandbox import RunningSandbox
from relay.store import postgres_sql as sql
from relay.store.contract import Attempt, EventFilter, Outcome
from relay.store.contract_records import RejectedFilter, Rejection
from relay.store.postgres import PostgresOutbox
from relay.store.postgres_schema import MIGRATIONS as PG_MIGRATIONS
from relay.store.sqlite import SqliteOutbox
from relay.store.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from tests import support
from tests.harness import (
    CONCURRENCY,
    FLEET_TUNING,
    RelayProcess,
    Spawn,
    fleet_env,
    get_json,
    in_progress,
    post,
    wait_outbox_settled,
)
from tests.postgres import PgServer
from tests.reliability.checker import Tally
from tests.support import poll, qualified, registered

NOW = 1_800_000_000.0
LEASE_S = 30.0


def event(body: dict[str, object]) -> Event:
    return validate(body, server_ids=[support.SERVER], allow_extra_fields=False, now=NOW)


@pytest.fixture
async def replicas(pg_url: str, pg_password: str | None) -> AsyncIterator[list[PostgresOutbox]]:
    """Two outboxes on one database: what two relays of a fleet hold."""
    boxes = [await PostgresOutbox.open(pg_url, where=pg_url, password=pg_password)]
    boxes.append(await PostgresOutbox.open(pg_url, where=pg_url, password=pg_password))
    yield boxes
    for box in boxes:
        await box.close()


async def claim(box: PostgresOutbox, now: float = NOW, limit: int = 10) -> list[int]:
    records = await box.claim(now, limit, servers=[support.SERVER], lease_s=LEASE_S, max_age_s=1e6)
    return [r.id for r in records]


def delivered(event_id: int, at: float) -> tuple[Outcome, Attempt]:
    return (
        Outcome(status="delivered", outcome="accepted", state="registered"),
        Attempt(event_id, at, 1.0, 200, "accepted", None),
    )


async def test_concurrent_claims_share_the_rows_without_overlap(
    replicas: list[PostgresOutbox],
) -> None:
    a, b = replicas
    await a.add([event(support.registered(f"t{i}", f"p{i}")) for i in range(60)], NOW)
    rounds = await asyncio.gather(*(claim(box, limit=7) for box in (a, b) for _ in range(6)))
    taken = [event_id for ids in rounds for event_id in ids]
    assert len(taken) == len(set(taken)) == 60
    assert any(rounds[:6]), rounds  # both replicas took a share
    assert any(rounds[6:]), rounds


async def test_a_replica_past_its_lease_cannot_overwrite_the_new_owner(
    replicas: list[PostgresOutbox],
) -> None:
    a, b = replicas
    [added] = await a.add([event(support.registered("t", "p"))], NOW)
    [stale] = await a.claim(NOW, 1, servers=[support.SERVER], lease_s=LEASE_S, max_age_s=1e6)
    later = NOW + LEASE_S + 1  # a's lease ran out (it hung, or was cut off)
    [fresh] = await b.claim(later, 1, servers=[support.SERVER], lease_s=LEASE_S, max_age_s=1e6)
    assert fresh.id == stale.id == added.id
    assert fresh.lease > stale.lease
    await b.finish(fresh, *delivered(fresh.id, later))
    dead = Outcome(status="dead", outcome="bad_request", error="late answer")
    await a.finish(stale, dead, Attempt(stale.id, later + 1, 1.0, 400, "bad_request", None))
    row = await a.get(added.id)
    assert row is not None
    assert (row.status, row.outcome) == ("delivered", "accepted")
    assert len(await a.attempts(added.id)) == 2  # both attempts happened; both are logged
    await a.release([stale], later + 2)  # a stale release is fenced too
    row = await a.get(added.id)
    assert row is not None
    assert row.status == "delivered"


async def test_order_holds_across_replicas(replicas: list[PostgresOutbox]) -> None:
    """qualified is not claimed by b while a holds the registered in flight."""
    a, b = replicas
    reg, qual = (
        x.id
        for x in await a.add(
            [event(support.registered("t", "p")), event(support.qualified("t", "p"))], NOW
        )
    )
    assert await claim(a, limit=1) == [reg]
    assert await claim(b, now=NOW + 5) == []
    [record] = [r for r in [await a.get(reg)] if r]
    await a.finish(record, *delivered(reg, NOW + 5))
    assert await claim(b, now=NOW + 10) == [qual]


async def test_a_starting_replica_leaves_the_others_claims_alone(
    replicas: list[PostgresOutbox],
) -> None:
    a, b = replicas
    await a.add([event(support.registered("t", "p"))], NOW)
    [event_id] = await claim(a)
    assert await b.requeue_in_flight(NOW + 1) == 0
    assert await claim(b, now=NOW + 1) == []
    assert await claim(b, now=NOW + LEASE_S + 1) == [event_id]  # a died: its lease ends


async def test_an_add_on_one_replica_wakes_the_others(replicas: list[PostgresOutbox]) -> None:
    a, b = replicas
    await asyncio.wait_for(b.new_events.wait(), 10)  # the listener is up
    b.new_events.clear()
    await a.add([event(support.registered("t", "p"))], NOW)
    await asyncio.wait_for(b.new_events.wait(), 10)


async def test_newer_schema_is_refused(pg_url: str, pg_password: str | None) -> None:
    box = await PostgresOutbox.open(pg_url, where=pg_url, password=pg_password)
    await box.close()
    db = await asyncpg.connect(pg_url, password=pg_password)
    try:
        await db.execute("INSERT INTO relay_schema (version) VALUES ($1)", len(PG_MIGRATIONS) + 1)
    finally:
        await db.close()
    with pytest.raises(OutboxError, match="newer than this relay knows"):
        await PostgresOutbox.open(pg_url, where=pg_url, password=pg_password)


async def test_an_unreachable_database_is_a_clear_error(pg_url: str) -> None:
    with pytest.raises(OutboxError, match="cannot connect to the outbox database") as caught:
        await PostgresOutbox.open(
            "postgresql://relay@127.0.0.1:9/x", where="postgresql://relay@127.0.0.1:9/x"
        )
    assert "check that PostgreSQL is up" in str(caught.value)


# -- choosing the backend ---------------------------------------------------------------


def test_a_postgresql_url_selects_the_shared_outbox(tmp_path: Path) -> None:
    password_file = tmp_path / "pw"
    password_file.write_text("s3cret-db-pw\n")
    env = {
        "MMOLOVE_RELAY_DB": "postgresql://relay@db.internal/relay",
        "MMOLOVE_RELAY_DB_PASSWORD_FILE": str(password_file),
    }
    settings = load_settings(env, require_servers=False)
    assert settings.db_url == "postgresql://relay@db.internal/relay"
    assert settings.db_password is not None
    assert settings.db_password.reveal() == "s3cret-db-pw"
    assert load_settings({"MMOLOVE_RELAY_DB": "/srv/x.db"}, require_servers=False).db_url is None


async def test_check_config_masks_the_database_password(sandbox: RunningSandbox) -> None:
    env = {
        "MMOLOVE_SERVER_ID": support.SERVER,
        "MMOLOVE_SECRET": support.SECRET,
        "MMOLOVE_ENDPOINT": sandbox.url,
        "MMOLOVE_RELAY_DB": "postgresql://relay:inline-pw-77c1@db.internal/relay?sslmode=require",
    }
    code, out, err = await support.cli("check-config", env=env)
    assert code == 0, err
    assert "inline-pw-77c1" not in out + err
    assert "postgresql://***@db.internal/relay" in out

    code, _, err = await support.cli("check-config", env={**env, "MMOLOVE_RELAY_DB": "mysql://x"})
    assert code == 3
    assert "neither a file path nor a postgresql:// URL" in err


# -- three real relays on one database ------------------------------------------------------


async def test_three_relays_share_one_outbox_and_survive_a_kill(
    spawn: Spawn,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    pg_url: str,
    pg_server: PgServer,
) -> None:
    """Three processes, clients on all three, one SIGKILLed with deliveries in flight: every
    acknowledged event reaches MMOLove once, in order, and the work was shared."""
    sandbox.sandbox.faults.latency_ms = 30
    env = fleet_env(sandbox, tmp_path, pg_url, pg_server.password)
    relays: list[RelayProcess] = [spawn(env, config=FLEET_TUNING) for _ in range(3)]
    for relay in relays:
        await relay.ready()
    tally = Tally("fleet: three relays, one SIGKILL")
    alive = list(relays)

    async def client(n: int) -> None:
        for i in range(12):
            token = f"fleet-{n}-{i}"
            for body in (registered(token), qualified(token)):
                while True:
                    relay = random.choice(alive)
                    try:
                        status, answer, _ = await post(http, relay.url, body)
                    except aiohttp.ClientError:
                        continue  # that one was just killed: the client tries another
                    assert tally.ack(body, status, answer), (status, answer)
                    break

    async def killer() -> None:
        await poll(lambda: in_progress(sandbox) > 0, bool, timeout_s=10)
        victim = alive.pop(0)
        victim.send(signal.SIGKILL)
        assert await victim.exited() == -signal.SIGKILL

    await asyncio.gather(killer(), *(client(n) for n in range(4)))
    counts = await wait_outbox_settled(http, alive[0].url, timeout_s=60)
    # The killed replica's applied but unanswered sends are sent again by another.
    report = tally.check(sandbox, max_duplicate_sends=CONCURRENCY, replicas=3, kills=1)
    assert counts["delivered"] == len(tally.acked) == 96, counts
    snap = sandbox.sandbox.snapshot()
    assert set(snap["by_status"]) == {"200"}, snap["by_status"]  # no 422: order held
    owners = await get_json(http, f"{alive[0].url}/v1/status")
    assert owners["outbox"]["path"].startswith("postgresql://")
    db = await asyncpg.connect(pg_url, password=pg_server.password)
    try:
        replicas_that_delivered = await db.fetchval(
            "SELECT count(DISTINCT lease_owner) FROM events WHERE status = 'delivered'"
        )
    finally:
        await db.close()
    assert replicas_that_delivered >= 2, report
    for relay in alive:
        relay.send(signal.SIGTERM)
        assert await relay.exited() == 0
        if pg_server.password:
            assert pg_server.password not in relay.output()


# -- moving a SQLite outbox in ------------------------------------------------------------


async def test_migrate_outbox_copies_every_state_and_can_run_again(
    tmp_path: Path, pg_url: str, pg_password: str | None
) -> None:
    source = tmp_path / "outbox.db"
    box = await SqliteOutbox.open(source)
    # Read by a source from the game's database: the copied ledger entry still names it.
    polled = [
        replace(event(support.registered(f"t{i}", f"p{i}")), reported_by="game") for i in range(5)
    ]
    added = await box.add(polled, NOW)
    ids = [a.id for a in added]
    claimed = await box.claim(NOW, 3, servers=[support.SERVER], lease_s=30, max_age_s=1e6)
    # Delivered long ago and pruned: the event lives on as its ledger entry.
    await box.finish(claimed[0], *delivered(claimed[0].id, NOW - 100))
    dead = Outcome(status="dead", outcome="not_found", error="unknown token")
    await box.finish(claimed[1], dead, Attempt(claimed[1].id, NOW, 2.0, 404, "not_found", None))
    assert await box.prune(NOW - 50) == (1, 1)
    rejection = Rejection(NOW, 422, "invalid_event", "bad ts", "ts", "s1", "t9", "p9", None, b"{")
    assert await box.records.add_rejections([rejection], keep=10)
    before = {r.id: r for r in await box.select(EventFilter(), limit=10)}  # one left in flight
    await box.close()

    env = {"MMOLOVE_RELAY_DB": str(source)}
    if pg_password is not None:
        (tmp_path / "pw").write_text(pg_password)
        env["MMOLOVE_RELAY_DB_PASSWORD_FILE"] = str(tmp_path / "pw")
    code, out, err = await support.cli("migrate-outbox", "--to", pg_url, env=env)
    assert code == 0, err
    assert "events: 4/4 (0 already there)" in out
    assert "copied 4 events, 1 attempts and 2 ledger entries and rejected inputs" in out

    target = await PostgresOutbox.open(pg_url, where=pg_url, password=pg_password)
    try:
        after = {r.id: r for r in await target.select(EventFilter(), limit=10)}
        assert sorted(after) == sorted(before) == sorted(set(ids) - {claimed[0].id})
        [entry] = await target.records.ledger(token=claimed[0].token)
        assert (entry.event_id, entry.outcome, entry.test, entry.reported_by) == (
            claimed[0].id,
            "accepted",
            False,
            "game",
        )
        [copied] = await target.records.rejections(RejectedFilter(), 10)
        assert copied == replace(rejection, id=copied.id)
        assert copied.id > 0
        for event_id, old in before.items():
            new = after[event_id]
            assert (new.body, new.attempts, new.outcome) == (old.body, old.attempts, old.outcome)
            # The stopped relay's in-flight attempt proved nothing: it is pending again.
            assert new.status == ("pending" if old.status == "in_flight" else old.status)
        assert [a.http_status for a in await target.attempts(claimed[1].id)] == [404]
        [fresh] = await target.add([event(support.registered("new", "p"))], NOW)
        assert fresh.id > max(ids)  # new events continue after the copied ids
    finally:
        await target.close()

    code, out, err = await support.cli("migrate-outbox", "--to", pg_url, env=env)
    assert code == 0, err
    assert "copied 0 events, 0 attempts and 0 ledger entries" in out
    assert "4 were there already" in out


async def test_migrate_outbox_refuses_a_file_a_relay_holds(tmp_path: Path, pg_url: str) -> None:
    box = await SqliteOutbox.open(tmp_path / "outbox.db")
    try:
        code, _, err = await support.cli(
            "migrate-outbox", "--from", str(tmp_path / "outbox.db"), "--to", pg_url
        )
    finally:
        await box.close()
    assert code == 3
    assert "another relay is already using" in err


async def test_migrate_outbox_refuses_an_older_schema_and_says_to_start_the_relay_once(
    tmp_path: Path, pg_url: str
) -> None:
    box = await SqliteOutbox.open(tmp_path / "outbox.db")
    await box.close()
    with sqlite3.connect(tmp_path / "outbox.db") as db:  # as the release before the last wrote it
        db.execute(f"PRAGMA user_version = {len(SQLITE_MIGRATIONS) - 1}")
    code, _, err = await support.cli(
        "migrate-outbox", "--from", str(tmp_path / "outbox.db"), "--to", pg_url
    )
    assert code != 0
    assert f"has schema version {len(SQLITE_MIGRATIONS) - 1}" in err
    assert "Start this relay's daemon on the file once" in err


# -- one breaker, one pause, one rate ------------------------------------------------------


async def test_breaker_pause_and_send_rate_are_shared_by_the_fleet(
    start_relay: support.StartRelay, pg_url: str, pg_password: str | None
) -> None:
    database = {"db_url": pg_url, "db_password": Secret(pg_password) if pg_password else None}
    a, b = [await start_relay(**database, max_send_rate_per_s=100.0) for _ in range(2)]
    da, db_ = a.handle.dispatcher, b.handle.dispatcher
    await poll(lambda: db_._pacer.rate_per_s, lambda rate: rate == 50.0, timeout_s=10)
    assert db_._pacer.rate_per_s == 50.0  # two live replicas: half the rate each

    da.breaker.failure(time.time(), retry_after_s=60)  # MMOLove asked a to wait a minute
    await poll(lambda: db_.breaker.state, lambda state: state == "open", timeout_s=10)
    assert db_.breaker.open_until is not None
    assert db_.breaker.open_until >= da.breaker.open_until  # type: ignore[operator]

    da.servers[support.SERVER].paused_reason = "MMOLove answered 401: check the secret"
    paused = await poll(lambda: db_.servers[support.SERVER].paused_reason, bool, timeout_s=10)
    assert paused.startswith("MMOLove answered 401")
    assert "another replica" in paused
    _, status = await b.get("/v1/status")
    assert [s["paused"] for s in status["servers"]] == [True]

    da.servers[support.SERVER].paused_reason = None  # a's probe went through
    await poll(lambda: db_.servers[support.SERVER].paused_reason, lambda r: r is None, timeout_s=10)
    assert db_.servers[support.SERVER].paused_reason is None


async def test_claim_and_finish_do_not_walk_the_backlog(
    pg_url: str, pg_password: str | None
) -> None:
    """The claim's candidates and finish's wake-up of followers read a handful of rows with
    3,000 others pending: counted rows from EXPLAIN ANALYZE, not a time. Autovacuum is off,
    so the planner has no statistics, as on a fresh database under a burst."""
    box = await PostgresOutbox.open(pg_url, where=pg_url, password=pg_password)
    db = await asyncpg.connect(pg_url, password=pg_password)
    try:
        await db.execute("ALTER TABLE events SET (autovacuum_enabled = off)")
        await box.add([event(support.registered("t", "p"))], NOW - 10)
        for start in range(0, 3000, 500):
            bodies = [support.registered(f"b{i}", f"q{i}") for i in range(start, start + 500)]
            await box.add([event(body) for body in bodies], NOW)
        for statement, args in (
            (sql.CANDIDATES, ([support.SERVER], NOW, 16)),
            (sql.WAKE_FOLLOWERS, (NOW, "t", support.SERVER, 1)),
        ):
            look_only = db.transaction()
            await look_only.start()
            plan = await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", *args)
            await look_only.rollback()
            touched = rows_touched(json.loads(plan)[0]["Plan"])
            assert touched < 200, (statement, touched)
    finally:
        await db.close()
        await box.close()


def rows_touched(node: dict[str, Any]) -> int:
    own = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
    return int(own) + sum(rows_touched(child) for child in node.get("Plans", []))

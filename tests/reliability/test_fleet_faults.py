"""Faults of a fleet on one PostgreSQL outbox: the database restarted under load, and
replicas killed with SIGKILL again and again while events are ingested and delivered.

Game servers post (registered, then qualified, per referral) to any replica, and repeat a
POST that got no acknowledgement, to another replica if theirs is gone. At the end every
acknowledged event reached MMOLove exactly once in effect, in order (MMOLove answers a
qualified before its registered with 422); resends MMOLove answered as duplicates are
counted and reported. The restart scenario runs its own PostgreSQL, which it stops and
starts; ``MMOLOVE_TEST_PG_URL`` does not apply to it.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.sandbox import RunningSandbox
from relay.store.postgres import STALE_TX_S
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
from tests.postgres import PG_PASSWORD, Cluster, PgServer
from tests.reliability.checker import Tally
from tests.support import eventually, freeze, poll, qualified, registered

# With FLEET_TUNING's leases of 2.5 s a killed replica's claims come back within the test;
# each attempt stays at MMOLove 20 ms, so kills land mid-flight.
CLIENTS = 4
THINK_S = 0.05


class Clients:
    """Game servers posting to random live replicas until each event is acknowledged."""

    def __init__(self, http: aiohttp.ClientSession, relays: list[RelayProcess], tally: Tally):
        self.http, self.relays, self.tally = http, relays, tally
        self.stop = asyncio.Event()
        self.unavailable = 0  # 503 answers, each with Retry-After
        self.unanswered = 0  # POSTs to a replica just killed
        self.posting = 0
        self._tokens: Iterator[str] = iter(f"fleet-{i:05d}" for i in range(100_000))

    async def run(self) -> None:
        await asyncio.gather(*(self._game_server() for _ in range(CLIENTS)))

    async def _game_server(self) -> None:
        while not self.stop.is_set():
            token = next(self._tokens)
            await self._until_acked(registered(token))
            await self._until_acked(qualified(token))
            await asyncio.sleep(THINK_S)

    async def _until_acked(self, body: dict[str, Any]) -> None:
        while True:
            relay = random.choice(self.relays)
            self.posting += 1
            try:
                status, answer, headers = await post(self.http, relay.url, body)
            except aiohttp.ClientError:
                self.unanswered += 1
                await asyncio.sleep(0.05)
                continue
            finally:
                self.posting -= 1
            if status == 503:
                assert int(headers["Retry-After"]) > 0, answer
                self.unavailable += 1
                await asyncio.sleep(0.2)  # a real client would wait Retry-After; tests hurry
                continue
            assert self.tally.ack(body, status, answer), (status, answer, relay.output()[-4000:])
            return


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    cluster = Cluster.create()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.mark.long
@pytest.mark.timeout(180)
async def test_postgresql_restarted_under_load_loses_nothing(
    spawn: Spawn,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    own_cluster: Cluster,
) -> None:
    """Two replicas under ingest; PostgreSQL stops for 3 s and comes back: ingest answers 503
    with Retry-After meanwhile, nothing acknowledged is lost, delivery resumes unaided."""
    sandbox.sandbox.faults.latency_ms = 20
    env = fleet_env(sandbox, tmp_path, own_cluster.url, PG_PASSWORD)
    relays = [spawn(env, config=FLEET_TUNING) for _ in range(2)]
    for relay in relays:
        await relay.ready()
    tally = Tally("fleet: PostgreSQL restarted under load")
    clients = Clients(http, relays, tally)
    load = asyncio.create_task(clients.run())
    await poll(lambda: len(tally.acked) >= 40, bool, timeout_s=20)
    await asyncio.to_thread(own_cluster.stop, "fast")
    down_at = time.monotonic()
    await asyncio.sleep(3)
    acked_while_down = len(tally.acked)
    await asyncio.to_thread(own_cluster.start)
    down_s = time.monotonic() - down_at
    await poll(lambda: len(tally.acked) >= acked_while_down + 40, bool, timeout_s=30)
    clients.stop.set()
    await load
    await wait_outbox_settled(http, relays[0].url, timeout_s=60)
    snap = sandbox.sandbox.snapshot()
    tally.check(
        sandbox,
        # An attempt MMOLove applied whose outcome could not be saved while the database was
        # down is sent again: at most what both replicas had in flight.
        max_duplicate_sends=2 * CONCURRENCY,
        replicas=2,
        database_down_s=round(down_s, 1),
        ingest_503_while_down=clients.unavailable,
        order_violations=snap["by_status"].get("422", 0),
    )
    assert clients.unavailable > 0, "ingest never answered 503 while the database was down"
    assert set(snap["by_status"]) == {"200"}, snap["by_status"]
    for relay in relays:
        assert relay.proc.poll() is None, relay.output()[-3000:]
        assert PG_PASSWORD not in relay.output()


KILLS = 12


@pytest.mark.fleet
@pytest.mark.timeout(300)
async def test_three_replicas_killed_in_a_loop_lose_nothing_and_keep_order(
    spawn: Spawn,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    pg_url: str,
    pg_server: PgServer,
) -> None:
    """Three replicas on one database; one at random is SIGKILLed with deliveries in flight
    and started again, 12 times: 0 lost, 0 order violations, duplicate sends reported."""
    sandbox.sandbox.faults.latency_ms = 20
    env = fleet_env(sandbox, tmp_path, pg_url, pg_server.password)
    relays = [spawn(env, config=FLEET_TUNING) for _ in range(3)]
    for relay in relays:
        await relay.ready()
    tally = Tally("fleet: three replicas, SIGKILL in a loop")
    clients = Clients(http, relays, tally)
    load = asyncio.create_task(clients.run())
    kills_with_delivery_in_flight = 0
    for _ in range(KILLS):
        await asyncio.sleep(random.uniform(0.3, 1.0))
        await poll(lambda: in_progress(sandbox) > 0 and clients.posting > 0, bool, timeout_s=2)
        kills_with_delivery_in_flight += in_progress(sandbox) > 0
        slot = random.randrange(len(relays))
        victim = relays[slot]
        victim.send(signal.SIGKILL)
        assert await victim.exited() == -signal.SIGKILL
        relays[slot] = await spawn(env, config=FLEET_TUNING).ready()
    clients.stop.set()
    await load
    counts = await wait_outbox_settled(http, relays[0].url, timeout_s=90)
    snap = sandbox.sandbox.snapshot()
    report = tally.check(
        sandbox,
        max_duplicate_sends=KILLS * CONCURRENCY,  # each kill may cut off what it had in flight
        replicas=3,
        kills=KILLS,
        kills_with_delivery_in_flight=kills_with_delivery_in_flight,
        unanswered_posts=clients.unanswered,
        order_violations=snap["by_status"].get("422", 0),
    )
    assert counts["delivered"] == len(tally.acked), counts
    assert counts["dead"] == 0, counts
    assert report["order_violations"] == 0, report
    assert kills_with_delivery_in_flight >= KILLS // 2, report


@pytest.mark.fleet
@pytest.mark.timeout(120)
async def test_a_stalled_replica_loses_its_leases_and_cannot_overwrite(
    spawn: Spawn,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    pg_url: str,
    pg_server: PgServer,
) -> None:
    """A replica frozen (SIGSTOP: as cut off from the database) with deliveries in flight:
    the other takes its events when their leases end; thawed, its late outcomes are fenced
    out (outbox.lease_lost) and nothing is lost."""
    sandbox.sandbox.faults.latency_ms = 300  # attempts stay in flight while we freeze
    env = fleet_env(sandbox, tmp_path, pg_url, pg_server.password)
    stalled, other = [spawn(env, config=FLEET_TUNING) for _ in range(2)]
    await stalled.ready()
    tally = Tally("fleet: a replica stalled past its leases")
    for n in range(8):
        body = registered(f"stall-{n}")
        status, answer, _ = await post(http, stalled.url, body)
        assert tally.ack(body, status, answer), (status, answer)
    await poll(lambda: in_progress(sandbox) > 0, bool, timeout_s=10)  # its claims in flight
    await freeze(stalled.proc.pid)
    try:
        await other.ready()  # started only now: everything left is the stalled one's
        # 30 s more when the freeze caught a transaction: then its row locks hold until the
        # other replica ends that session (STALE_TX_S).
        counts = await wait_outbox_settled(http, other.url, timeout_s=30 + STALE_TX_S)
    finally:
        stalled.send(signal.SIGCONT)
    assert counts["delivered"] == 8, counts
    # Thawed, its attempts end and their outcomes are fenced out; or, when the freeze caught
    # a transaction that the other replica then ended, the write fails and is retried.
    await eventually(
        lambda: (
            stalled.find_logs("outbox.lease_lost")
            or stalled.find_logs("delivery.outcome_not_saved")
        ),
        timeout_s=30,
        what="the thawed replica's late outcomes refused",
    )
    tally.check(
        sandbox,
        max_duplicate_sends=8,  # the frozen replica's sends, applied but never answered to it
        replicas=2,
        lease_lost=len(stalled.find_logs("outbox.lease_lost")),
    )
    final = await get_json(http, f"{other.url}/v1/status")
    assert final["counts"]["delivered"] == 8, final  # the late outcomes changed nothing

"""Two relays on one PostgreSQL outbox share a source: one polls it at a time (a lease in
the shared outbox, beside the cursor). The one polling is killed mid-poll, SIGKILL, while
the game keeps registering: the other takes the source over within a lease, and every
registration is stored and delivered once."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from relay.sandbox import RunningSandbox
from tests.harness import FLEET_TUNING, RelayProcess, Spawn, fleet_env, get_json
from tests.postgres import PgServer
from tests.support import eventually
from tests.test_sources_crash import QUERY, Game

# Lease: 3 x interval_s + 2 x statement_timeout_s + 1 = 1.55 s.
SOURCE = (
    "[[sources]]\n"
    'name = "registrations"\n'
    'produces = "registered"\n'
    'url = "sqlite:///{game}"\n'
    f'query = "{QUERY}"\n'
    "interval_s = 0.05\n"
    "statement_timeout_s = 0.2\n"
)


async def _source(http: aiohttp.ClientSession, relay: RelayProcess) -> dict[str, Any]:
    status = await get_json(http, f"{relay.url}/v1/status")
    [source] = status["sources"]
    return dict(source)


@pytest.mark.long
@pytest.mark.timeout(120)
async def test_one_replica_polls_a_source_and_hands_it_over_when_killed(
    spawn: Spawn,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    pg_url: str,
    pg_server: PgServer,
) -> None:
    game = Game(tmp_path / "game.db")
    game.register(20)
    env = fleet_env(sandbox, tmp_path, pg_url, pg_server.password)
    config = FLEET_TUNING + SOURCE.format(game=tmp_path / "game.db")
    relays = [await spawn(env, config=config).ready() for _ in range(2)]

    async def one_polls() -> list[str] | None:
        states = sorted([(await _source(http, r))["state"] for r in relays])
        return states if states == ["ok", "standby"] else None

    await eventually(one_polls, timeout_s=15, what="one replica polling, one standing by")
    stop = asyncio.Event()
    writer = asyncio.create_task(game.keep_registering(stop))
    states = [(await _source(http, r))["state"] for r in relays]
    holder, other = relays if states[0] == "ok" else relays[::-1]
    await asyncio.sleep(0.3)  # polls 50 ms apart, rows arriving: the kill lands mid-poll
    holder.send(signal.SIGKILL)
    await holder.exited()
    await asyncio.sleep(0.5)
    stop.set()
    await writer

    async def taken_over() -> bool:
        source = await _source(http, other)
        return bool(source["state"] == "ok" and source["cursor"] == str(game.players))

    await eventually(taken_over, timeout_s=20, what="the other replica caught up")
    db = await asyncpg.connect(pg_url, password=pg_server.password)
    try:
        rows = await db.fetch("SELECT server_event_id FROM events WHERE event = 'registered'")
    finally:
        await db.close()
    stored = [r[0] for r in rows]
    expected = {f"reg-{p}" for p in range(1, game.players + 1)}
    assert set(stored) == expected  # nothing skipped
    assert len(stored) == len(expected)  # nothing stored twice

    async def all_delivered() -> bool:
        accepted = [r["server_event_id"] for r in sandbox.sandbox.snapshot()["accepted"]]
        return len(accepted) == len(expected)

    await eventually(all_delivered, timeout_s=30, what="all delivered")
    accepted = [r["server_event_id"] for r in sandbox.sandbox.snapshot()["accepted"]]
    assert sorted(accepted) == sorted(expected)
    other.send(signal.SIGTERM)
    assert await other.exited() == 0

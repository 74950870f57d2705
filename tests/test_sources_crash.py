"""A relay killed with SIGKILL while its registration watcher polls, again and again, while
the game keeps registering players: every referral is stored and delivered, none twice.

What this proves is that the cursor and the events of a poll commit together: a cursor
stored ahead of its events would skip rows after a kill, one stored behind them would
read rows again (harmless, but counted here as stored twice if the keys did not hold).
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from relay.sandbox import RunningSandbox
from tests.harness import Spawn, eventually, get_json, outbox_rows, relay_env

CYCLES = 10
QUERY = (
    "SELECT id AS cursor, account AS referee_identity, token FROM mmolove_referrals"
    " WHERE id > :cursor ORDER BY id LIMIT :limit"
)


def _config(game: Path) -> str:
    return (
        "[[sources]]\n"
        'name = "registrations"\n'
        'produces = "registered"\n'
        f'url = "sqlite:///{game}"\n'
        f'query = "{QUERY}"\n'
        "interval_s = 0.02\n"
    )


class Game:
    """The registration page: one referral row per registered player, as fast as it likes."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")  # the game's writes never block a poll
        self.db.execute(
            "CREATE TABLE mmolove_referrals (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " account INTEGER NOT NULL, token TEXT NOT NULL)"
        )
        self.players = 0

    def register(self, count: int) -> None:
        for _ in range(count):
            self.players += 1
            self.db.execute(
                "INSERT INTO mmolove_referrals (account, token) VALUES (?, ?)",
                (self.players, f"tok-{self.players:05d}-crash-test"),
            )

    async def keep_registering(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.register(3)
            await asyncio.sleep(0.005)


@pytest.mark.long
@pytest.mark.timeout(120)  # ten relay starts on a shared two-core machine
async def test_kill_9_during_polls_misses_and_doubles_nothing(
    tmp_path: Path, spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    game_path, db = tmp_path / "game.db", tmp_path / "outbox.db"
    game = Game(game_path)
    env = relay_env(sandbox.url, db)
    rng = random.Random(23)
    stored_before_kill = []
    for _ in range(CYCLES):
        relay = await spawn(env, config=_config(game_path)).ready()
        stop = asyncio.Event()
        writer = asyncio.create_task(game.keep_registering(stop))
        await asyncio.sleep(rng.uniform(0.1, 0.6))  # mid-poll: polls are 20 ms apart
        relay.send(signal.SIGKILL)
        stop.set()
        await writer
        await relay.exited()
        stored_before_kill.append(len(outbox_rows(db)))
    # Progress was made between kills (else the kills proved nothing).
    assert stored_before_kill[-1] > stored_before_kill[0] > 0, stored_before_kill

    relay = await spawn(env, config=_config(game_path)).ready()

    async def caught_up() -> bool:
        status = await get_json(http, f"{relay.url}/v1/status")
        [source] = status["sources"]
        return bool(source["cursor"] == str(game.players) and status["counts"]["pending"] == 0)

    await eventually(caught_up, timeout_s=30, what="the watcher caught up, all delivered")
    relay.send(signal.SIGTERM)
    assert await relay.exited() == 0
    with sqlite3.connect(db) as outbox:
        stored = [r[0] for r in outbox.execute("SELECT server_event_id FROM events")]
    expected = {f"reg-{p}" for p in range(1, game.players + 1)}
    assert set(stored) == expected  # 0 missed
    assert len(stored) == game.players  # 0 stored twice
    accepted = Counter(r["server_event_id"] for r in sandbox.sandbox.snapshot()["accepted"])
    assert set(accepted) == expected
    assert set(accepted.values()) == {1}

"""The load the source watchers put on a game's database, on a real MariaDB (the tests'
throwaway server): AzerothCore's ``characters`` table with a million rows, 10,000 watched
players. Measured through a real milestone watcher: the time its statements take in one
poll (``players_per_poll`` players, in statements of ``PLAYERS_PER_QUERY``) and in a round
(every watched player once), the rows MariaDB examined per poll (its own statement log,
switched on for one round only: it is the bench's instrument, not the game's load), and the
detection latency of a registration (row committed -> event in the outbox) with the
watcher polling every ``interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relay.config.sources import SourceConfig
from relay.config.values import Secret
from relay.events import validate
from relay.metrics import Metrics
from relay.sources.database import SourceDatabase, connect
from relay.sources.watch import Watcher
from relay.store.sqlite import SqliteOutbox
from tests.mariadb import MariaDb

SERVER = "srv-bench"
REFERRALS = Path(__file__).resolve().parent.parent / "examples" / "sources" / "referrals.sql"
# azerothcore-wotlk data/sql/base/db_characters/characters.sql, trimmed to what is read
CHARACTERS = (
    "CREATE TABLE characters (guid INT UNSIGNED NOT NULL, account INT UNSIGNED NOT NULL, "
    "level TINYINT UNSIGNED NOT NULL, totaltime INT UNSIGNED NOT NULL, PRIMARY KEY (guid), "
    "KEY idx_account (account)) ENGINE=InnoDB"
)
LEVEL_20 = (
    "SELECT DISTINCT account AS referee_identity FROM characters"
    " WHERE account IN (:players) AND level >= 20"
)
REGISTRATIONS = (
    "SELECT id AS `cursor`, referee_identity, token FROM mmolove_referral"
    " WHERE id > :cursor ORDER BY id LIMIT :limit"
)


def sources(*, smoke: bool, workdir: Path) -> dict[str, Any]:
    sizes = (20_000, 200, 2, 3) if smoke else (1_000_000, 10_000, 5, 15)
    outbox = workdir / "sources-bench-outbox.db"
    for path in (outbox, outbox.with_name("watched.db")):
        for suffix in ("", "-wal", "-shm", ".lock", ".reserve"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return asyncio.run(_measure(*sizes, outbox=outbox))


class _Timed:
    """The watcher's connection to the game's database, timing each statement it runs."""

    def __init__(self, db: SourceDatabase, ms: list[float]) -> None:
        self.db = db
        self.ms = ms

    async def fetch(self, query: str, params: Mapping[str, object]) -> list[dict[str, object]]:
        started = time.perf_counter()
        try:
            return await self.db.fetch(query, params)
        finally:
            self.ms.append((time.perf_counter() - started) * 1000)

    async def close(self) -> None:
        await self.db.close()


async def _measure(
    characters: int, watched: int, rounds: int, registrations: int, *, outbox: Path
) -> dict[str, Any]:
    server = await asyncio.to_thread(MariaDb.create)
    try:
        game = await server.create_database()
        statements = [s for s in REFERRALS.read_text().split(";") if "CREATE TABLE" in s]
        # Two characters an account, levels 1..80; every 50th account is a watched player.
        fill = (
            f"INSERT INTO characters SELECT seq, (seq + 1) DIV 2, ((seq + 1) DIV 2 * 7) % 80 + 1,"
            f" 0 FROM seq_1_to_{characters}"
        )
        await game.run(*statements, CHARACTERS, fill, "ANALYZE TABLE characters")
        polls = await _milestone_polls(game, watched, rounds, outbox.with_name("watched.db"))
        latency = await _detection(game, registrations, outbox)
        return {"characters": characters, "watched_players": watched, **polls, **latency}
    finally:
        await asyncio.to_thread(server.destroy)


async def _milestone_polls(game: Any, watched: int, rounds: int, path: Path) -> dict[str, Any]:
    """A milestone watcher over ``watched`` registered players: each poll's statement time,
    each round's (every player asked about once), and the rows examined per poll."""
    outbox = await SqliteOutbox.open(path)
    now = time.time()
    await outbox.add(
        [
            validate(
                {
                    "event": "registered",
                    "token": f"tok-{n:06d}-bench",
                    "server_id": SERVER,
                    "referee_identity": str(n * 50),
                    "server_event_id": f"reg-{n * 50}",
                },
                server_ids=[SERVER],
                allow_extra_fields=False,
                now=now,
            )
            for n in range(1, watched + 1)
        ],
        now,
    )
    statement_ms: list[float] = []

    async def timed_connect(*args: Any, **kwargs: Any) -> SourceDatabase:
        return _Timed(await connect(*args, **kwargs), statement_ms)

    config = SourceConfig(
        name="level20",
        produces="qualified",
        milestone="level20",
        url=game.url,
        password=Secret(game.password),
        query=LEVEL_20,
        server_id=SERVER,
    )
    watcher = Watcher(
        config, outbox, Metrics(), note=lambda _: None, server_ids=[SERVER], connect=timed_connect
    )
    per_round = math.ceil(watched / config.players_per_poll)
    poll_ms: list[float] = []
    round_ms: list[float] = []
    try:
        # One round with the statement log on (a session takes it at connect): the rows
        # examined. Then a new connection without it for the timed rounds.
        for _ in range(per_round):
            await watcher.read(time.time())  # asks, stores nothing: the players stay
        examined = await game.examined("FROM characters WHERE account IN")
        await watcher.close()
        await game.server.sql("SET GLOBAL slow_query_log = 0", ())
        statement_ms.clear()
        for _ in range(rounds):
            round_started = len(poll_ms)
            for _ in range(per_round):
                done = len(statement_ms)
                await watcher.read(time.time())
                poll_ms.append(sum(statement_ms[done:]))
            round_ms.append(sum(poll_ms[round_started:]))
    finally:
        await watcher.close()
        await outbox.close()
    return {
        "players_per_poll": min(watched, config.players_per_poll),
        "statements_per_poll": len(statement_ms) // len(poll_ms),
        "poll_ms_p50": round(statistics.median(poll_ms), 1),
        "poll_ms_max": round(max(poll_ms), 1),
        "statement_ms_p50": round(statistics.median(statement_ms), 2),
        "polls_per_round": per_round,
        "round_ms_p50": round(statistics.median(round_ms), 1),
        "round_s_at_interval": round(per_round * config.interval_s, 1),
        "rows_examined_per_poll": round(sum(examined) / per_round),
    }


async def _detection(
    game: Any, count: int, path: Path, interval_s: float = 1.0
) -> dict[str, float]:
    """Rows committed over the poll cycle; how long until each event is in the outbox."""
    outbox = await SqliteOutbox.open(path)
    config = SourceConfig(
        name="registrations",
        produces="registered",
        url=game.url,
        password=Secret(game.password),
        query=REGISTRATIONS,
        server_id=SERVER,
        interval_s=interval_s,
    )
    watcher = Watcher(config, outbox, Metrics(), note=lambda _: None, server_ids=[SERVER])
    task = asyncio.create_task(watcher.run())
    latencies = []
    try:
        for n in range(1, count + 1):
            await asyncio.sleep((n * 0.37) % interval_s)  # spread over the poll cycle
            await game.load(
                "INSERT INTO mmolove_referral (referee_identity, token) VALUES (%s, %s)",
                [(f"p{n}", f"tok-{n:05d}-bench")],
            )
            committed = time.perf_counter()
            # The stored cursor is the signal: it commits with the event.
            while await outbox.source_cursor("registrations") != json.dumps(n):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            latencies.append(time.perf_counter() - committed)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await outbox.close()
    latencies.sort()
    return {
        "interval_s": interval_s,
        "detection_s_p50": round(statistics.median(latencies), 3),
        "detection_s_max": round(latencies[-1], 3),
    }

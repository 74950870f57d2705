"""The load the source watchers put on a game's database, on a real MariaDB (the tests'
throwaway server): AzerothCore's ``characters`` table with a million rows, 10,000 watched
players. Measured: the time of one milestone poll (every chunk of ``:players``, as the
watcher binds them) and of each statement, the rows MariaDB examined per poll (its own
statement log), and the detection latency of a registration (row committed -> event in the
outbox) with the watcher polling every ``interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

from relay.config.sources import SourceConfig
from relay.config.values import Secret
from relay.metrics import Metrics
from relay.sources.database import connect
from relay.sources.watch import PLAYERS_PER_QUERY, Watcher
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
    sizes = (20_000, 200, 3, 3) if smoke else (1_000_000, 10_000, 9, 15)
    outbox = workdir / "sources-bench-outbox.db"
    for suffix in ("", "-wal", "-shm", ".lock", ".reserve"):
        Path(f"{outbox}{suffix}").unlink(missing_ok=True)
    return asyncio.run(_measure(*sizes, outbox=outbox))


async def _measure(
    characters: int, watched: int, polls: int, registrations: int, *, outbox: Path
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
        players = [str(n * 50) for n in range(1, watched + 1)]
        db = await connect(game.url, password=Secret(game.password), statement_timeout_s=5)
        poll_ms, statement_ms = [], []
        try:
            for _ in range(polls):
                started = time.perf_counter()
                for i in range(0, len(players), PLAYERS_PER_QUERY):
                    t0 = time.perf_counter()
                    await db.fetch(LEVEL_20, {"players": players[i : i + PLAYERS_PER_QUERY]})
                    statement_ms.append((time.perf_counter() - t0) * 1000)
                poll_ms.append((time.perf_counter() - started) * 1000)
        finally:
            await db.close()
        examined = await game.examined("FROM characters WHERE account IN")
        chunks = -(-len(players) // PLAYERS_PER_QUERY)
        latency = await _detection(game, registrations, outbox)
        return {
            "characters": characters,
            "watched_players": watched,
            "statements_per_poll": chunks,
            "poll_ms_p50": round(statistics.median(poll_ms), 1),
            "poll_ms_max": round(max(poll_ms), 1),
            "statement_ms_p50": round(statistics.median(statement_ms), 2),
            "rows_examined_per_poll": round(sum(examined) / max(1, len(examined)) * chunks),
            **latency,
        }
    finally:
        await asyncio.to_thread(server.destroy)


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

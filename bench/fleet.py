"""The fleet on PostgreSQL: durable ingest and delivery with 1 and 3 relays on one database.

Run in the same process and on the same machine as the SQLite scenarios, so the two
backends compare side by side. The database is a throwaway cluster of Debian's PostgreSQL
(fsync on, default settings) started for the run; every scenario gets a fresh database.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg

from bench import load, procs
from relay.sandbox import DEMO_SERVER_ID
from relay.store.postgres import PostgresOutbox
from tests.postgres import PG_PASSWORD, Cluster, PgServer, admin, with_database

CONNECTIONS = 32
DELIVERY_CONCURRENCY = 16
DELIVERY_RATE_PER_S = 100_000.0

_FILL = """
INSERT INTO events (server_id, token, event, server_event_id, rank, test, body, fingerprint,
                    created_at, next_attempt_at)
SELECT $1, 'mmref-' || $2 || i, 'registered', 'reg-' || $2 || i, 0, false,
       convert_to('{"event":"registered","token":"mmref-' || $2 || i || '","server_id":"' ||
           $1 || '","referee_identity":"player-' || $2 || i || '","server_event_id":"reg-' ||
           $2 || i || '","ts":' || $3::bigint || '}', 'UTF8'),
       lpad(to_hex(i), 64, '0'), $3, $3
FROM generate_series(1, $4) AS i
"""


def fleet(plan: Any, workdir: Path) -> dict[str, Any]:
    """Ingest and delivery rates on PostgreSQL with one relay, then three."""
    cluster = Cluster.create()
    server = PgServer(cluster.url, PG_PASSWORD)
    password_file = workdir / "pg-password"
    password_file.write_text(PG_PASSWORD + "\n")
    try:
        out: dict[str, Any] = {}
        for replicas in (1, 3):
            out[f"ingest_{replicas}"] = _ingest(plan, workdir, server, password_file, replicas)
            out[f"delivery_{replicas}"] = _delivery(plan, workdir, server, password_file, replicas)
        return out
    finally:
        cluster.destroy()


def _ingest(
    plan: Any, workdir: Path, server: PgServer, password_file: Path, replicas: int
) -> dict[str, Any]:
    """wrk on every relay at once, the connections split among them; rates summed."""
    url = asyncio.run(_database(server))
    with (
        _fleet(workdir, url, password_file, replicas, f"pg-ingest-{replicas}") as relays,
        ThreadPoolExecutor(replicas) as pool,
    ):
        runs = list(
            pool.map(
                lambda n: load.wrk(
                    relays[n].url,
                    workdir=workdir,
                    prefix=f"pg-{replicas}-{n}",
                    connections=CONNECTIONS // replicas,
                    seconds=plan.ingest_s,
                ),
                range(replicas),
            )
        )
    return {
        "replicas": replicas,
        "rate_per_s": round(sum(r.rate_per_s for r in runs), 1),
        "p50_ms": round(max(r.p50_ms for r in runs), 3),
        "p99_ms": round(max(r.p99_ms for r in runs), 3),
        "non_2xx": sum(r.non_2xx for r in runs),
    }


def _delivery(
    plan: Any, workdir: Path, server: PgServer, password_file: Path, replicas: int
) -> dict[str, Any]:
    """Events/s from a pre-filled database to the sandbox (no latency), all relays sending."""
    url = asyncio.run(_database(server, fill=plan.delivery_events))
    with _fleet(
        workdir,
        url,
        password_file,
        replicas,
        f"pg-delivery-{replicas}",
        concurrency=DELIVERY_CONCURRENCY,
        rate_per_s=DELIVERY_RATE_PER_S,
    ):
        time.sleep(min(1.0, plan.delivery_window_s))
        first, t0 = asyncio.run(_delivered(url)), time.monotonic()
        time.sleep(plan.delivery_window_s)
        last, t1 = asyncio.run(_delivered(url)), time.monotonic()
    if last == first:
        raise RuntimeError(f"nothing was delivered from {url} in {plan.delivery_window_s} s")
    return {"replicas": replicas, "rate_per_s": round((last - first) / (t1 - t0), 1)}


@contextlib.contextmanager
def _fleet(
    workdir: Path,
    url: str,
    password_file: Path,
    replicas: int,
    name: str,
    *,
    concurrency: int = 4,
    rate_per_s: float = 100.0,
) -> Iterator[list[procs.Proc]]:
    env = {"MMOLOVE_RELAY_DB": url, "MMOLOVE_RELAY_DB_PASSWORD_FILE": str(password_file)}
    with (
        procs.sandbox(0.0, workdir / f"sandbox-{name}.log") as sandbox,
        contextlib.ExitStack() as stack,
    ):
        config = procs.relay_config(workdir, concurrency=concurrency, rate_per_s=rate_per_s)
        relays = [
            stack.enter_context(
                procs.relay(
                    workdir / "unused.db",
                    sandbox.url + "/api/referral/events",
                    config,
                    workdir / f"relay-{name}-{n}.log",
                    env=env,
                )
            )
            for n in range(replicas)
        ]
        yield relays


async def _database(server: PgServer, *, fill: int = 0) -> str:
    """A fresh database; with ``fill``, that many pending events in the relay's schema."""
    name = "mmolove_bench_" + secrets.token_hex(4)
    async with admin(server) as db:
        await db.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server.url, name)
    if fill:
        box = await PostgresOutbox.open(url, where=url, password=server.password)
        await box.close()
        conn = await asyncpg.connect(url, password=server.password)
        try:
            await conn.execute(_FILL, DEMO_SERVER_ID, "pg-", time.time(), fill)
        finally:
            await conn.close()
    return url


async def _delivered(url: str) -> int:
    conn = await asyncpg.connect(url, password=PG_PASSWORD)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM events WHERE status = 'delivered'")
        return count
    finally:
        await conn.close()

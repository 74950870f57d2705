"""The two servers durable ingest is compared with, run as ``python -m bench.baseline MODE``.

``bare``: parse the JSON body and answer 202, storing nothing: the ceiling of an aiohttp
handler on this machine. ``naive``: the same handler, plus the relay's own validation and one
SQLite transaction (WAL, ``synchronous=FULL``, the relay's schema) committed per request:
what durable ingest costs without group commit. Both run on asyncio's own loop, as a bare
aiohttp app does; ``--uvloop`` gives the loop ``mmolove-relay serve`` runs on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop
from aiohttp import web

from relay.events import Event, validate
from relay.store.sqlite_schema import MIGRATIONS

SERVER_ID = "srv-demo"
_INSERT = (
    "INSERT INTO events (server_id, token, event, server_event_id, rank, test, body,"
    " fingerprint, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING RETURNING id"
)


def bare_app() -> web.Application:
    counter = 0

    async def post_event(request: web.Request) -> web.Response:
        nonlocal counter
        json.loads(await request.read())
        counter += 1
        return web.json_response(
            {"id": counter, "status": "pending", "duplicate": False}, status=202
        )

    app = web.Application()
    app.router.add_post("/v1/events", post_event)
    app.router.add_get("/healthz", _healthz)
    return app


def naive_app(db_path: Path) -> web.Application:
    db = open_db(db_path)
    # One thread owns the connection: each request's INSERT commits on its own, in turn.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="naive-sqlite")

    def insert(event: Event, now: float) -> int:
        row = db.execute(
            _INSERT,
            (
                event.server_id,
                event.token,
                event.event,
                event.server_event_id,
                event.rank,
                event.test,
                event.body,
                event.fingerprint,
                now,
                now,
            ),
        ).fetchone()
        return int(row[0]) if row else 0

    async def post_event(request: web.Request) -> web.Response:
        now = time.time()
        data = json.loads(await request.read())
        event = validate(data, server_ids=[SERVER_ID], allow_extra_fields=False, now=now)
        event_id = await asyncio.get_running_loop().run_in_executor(pool, insert, event, now)
        return web.json_response(
            {"id": event_id, "status": "pending", "duplicate": False}, status=202
        )

    async def close(app: web.Application) -> None:
        pool.shutdown()
        db.close()

    app = web.Application()
    app.router.add_post("/v1/events", post_event)
    app.router.add_get("/healthz", _healthz)
    app.on_cleanup.append(close)
    return app


def open_db(path: Path) -> sqlite3.Connection:
    """The relay's schema, WAL and synchronous=FULL; autocommit, so each INSERT commits."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    for number, script in enumerate(MIGRATIONS, start=1):
        db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    return db


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("mode", choices=("bare", "naive"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as serve does")
    args = parser.parse_args()
    app = bare_app() if args.mode == "bare" else naive_app(args.db)
    loop = uvloop.new_event_loop() if args.uvloop else None
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()

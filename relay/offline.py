"""Offline reads: the read commands answered from the outbox file when the daemon is down.

The file is opened read-only (no write, no write lock, no checkpoint, and no ``.lock``
taken), so it is safe beside a running daemon. With no write-ahead log beside it (the daemon
stopped cleanly) it is opened ``immutable``, so not even the ``-wal`` and ``-shm`` files a
read-only WAL reader makes appear: a root-owned pair of them would stop the daemon's user.
The same routes the daemon serves answer from it on a private loopback port for the
command's duration, so a reply reads the same whether it came from the daemon or the file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from relay import admin, lookup
from relay.api import make_app
from relay.config.settings import Settings
from relay.errors import OutboxError
from relay.metrics import Metrics
from relay.snapshot import CIRCUIT_UNKNOWN, STOPPED, DeliverySnapshot, Live, ServerSnapshot
from relay.store.sqlite_readonly import ReadOnlyOutbox


def stopped(server_ids: Iterable[str]) -> DeliverySnapshot:
    """Delivery as the file alone tells it: nothing in flight, pauses and circuit unknown."""
    reason = "the daemon is not running: nothing is sent, and pauses are not known"
    return DeliverySnapshot(
        circuit=CIRCUIT_UNKNOWN,
        circuit_open_until=None,
        in_flight=0,
        draining=False,
        servers=tuple(ServerSnapshot(sid, STOPPED, reason) for sid in server_ids),
    )


def read(settings: Settings, db: Path, path: str) -> tuple[int, dict[str, Any]]:
    """Answer ``GET path`` from the outbox file ``db``, as the daemon would."""
    if not db.is_file():
        raise OutboxError(
            f"there is no outbox file at {db}; pass --db PATH of the relay's outbox "
            "(see MMOLOVE_RELAY_DB)."
        )
    immutable = not Path(f"{db}-wal").exists()
    return asyncio.run(_read(settings, db.resolve(), path, immutable=immutable))


async def _read(
    settings: Settings, db: Path, path: str, *, immutable: bool
) -> tuple[int, dict[str, Any]]:
    outbox = await ReadOnlyOutbox.open_file(db, immutable=immutable)
    try:
        snapshot = stopped(s.server_id for s in settings.servers)
        # Only this process reaches the private port: no token needed.
        live = Live(replace(settings, ingest_token=None))
        app = make_app(outbox, live, lambda: snapshot, Metrics())
        admin.add_routes(app)
        lookup.add_routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}{path}") as resp,
            ):
                return resp.status, await resp.json()
        finally:
            await runner.cleanup()
    finally:
        await outbox.close()

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
import sqlite3
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import aiosqlite
from aiohttp import web

from relay import admin, visibility
from relay.api import make_app
from relay.config import Settings
from relay.errors import OutboxError
from relay.metrics import Metrics
from relay.outbox import Outbox
from relay.records import Records
from relay.schema import MIGRATIONS
from relay.state import STOPPED, DeliverySnapshot, Live, ServerSnapshot


class ReadOnlyOutbox(Outbox):
    """An ``Outbox`` on a read-only connection; any write fails with a clear error."""

    def __init__(self, path: Path, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._reader = reader
        self._write = _refuse
        self.lost: str | None = None  # this reader does not watch the file
        self.new_events = asyncio.Event()
        self.records = Records(_refuse, self._read)

    @classmethod
    async def open_file(cls, path: Path, *, immutable: bool) -> ReadOnlyOutbox:
        """Open ``path`` (absolute, existing) read-only; ``immutable`` when no WAL is beside it."""
        uri = f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else "")
        try:
            reader = await aiosqlite.connect(uri, uri=True)
            reader.row_factory = sqlite3.Row  # the outbox reads its columns by name
            try:
                await reader.execute("PRAGMA query_only = 1")
                rows = list(await reader.execute_fetchall("PRAGMA user_version"))
                version = int(rows[0][0]) if rows else 0
                if version != len(MIGRATIONS):
                    raise OutboxError(
                        f"the outbox {path} has schema version {version} and this relay reads "
                        f"version {len(MIGRATIONS)}; a read-only reader cannot migrate it. "
                        "Start this relay's daemon once (it migrates), or read the file with "
                        "the relay version that wrote it."
                    )
            except BaseException:
                await reader.close()
                raise
        except sqlite3.Error as exc:
            raise OutboxError(
                f"cannot read the outbox {path} ({exc}); check the path and that you may "
                "read it (run as the relay's user, e.g. sudo -u mmolove-relay)."
            ) from exc
        return cls(path, reader)

    async def close(self) -> None:
        await self._reader.close()


def stopped(server_ids: Iterable[str]) -> DeliverySnapshot:
    """Delivery as the file alone tells it: nothing in flight, pauses and circuit unknown."""
    reason = "the daemon is not running: nothing is sent, and pauses are not known"
    return DeliverySnapshot(
        circuit="unknown (daemon not running)",
        circuit_open_until=None,
        in_flight=0,
        draining=False,
        servers=tuple(ServerSnapshot(sid, STOPPED, reason) for sid in server_ids),
    )


async def _refuse(job: Any) -> Any:
    raise OutboxError(
        "the outbox was opened read-only (the daemon is not running); start "
        "`mmolove-relay serve` to change it."
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
        visibility.add_routes(app)
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

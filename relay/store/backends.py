"""Which outbox the daemon opens: a SQLite file, or a PostgreSQL database a fleet shares."""

from __future__ import annotations

from relay.config.settings import Settings
from relay.config.values import mask_url
from relay.store.contract import Outbox
from relay.store.sqlite import SqliteOutbox
from relay.store.sqlite_readonly import ReadOnlyOutbox


async def open_outbox(settings: Settings) -> Outbox:
    """Open (creating and migrating) the outbox the settings name."""
    if settings.db_url is None:
        return await SqliteOutbox.open(
            settings.db_path,
            min_free_bytes=settings.min_free_bytes,
            max_outbox_bytes=settings.max_outbox_bytes,
            lock_timeout_s=settings.lock_timeout_s,
            reserve_bytes=settings.reserve_bytes,
        )
    # Imported here: a relay on a SQLite file never loads asyncpg (0.04 s of every start).
    from relay.store.postgres import PostgresOutbox

    password = settings.db_password.reveal() if settings.db_password else None
    return await PostgresOutbox.open(
        settings.db_url, where=mask_url(settings.db_url), password=password
    )


async def open_reader(settings: Settings) -> Outbox | None:
    """The outbox for a command that only reads it beside a running daemon: the SQLite file
    read-only (None before serve first made it), or the PostgreSQL database."""
    if settings.db_url is not None:
        return await open_outbox(settings)
    if not settings.db_path.is_file():
        return None
    return await ReadOnlyOutbox.open_file(settings.db_path.absolute(), immutable=False)

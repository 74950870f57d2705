"""Fixtures: the project's sandbox as the real upstream, relays started in-process, and the
outbox on each backend.

Every relay listens on a real loopback port with a real SQLite file under ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from relay.config.settings import Settings
from relay.config.values import Listen, Secret, ServerConfig
from relay.sandbox import RunningSandbox, running_sandbox
from relay.store.contract import Outbox
from relay.store.postgres import PostgresOutbox
from relay.store.sqlite import SqliteOutbox
from tests.support import SECRET, SERVER, Backend, Relay, StartRelay, running_relay

# The subprocess harness (`spawn`, `http`), a real PostgreSQL (`pg_server`, `pg_url`) and a
# real MariaDB (`mariadb_server`, `game_db`).
pytest_plugins = ("tests.harness", "tests.postgres", "tests.mariadb", "tests.alert_receiver")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The unit tier runs where no PostgreSQL is installed: a test marked ``unit`` that asks
    for a PostgreSQL server is a mistake in its marks, reported before anything runs."""
    wrong = [
        item.nodeid
        for item in items
        if item.get_closest_marker("unit") and "pg_server" in getattr(item, "fixturenames", ())
    ]
    if wrong:
        raise pytest.UsageError(
            "tests marked unit must not need PostgreSQL; drop their unit mark: " + ", ".join(wrong)
        )


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox({SERVER: SECRET}) as sb:
        yield sb


@pytest.fixture
def settings(tmp_path: Path, sandbox: RunningSandbox) -> Settings:
    """Settings for a relay against the sandbox, with retries fast enough for tests."""
    return Settings(
        servers=(ServerConfig(SERVER, Secret(SECRET)),),
        endpoint=sandbox.url,
        listen=Listen("127.0.0.1", 0),
        db_path=tmp_path / "outbox.db",
        backoff_base_s=0.05,
        backoff_cap_s=0.2,
        breaker_cooldown_s=0.2,
        pause_probe_s=0.3,
        connect_timeout_s=1.0,
        send_timeout_s=2.0,
        drain_timeout_s=2.0,
        max_send_rate_per_s=10_000.0,
        min_free_bytes=1,
    )


@pytest.fixture
async def start_relay(settings: Settings) -> AsyncIterator[StartRelay]:
    """Start relays in-process (``start(**overrides)``); all are shut down after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(custom: Settings | None = None, **overrides: Any) -> Relay:
            return await stack.enter_async_context(
                running_relay(replace(custom or settings, **overrides))
            )

        yield start


# The SQLite half needs no server, so it belongs to the unit tier.
@pytest.fixture(params=[pytest.param("sqlite", marks=pytest.mark.unit), "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The outbox contract runs on both backends: a real SQLite file, a real PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "outbox.db"

        async def raw_sqlite(query: str, *params: Any) -> list[Any]:
            with sqlite3.connect(path) as db:
                return db.execute(query, params).fetchall()

        return Backend(functools.partial(SqliteOutbox.open, path), raw_sqlite)
    url, password = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_password")

    async def raw_pg(query: str, *params: Any) -> list[Any]:
        numbers = iter(range(1, query.count("?") + 1))
        db = await asyncpg.connect(url, password=password)
        try:
            return list(
                await db.fetch(re.sub(r"\?", lambda _: f"${next(numbers)}", query), *params)
            )
        finally:
            await db.close()

    return Backend(
        functools.partial(PostgresOutbox.open, url, where=url, password=password), raw_pg
    )


@pytest.fixture
async def outbox(backend: Backend) -> AsyncIterator[Outbox]:
    box = await backend.open()
    yield box
    await box.close()

"""Fixtures: the project's sandbox as the real upstream, and relays started in-process.

Every relay listens on a real loopback port with a real SQLite file under ``tmp_path``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.config.settings import Settings
from relay.config.values import Listen, Secret, ServerConfig
from relay.sandbox import RunningSandbox, running_sandbox
from tests.support import SECRET, SERVER, Relay, StartRelay, running_relay

# The subprocess harness (`spawn`, `http`), a real PostgreSQL (`pg_server`, `pg_url`) and a
# real MariaDB (`mariadb_server`, `game_db`).
pytest_plugins = ("tests.harness", "tests.postgres", "tests.mariadb")


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

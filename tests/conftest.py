"""Fixtures: the project's sandbox as the real upstream, and relays started in-process.

Every relay listens on a real loopback port with a real SQLite file under ``tmp_path``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.config import Listen, Secret, ServerConfig, Settings
from relay.daemon import RunningRelay, run
from relay.sandbox import RunningSandbox, running_sandbox
from tests.support import SECRET, SERVER, Relay, StartRelay

# The subprocess harness: the `spawn` and `http` fixtures.
pytest_plugins = ("tests.harness",)


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
    running: list[tuple[asyncio.Event, asyncio.Task[None], aiohttp.ClientSession]] = []

    async def start(custom: Settings | None = None, **overrides: Any) -> Relay:
        chosen = replace(custom or settings, **overrides)
        shutdown = asyncio.Event()
        ready: asyncio.Future[RunningRelay] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run(chosen, shutdown=shutdown, on_ready=ready.set_result))
        await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            await task  # start-up failed: raise its error
        http = aiohttp.ClientSession()
        running.append((shutdown, task, http))
        return Relay(ready.result(), http)

    yield start
    for shutdown, task, http in reversed(running):
        shutdown.set()
        await http.close()
        await task

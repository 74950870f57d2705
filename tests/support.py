"""Helpers shared by the tests: the test server's credentials, a relay client, events."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.config.settings import Settings
from relay.daemon import RunningRelay, run
from relay.store.contract import Outbox

SERVER = "srv-1"
SECRET = "secret-1-for-tests"


@dataclass
class Relay:
    """A running relay plus an HTTP client for its ingest API."""

    handle: RunningRelay
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.handle.url

    async def post(
        self, body: Any, path: str = "/v1/events", **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.url + path, json=body, **kwargs) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with self.http.get(self.url + path) as resp:
            return resp.status, await resp.json()

    async def wait_finished(
        self, ids: list[int], timeout_s: float = 15.0
    ) -> dict[int, dict[str, Any]]:
        """Poll until every id is delivered or dead; returns the final records."""
        done: dict[int, dict[str, Any]] = {}

        async def finished() -> bool:
            for event_id in set(ids) - set(done):
                _, record = await self.get(f"/v1/events/{event_id}")
                if record["status"] in ("delivered", "dead"):
                    done[event_id] = record
            return len(done) == len(set(ids))

        missing = lambda: sorted(set(ids) - set(done))[:10]  # noqa: E731 - read at failure
        if not await poll(finished, bool, timeout_s=timeout_s):
            raise AssertionError(f"events {missing()} not finished in {timeout_s} s")
        return done


StartRelay = Callable[..., Awaitable[Relay]]


@dataclass(frozen=True)
class Backend:
    """One outbox backend under test (the ``backend`` fixture): ``open`` opens the same outbox
    each time it is called; ``raw`` runs SQL (``?`` placeholders) straight on its database."""

    open: Callable[[], Awaitable[Outbox]]
    raw: Callable[..., Awaitable[list[Any]]]


@asynccontextmanager
async def running_relay(settings: Settings) -> AsyncIterator[Relay]:
    """An in-process relay for the block's duration; shut down (drained) on leaving it."""
    shutdown = asyncio.Event()
    ready: asyncio.Future[RunningRelay] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(settings, shutdown=shutdown, on_ready=ready.set_result))
    await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        await task  # start-up failed: raise its error
    try:
        async with aiohttp.ClientSession() as http:
            yield Relay(ready.result(), http)
    finally:
        shutdown.set()
        await task


async def cli(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> tuple[int, str, str]:
    """Run ``mmolove-relay ARGS`` as a subprocess; its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MMOLOVE_RELAY_CONFIG": "", **(env or {})},
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_demo_landed(code: int, out: str, err: str) -> None:
    """``mmolove-relay demo``'s exit code and output say its three events landed: two
    accepted, one verified test event."""
    assert code == 0, out + err
    lines = [line for line in out.splitlines() if " delivered " in line]
    assert len(lines) == 3, out
    assert sum("accepted" in line for line in lines) == 2
    assert sum(" test " in line for line in lines) == 1
    assert "All three events landed" in out


def registered(token: str, player: str | None = None, **extra: Any) -> dict[str, Any]:
    """A registered event; without a player, one named after the token, keyed reg-<token>."""
    return {
        "event": "registered",
        "token": token,
        "referee_identity": player or f"player-{token}",
        "server_event_id": f"reg-{player or token}",
        **extra,
    }


def qualified(token: str, player: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "event": "qualified",
        "token": token,
        "server_event_id": f"qual-{player or token}",
        **extra,
    }


async def poll(
    check: Callable[[], Any], until: Callable[[Any], object], *, timeout_s: float
) -> Any:
    """Call ``check`` (sync or async) until ``until`` accepts its result or time is up.

    Returns the last result, so the caller's assertion can say what it was. The one polling
    loop of the tests: everything that waits for a condition goes through it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if until(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.02)


async def eventually(
    check: Callable[[], Any], *, timeout_s: float = 10.0, what: str = "the condition"
) -> Any:
    """Poll ``check`` until it returns something truthy; fail by name at the deadline."""
    result = await poll(check, bool, timeout_s=timeout_s)
    if not result:
        pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
    return result


async def freeze(pid: int) -> None:
    """Stop a process with SIGSTOP, and return once every one of its threads has stopped.

    The kernel hands the signal to one thread, which then stops the others: until it gets
    a CPU, another thread can still read a query and answer it (seen on a loaded machine).
    """
    os.kill(pid, signal.SIGSTOP)
    await eventually(lambda: _all_stopped(pid), what=f"every thread of process {pid} to stop")


def _all_stopped(pid: int) -> bool:
    states = []
    for thread in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (thread / "stat").read_text()
        except FileNotFoundError:
            continue  # a thread that has just ended
        states.append(stat[stat.rindex(")") + 2])  # the field after "(name)"
    return bool(states) and all(state in "tT" for state in states)


def free_port() -> int:
    """A loopback port free right now, for a server that cannot be told to bind port 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_tools(*names: str, why: str) -> None:
    """Fail the test, saying what to install, unless every tool named is on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not found; {why}")


def unavailable(message: str) -> None:
    """A test whose tools are missing fails with ``message``: it is never skipped, because
    a skipped test proves nothing. ``.ci/run`` installs every tool the suite needs."""
    pytest.fail(message)

"""Attacks on the outbox file of a running relay: deleted under it, or opened by a second
relay through another name. Real ``serve`` subprocesses, the sandbox as MMOLove.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path

import aiohttp
import pytest

from relay.cli.client import EXIT_CONFIG
from relay.sandbox import RunningSandbox
from tests.harness import Spawn, get_json, ingest, post, relay_env, tuning, wait_delivered
from tests.support import eventually, registered

pytestmark = pytest.mark.timeout(60)


async def test_a_deleted_outbox_fails_readiness_and_refuses_ingest_with_503(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """outbox.db, -wal and -shm removed under a running relay: within seconds, and with no
    probe asking, it logs a critical line; then ingest answers 503 with Retry-After (not a
    202 that a restart would lose), /readyz 503, and status and metrics show it."""
    db = tmp_path / "outbox.db"
    relay = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    await wait_delivered(http, relay.url, [await ingest(http, relay.url, registered("before"))])
    for suffix in ("", "-wal", "-shm"):
        os.unlink(f"{db}{suffix}")

    lost = await relay.wait_log("outbox.file_lost", timeout_s=10)
    assert lost["level"] == "critical"
    assert str(db) in lost["problem"]
    status, answer, headers = await post(http, relay.url, registered("after"))
    assert status == 503, answer
    assert answer["error"]["code"] == "unavailable"
    assert "outbox file is gone" in answer["error"]["message"]
    assert int(headers["Retry-After"]) > 0
    async with http.get(f"{relay.url}/readyz") as resp:
        ready = await resp.json()
        assert resp.status == 503
    assert any("outbox file lost" in p for p in ready["problems"]), ready
    assert (await get_json(http, f"{relay.url}/v1/status"))["outbox_lost"]
    async with http.get(f"{relay.url}/metrics") as resp:
        assert "mmolove_relay_outbox_file_lost 1.0" in await resp.text()


@pytest.mark.parametrize("link", ["symlink", "hard link"])
async def test_a_second_relay_through_another_name_for_the_file_exits_3(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path, link: str
) -> None:
    """The lock is the file's, not its name's: a second relay reaching the same outbox
    through a symlink or a hard link is refused before its start-up recovery can requeue
    the first one's in-flight events; the first keeps serving."""
    db = tmp_path / "outbox.db"
    first = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    other = tmp_path / "elsewhere" / "outbox.db"
    other.parent.mkdir()
    if link == "symlink":
        other.symlink_to(db)
    else:
        os.link(db, other)

    second = spawn(relay_env(sandbox.url, other), config=tuning())
    assert await second.exited() == EXIT_CONFIG
    lines = [line for line in second.stderr if line.strip()]
    assert len(lines) == 1, lines
    assert "another relay is already using the outbox" in lines[0]
    assert "hard link" in lines[0]

    event_id = await ingest(http, first.url, registered("still-served"))
    await wait_delivered(http, first.url, [event_id])

    async def first_still_ready() -> bool:
        async with http.get(f"{first.url}/readyz") as resp:
            return resp.status == 200

    await eventually(first_still_ready, timeout_s=5, what="the first relay to stay ready")


async def test_an_outbox_deleted_under_load_acknowledges_nothing_after(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Eight clients post without pause; outbox.db, -wal and -shm are deleted under them.
    Every POST sent after the deletion is answered 503: a 202 would be an event stored in
    a file nobody can reach, gone at the next restart. The relay keeps serving 503s."""
    db = tmp_path / "outbox.db"
    relay = await spawn(relay_env(sandbox.url, db), config=tuning()).ready()
    deleted_at: float | None = None
    after: list[tuple[float, int]] = []  # (seconds after the deletion, status)
    counter = itertools.count()

    async def client() -> None:
        while deleted_at is None or time.monotonic() - deleted_at < 1.5:
            sent = time.monotonic()
            status, _, _ = await post(http, relay.url, registered(f"load-{next(counter)}"))
            if deleted_at is not None and sent > deleted_at:
                after.append((sent - deleted_at, status))

    clients = [asyncio.create_task(client()) for _ in range(8)]
    await asyncio.sleep(0.5)
    for suffix in ("", "-wal", "-shm"):
        os.unlink(f"{db}{suffix}")
    deleted_at = time.monotonic()
    await asyncio.gather(*clients)

    acknowledged = [round(at, 3) for at, status in after if status == 202]
    assert after, "no POST was sent after the deletion"
    assert acknowledged == [], f"{len(acknowledged)} of {len(after)} acknowledged: {acknowledged}"
    assert {status for _, status in after} == {503}
    assert relay.find_logs("outbox.file_lost")
    assert relay.proc.poll() is None

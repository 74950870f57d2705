"""Hostile clients against a real ``serve`` process on loopback: descriptors, connections,
slow heads and bodies, memory, hang-ups and malformed HTTP (RELIABILITY.md, "Attacks")."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from relay.sandbox import RunningSandbox
from tests.harness import RelayProcess, Spawn, ingest, post, relay_env
from tests.support import eventually, registered

MIB = 1024 * 1024
# What the attack run used: just over the 1,024 descriptors a service usually starts with.
IDLE_CONNECTIONS = 1100
STALLED_BODIES = 1000
RSS_BOUND = 256 * MIB


def ingest_config(**values: float) -> str:
    return "[ingest]\n" + "".join(f"{name} = {value}\n" for name, value in values.items())


@contextlib.contextmanager
def soft_fd_limit(limit: int) -> Iterator[None]:
    """Start children with the soft descriptor limit most services start with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def room_for(connections: int) -> None:
    """This process opens the attack's connections itself: raise its own soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = connections + 256
    assert hard >= needed, f"the hard open-file limit {hard} is below {needed}; raise it"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))


def address(relay: RelayProcess) -> tuple[str, int]:
    host, port = relay.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextlib.asynccontextmanager
async def connections(
    relay: RelayProcess, count: int, first_bytes: bytes = b""
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """``count`` open connections that send ``first_bytes`` and then nothing more."""
    host, port = address(relay)
    opened = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection(host, port)
            opened.append((reader, writer))
            if first_bytes:
                writer.write(first_bytes)
        yield opened
    finally:
        for _, writer in opened:
            writer.close()


def open_fds(pid: int) -> int:
    """How many file descriptors a process has open (its sockets among them)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int, field: str = "VmRSS") -> int:
    """Resident memory of a process in bytes, from /proc (VmHWM: its peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


async def raw_answer(relay: RelayProcess, request: bytes) -> tuple[int, dict[str, object]]:
    """Send raw bytes on a fresh connection; the status and JSON body of the answer."""
    reader, writer = await asyncio.open_connection(*address(relay))
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await asyncio.wait_for(reader.readexactly(length), timeout=10)
        return status, json.loads(body)
    finally:
        writer.close()


async def test_1100_idle_connections_do_not_stop_a_normal_post(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Started with the usual soft limit of 1,024 descriptors, the relay raises it to the
    hard limit, so 1,100 idle and slowloris connections leave room for real clients."""
    room_for(IDLE_CONNECTIONS)
    with soft_fd_limit(1024):
        relay = spawn(relay_env(sandbox.url, tmp_path / "outbox.db"))
    await relay.ready()
    raised = await relay.wait_log("relay.fd_limit")
    assert (raised["raised_from"], raised["soft"] > 1024) == (1024, True)
    half = IDLE_CONNECTIONS // 2
    async with connections(relay, half), connections(relay, half, b"POST /v1/events HTTP/1.1\r\n"):
        await ingest(http, relay.url, registered("after-1100-idle"))


async def test_connections_beyond_the_cap_get_503_in_json(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    env = relay_env(sandbox.url, tmp_path / "outbox.db")
    relay = await spawn(env, config=ingest_config(max_connections=20)).ready()
    async with connections(relay, 20):
        status, answer, headers = await post(http, relay.url, registered("over-the-cap"))
        assert (status, headers["Retry-After"]) == (503, "1"), answer
        assert answer["error"]["code"] == "too_many_connections"  # type: ignore[index]
    await eventually(
        lambda: relay.find_logs("api.connection_refused"), timeout_s=5, what="the log line"
    )

    async def accepted() -> bool:
        status, _, _ = await post(http, relay.url, registered("under-the-cap"))
        return status == 202

    await eventually(accepted, timeout_s=10, what="a POST accepted once the idle ones closed")


async def test_a_slowloris_head_and_an_idle_connection_are_closed(
    spawn: Spawn, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    env = relay_env(sandbox.url, tmp_path / "outbox.db")
    relay = await spawn(env, config=ingest_config(header_timeout_s=1.0)).ready()
    async with connections(relay, 1) as [(idle, _)], connections(relay, 1) as [(slow, writer)]:
        for byte in b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\n":
            writer.write(bytes([byte]))
            if slow.at_eof():
                break
            await asyncio.sleep(0.05)
        # Closed by the relay: the read ends (at EOF) instead of waiting for ever.
        assert await asyncio.wait_for(slow.read(), timeout=10) == b""
        assert await asyncio.wait_for(idle.read(), timeout=10) == b""


async def test_a_stalled_body_gets_408_in_json(
    spawn: Spawn, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    env = relay_env(sandbox.url, tmp_path / "outbox.db")
    relay = await spawn(env, config=ingest_config(body_timeout_s=1.0)).ready()
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    status, answer = await raw_answer(relay, head + b'{"event":')
    assert status == 408
    assert answer["error"]["code"] == "body_timeout"  # type: ignore[index]


async def stall_a_body(host: str, port: int, size: int, hold_s: float) -> None:
    """Send all but the last byte of a ``size``-byte body, then hold the connection."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        reader, writer = await asyncio.open_connection(host, port)
        head = (
            "POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n"
        ).encode()
        writer.write(head)
        chunk = b" " * (64 * 1024)
        sent = 0
        try:
            while sent < size - 1:
                part = chunk[: size - 1 - sent]
                writer.write(part)
                sent += len(part)
                async with asyncio.timeout(hold_s):
                    await writer.drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hold_s):
                    await reader.read()
        finally:
            writer.close()


@pytest.mark.long  # run alone: stalled clients are timed against the relay's read timeouts
async def test_stalled_large_bodies_keep_memory_bounded(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """1,000 connections each send just under 1 MiB and stall, as in the attack run: without
    a bound on bodies in flight the relay holds them all; with it, its peak RSS stays below
    256 MiB, it keeps taking events, and a second attack mostly reuses what the first left
    resident.

    How much glibc hands back after a burst varies from run to run (after one attack, 68 to
    123 MiB of a 56 MiB start; a second attack has left 11 to 51 MiB more resident
    than the first), so the test asserts what holds: a second attack adds less than a whole
    attack's worth, and every stalled connection is closed again (a relay that kept them,
    and their bodies, would fail both)."""
    room_for(STALLED_BODIES)
    env = relay_env(sandbox.url, tmp_path / "outbox.db")
    relay = await spawn(env, config=ingest_config(body_timeout_s=3.0)).ready()
    pid = relay.proc.pid
    before = rss(pid)
    fds_before = open_fds(pid)
    host, port = address(relay)
    kept = []
    for round_ in range(2):
        attack = [stall_a_body(host, port, MIB - 1024, hold_s=6.0) for _ in range(STALLED_BODIES)]
        await asyncio.gather(*attack)
        await ingest(http, relay.url, registered(f"after-the-flood-{round_}"))
        kept.append(rss(pid))
    peak = rss(pid, "VmHWM")
    print(f"RSS before {before // MIB} MiB, after each attack {[k // MIB for k in kept]} MiB, "
          f"peak {peak // MIB} MiB")  # fmt: skip
    assert peak < RSS_BOUND
    assert kept[1] - kept[0] < peak - before, "the second attack added a whole attack's worth"
    await eventually(
        lambda: open_fds(pid) <= fds_before + 4, what="the stalled connections to be closed"
    )
    assert relay.find_logs("api.body_budget_full")


async def test_a_client_hanging_up_mid_body_is_one_info_line(
    spawn: Spawn, sandbox: RunningSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    relay = await spawn(relay_env(sandbox.url, tmp_path / "outbox.db")).ready()
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    for _ in range(20):
        async with connections(relay, 1, head + b'{"event":'):
            await asyncio.sleep(0.01)
    gone = await eventually(
        lambda: len(relay.find_logs("api.client_disconnected")) == 20 or None,
        timeout_s=10,
        what="20 api.client_disconnected lines",
    )
    assert gone
    lines = relay.logs()
    assert {line["level"] for line in lines if "disconnect" in line["event"]} == {"info"}
    # One line each: the hang-up is no rejected input (issue 25: it was two lines, 388 bytes).
    assert relay.find_logs("ingest.rejected") == []
    assert not [line for line in lines if line["level"] in ("error", "critical")], lines
    assert not [line for line in lines if "exception" in line or "Traceback" in str(line)]


async def test_malformed_http_is_answered_in_the_json_error_shape(
    spawn: Spawn, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    relay = await spawn(relay_env(sandbox.url, tmp_path / "outbox.db")).ready()
    bad = b"POST /v1/events HTTP/1.1\r\nHost: localhost\r\nContent-Length: ten\r\n\r\n"
    status, answer = await raw_answer(relay, bad)
    assert status == 400
    assert answer["error"]["code"] == "malformed_request"  # type: ignore[index]
    await relay.wait_log("api.malformed_request")
    lines = relay.logs()
    assert not [line for line in lines if line["level"] in ("error", "critical")], lines

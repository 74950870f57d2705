"""The systemd notify protocol, judged by what arrives on a real datagram socket.

The last test runs ``mmolove-relay serve`` in the environment systemd gives the unit:
``NOTIFY_SOCKET``, ``WATCHDOG_USEC``, ``CREDENTIALS_DIRECTORY``, ``STATE_DIRECTORY``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from relay.config.values import CREDENTIAL_NAME
from relay.notify import Notifier

pytestmark = pytest.mark.unit


class Listener:
    """The service manager's end: a bound datagram socket that collects messages."""

    def __init__(self, address: str) -> None:
        self.address = address  # as it goes into NOTIFY_SOCKET ("@name" for abstract)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)

    async def next(self, timeout_s: float = 10.0) -> list[str]:
        """The next datagram, as its lines."""
        async with asyncio.timeout(timeout_s):
            data = await asyncio.get_running_loop().sock_recv(self.sock, 4096)
        return data.decode().split("\n")

    async def until(self, state: str, timeout_s: float = 10.0) -> list[list[str]]:
        """Every datagram up to and including the first that holds ``state``."""
        seen = []
        while True:
            seen.append(await self.next(timeout_s))
            if state in seen[-1]:
                return seen

    def pending(self) -> list[list[str]]:
        """The datagrams that have arrived and not been read."""
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return out


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Callable[[bool], Listener]]:
    """``listener(abstract)``: a socket in the abstract namespace, or a file under tmp_path."""
    made: list[Listener] = []

    def make(abstract: bool = True) -> Listener:
        name = f"mmolove-relay-test-{uuid.uuid4().hex}"
        made.append(Listener(f"@{name}" if abstract else str(tmp_path / "notify.sock")))
        return made[-1]

    yield make
    for each in made:
        each.sock.close()


@pytest.mark.parametrize("abstract", [True, False], ids=["abstract-namespace", "socket-file"])
async def test_states_arrive_as_one_datagram_of_lines(
    listener: Callable[[bool], Listener], abstract: bool
) -> None:
    manager = listener(abstract)
    Notifier(manager.address).notify("READY=1", "STATUS=ingest on x")
    assert await manager.next() == ["READY=1", "STATUS=ingest on x"]


async def test_without_notify_socket_nothing_is_sent_and_no_watchdog_runs() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "1000"}, pid=os.getpid())
    notifier.notify("READY=1")
    before = asyncio.all_tasks()
    async with notifier.watchdog(alive=lambda: True):
        assert asyncio.all_tasks() == before


@pytest.mark.parametrize(
    ("environ", "interval_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "<self>"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_pings_at_half_of_watchdog_usec_when_it_is_ours(
    environ: dict[str, str], interval_s: float | None
) -> None:
    environ = {k: v.replace("<self>", "4242") for k, v in environ.items()}
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@x", **environ}, pid=4242)
    assert notifier.watchdog_interval_s == interval_s


async def test_watchdog_pings_only_while_alive(listener: Callable[[bool], Listener]) -> None:
    manager = listener(True)
    notifier = Notifier(manager.address, watchdog_interval_s=0.02)
    alive = True
    async with notifier.watchdog(alive=lambda: alive):
        assert await manager.next() == ["WATCHDOG=1"]
        assert await manager.next() == ["WATCHDOG=1"]
        alive = False
        await asyncio.sleep(0.05)  # a ping may have been on its way
        manager.pending()
        await asyncio.sleep(0.1)
        assert manager.pending() == [], "pinged while not alive"
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "watchdog"]


async def test_an_unreachable_manager_is_logged_not_raised(tmp_path: Path) -> None:
    with capture_logs() as logs:
        Notifier(str(tmp_path / "nobody-listens")).notify("READY=1")
    assert [(e["event"], e["states"]) for e in logs] == [("notify.failed", ["READY=1"])]


@pytest.mark.timed  # watchdog pings are timed in wall-clock seconds
async def test_serve_is_ready_once_bound_feeds_the_watchdog_and_says_stopping(
    listener: Callable[[bool], Listener], tmp_path: Path
) -> None:
    """READY=1 comes with the listener answering, pings every half WATCHDOG_USEC, then
    STOPPING=1 as the stop signal starts the drain, and exit 0."""
    manager = listener(True)
    credentials, state = tmp_path / "credentials", tmp_path / "state"
    credentials.mkdir()
    state.mkdir()
    (credentials / CREDENTIAL_NAME).write_text("s3cret-notify-test\n")
    inherited = ("MMOLOVE_", "WATCHDOG_", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(inherited)},
        "NOTIFY_SOCKET": manager.address,
        "WATCHDOG_USEC": "200000",
        "CREDENTIALS_DIRECTORY": str(credentials),
        "STATE_DIRECTORY": str(state),
        "MMOLOVE_SERVER_ID": "srv-1",
        "MMOLOVE_ENDPOINT": "http://127.0.0.1:9/api/referral/events",
        "MMOLOVE_RELAY_LISTEN": "127.0.0.1:0",
        "MMOLOVE_RELAY_LOG_FORMAT": "json",
    }
    with (tmp_path / "stderr").open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay.cli",
            "serve",
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        messages = await manager.until("READY=1")
        ready = messages[-1]
        url = ready[1].removeprefix("STATUS=ingest on ")
        assert ready == ["READY=1", f"STATUS=ingest on {url}"]
        async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as resp:
            assert resp.status == 200, "READY=1 came before the listener answered"
        assert stat.S_IMODE((state / "outbox.db").stat().st_mode) == 0o600

        started = time.monotonic()
        for _ in range(3):
            assert await manager.next() == ["WATCHDOG=1"]
        # Three pings at 0.1 s intervals; a generous bound for a loaded machine.
        assert time.monotonic() - started < 2.0

        proc.send_signal(signal.SIGTERM)
        assert ["STOPPING=1"] in await manager.until("STOPPING=1")
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "s3cret-notify-test" not in (tmp_path / "stderr").read_text()

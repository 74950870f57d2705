"""The relay as operators run it, for tests that need a real process: ``serve`` as a
subprocess configured by environment variables, its logs, and helpers to ingest events and
judge what MMOLove (the project's sandbox) saw.

Loaded as a pytest plugin by ``tests/conftest.py``, which makes the ``spawn`` and ``http``
fixtures available to every test module.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
from aiohttp import web

from relay.sandbox import EVENT_PATH, RunningSandbox
from relay.signing import HEADER
from tests.support import SECRET, SERVER, eventually

Key = tuple[str, str, str]  # (token, event, server_event_id): what MMOLove deduplicates on

# How long a relay process may take to start, or to stop on its own: it imports aiohttp and
# the daemon, traced by coverage; in the parallel run, beside three other workers on two
# cores, that took more than 10 s. A bound on a hang, not a promise of speed.
PROCESS_WAIT_S = 30.0

INGEST_TOKEN = "ingest-tok-4f9e2d71"
CONCURRENCY = 4
DRAIN_TIMEOUT_S = 5.0


def tuning(*, drain_timeout_s: float = DRAIN_TIMEOUT_S, extra: str = "") -> str:
    """Fast retries so a test never waits on production backoff; the rest stays default."""
    return (
        "[delivery]\n"
        f"concurrency = {CONCURRENCY}\n"
        "backoff_base_s = 0.05\n"
        "backoff_cap_s = 0.5\n"
        f"drain_timeout_s = {drain_timeout_s}\n"
        f"{extra}"
    )


# Leases of 2.5 s (2 x send_timeout_s + drain_timeout_s): a killed replica's claims come back
# quickly enough for a test.
FLEET_TUNING = tuning(drain_timeout_s=0.5, extra="send_timeout_s = 1.0\n")


# -- the daemon as a subprocess ----------------------------------------------------------


def _pump(pipe: IO[bytes], sink: list[str]) -> None:
    """Read a pipe to its end so the child never blocks on a full pipe."""
    for raw in iter(pipe.readline, b""):
        sink.append(raw.decode("utf-8", "replace"))


class RelayProcess:
    """One ``mmolove-relay serve`` process; threads drain its stdout and stderr."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.url = ""
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._pumps = [
            threading.Thread(target=_pump, args=(proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, self.stderr), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    def logs(self, holding: str = "") -> list[dict[str, Any]]:
        """The JSON log lines written so far (anything else on stderr is skipped); only the
        lines holding ``holding`` are parsed, so a test polling for one line stays linear."""
        out = []
        for line in list(self.stderr):
            if holding not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def find_logs(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.logs(event) if record.get("event") == event]

    async def wait_log(self, event: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            matches = self.find_logs(event)
            if matches:
                return matches[0]
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the relay exited with {self.proc.returncode} before logging {event}:\n"
                    + "".join(self.stderr)
                )
            return None

        record: dict[str, Any] = await eventually(
            found, timeout_s=timeout_s, what=f"log line {event}"
        )
        return record

    async def ready(self) -> RelayProcess:
        record = await self.wait_log("relay.ready", timeout_s=PROCESS_WAIT_S)
        self.url = str(record["listen"])
        return self

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def exited(self, *, timeout_s: float = PROCESS_WAIT_S) -> int:
        """Wait for the process to end and its pipes to drain; returns the exit status."""
        await eventually(
            lambda: self.proc.poll() is not None, timeout_s=timeout_s, what="the relay to exit"
        )
        await asyncio.to_thread(self._join)
        return self.proc.returncode

    def output(self) -> str:
        """Everything the process wrote; complete once ``exited`` has returned."""
        return "".join(self.stdout) + "".join(self.stderr)

    def _join(self) -> None:
        for pump in self._pumps:
            pump.join(timeout=5)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._join()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


Spawn = Callable[..., RelayProcess]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start relay processes (``env`` on top of a clean environment); all are killed after."""
    started: list[RelayProcess] = []
    configs = itertools.count()
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MMOLOVE_") and k not in ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY")
    }

    def start(
        env: Mapping[str, str | None],
        *,
        config: str | None = None,
        wrap: Sequence[str] = (),
        program: Sequence[str] = (sys.executable, "-m", "relay.cli"),
    ) -> RelayProcess:
        """``wrap`` prefixes the command, e.g. to run it in a network namespace; ``program``
        is another relay's command, e.g. an older release's."""
        full = dict(base_env)
        for name, value in env.items():
            if value is None:
                full.pop(name, None)
            else:
                full[name] = value
        args = [*wrap, *program]
        if config is not None:
            path = tmp_path / f"relay-{next(configs)}.toml"
            path.write_text(config, encoding="utf-8")
            args += ["--config", str(path)]
        proc = subprocess.Popen(
            [*args, "serve"],
            env=full,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        relay = RelayProcess(proc)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.close()


def relay_env(endpoint: str, db: Path, **overrides: str | None) -> dict[str, str | None]:
    """The environment a container would get; ``overrides`` set or (with None) remove."""
    env: dict[str, str | None] = {
        "MMOLOVE_SERVER_ID": SERVER,
        "MMOLOVE_SECRET": SECRET,
        "MMOLOVE_ENDPOINT": endpoint,
        "MMOLOVE_RELAY_LISTEN": "127.0.0.1:0",
        "MMOLOVE_RELAY_DB": str(db),
        "MMOLOVE_RELAY_LOG_FORMAT": "json",
    }
    env.update(overrides)
    return env


def fleet_env(sandbox: RunningSandbox, tmp_path: Path, url: str, password: str | None) -> Any:
    """A replica's environment: the outbox at ``url`` (PostgreSQL), its password in a file."""
    extra: dict[str, str | None] = {"MMOLOVE_RELAY_DB": url}
    if password is not None:
        path = tmp_path / "db-password"
        path.write_text(password + "\n")
        extra["MMOLOVE_RELAY_DB_PASSWORD_FILE"] = str(path)
    return relay_env(sandbox.url, tmp_path / "unused.db", **extra)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A fresh connection per request, as a game server would open, so a killed relay shows
    # up as a refused connection rather than a stale pooled one.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=10),
    ) as session:
        yield session


class HeldAnswers:
    """A hop in front of the sandbox: forwards each event at once, holds back the answer.

    MMOLove has then applied the event while the relay still waits for the answer, the
    window in which a crash makes the relay resend something MMOLove already has.
    """

    def __init__(self, upstream: str, client: aiohttp.ClientSession, hold_s: float) -> None:
        self.upstream = upstream
        self.hold_s = hold_s
        self.url = ""
        self.seen: list[bytes] = []  # every body the relay sent, in order
        self._client = client

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(body)
        headers = {"Content-Type": request.content_type, HEADER: request.headers[HEADER]}
        async with self._client.post(self.upstream, data=body, headers=headers) as resp:
            payload, status = await resp.read(), resp.status
            answer_headers = {"Content-Type": resp.headers["Content-Type"]}
            answer_headers["Date"] = resp.headers["Date"]
        await asyncio.sleep(self.hold_s)
        return web.Response(body=payload, status=status, headers=answer_headers)


@contextlib.asynccontextmanager
async def held_answers(upstream: str, *, hold_s: float) -> AsyncIterator[HeldAnswers]:
    async with aiohttp.ClientSession() as client:
        hop = HeldAnswers(upstream, client, hold_s)
        app = web.Application()
        app.router.add_post(EVENT_PATH, hop.handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            hop.url = f"http://{host}:{port}{EVENT_PATH}"
            yield hop
        finally:
            await runner.cleanup()


# -- events, ingest and polling -----------------------------------------------------------


def key_of(body: Mapping[str, Any]) -> Key:
    return (str(body["token"]), str(body["event"]), str(body["server_event_id"]))


async def post(
    http: aiohttp.ClientSession, base: str, body: Any, *, token: str | None = None
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(f"{base}/v1/events", json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def ingest(
    http: aiohttp.ClientSession, base: str, body: Any, *, token: str | None = None
) -> int:
    """POST one event that must be acknowledged as durable; returns its outbox id."""
    status, answer, _ = await post(http, base, body, token=token)
    assert (status, answer.get("status")) == (202, "pending"), answer
    return int(answer["id"])


async def get_json(
    http: aiohttp.ClientSession, url: str, *, token: str | None = None
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def wait_delivered(
    http: aiohttp.ClientSession,
    base: str,
    ids: Iterable[int],
    *,
    timeout_s: float = PROCESS_WAIT_S,
    token: str | None = None,
) -> dict[int, dict[str, Any]]:
    """Wait until every id is ``delivered``; returns each final record by id. The default
    bound is a hang's, not a speed: 300 events took more than 15 s on a machine doubly busy."""
    wanted = sorted(set(ids))
    records: dict[int, dict[str, Any]] = {}

    async def all_delivered() -> bool:
        pending = [i for i in wanted if records.get(i, {}).get("status") != "delivered"]
        found = await asyncio.gather(
            *(get_json(http, f"{base}/v1/events/{i}", token=token) for i in pending)
        )
        records.update(zip(pending, found, strict=True))
        return all(records[i]["status"] == "delivered" for i in wanted)

    await eventually(all_delivered, timeout_s=timeout_s, what=f"{len(wanted)} events delivered")
    return records


async def wait_outbox_settled(
    http: aiohttp.ClientSession, base: str, *, timeout_s: float = 15.0
) -> dict[str, int]:
    """Wait until nothing is pending or in flight; returns the counts by status."""

    async def settled() -> dict[str, int] | None:
        counts: dict[str, int] = (await get_json(http, f"{base}/v1/status"))["counts"]
        return counts if counts["pending"] == counts["in_flight"] == 0 else None

    counts: dict[str, int] = await eventually(
        settled, timeout_s=timeout_s, what="the outbox to settle"
    )
    return counts


def in_progress(sb: RunningSandbox) -> int:
    """Requests the sandbox is still working on (e.g. sleeping through its latency)."""
    snap = sb.sandbox.snapshot()
    answered: int = sum(snap["by_status"].values())
    return int(snap["requests"]) - answered - int(snap["dropped"])


def accepted_keys(sb: RunningSandbox) -> Counter[Key]:
    return Counter(
        (r["token"], r["event"], r["server_event_id"]) for r in sb.sandbox.snapshot()["accepted"]
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def outbox_rows(db: Path) -> dict[Key, tuple[int, str, int]]:
    """(id, status, attempts) by key, read from the file of a relay that has exited."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT token, event, server_event_id, id, status, attempts FROM events"
        ).fetchall()
    return {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in rows}


_WRITE_LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.read()
db.execute("COMMIT")
"""


@contextlib.asynccontextmanager
async def another_writer(db: Path) -> AsyncIterator[None]:
    """Another process holds ``db``'s SQLite write lock (``BEGIN IMMEDIATE``) from when the
    block starts until it ends."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITE_LOCK_HOLDER, str(db),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert await holder.stdout.readline() == b"locked\n"
        yield
    finally:
        holder.stdin.close()
        await holder.wait()


# The reliability scenarios' small disk (their small_disk fixture): larger than SQLite's 4 MB
# auto-checkpoint, so the WAL can be reset once space returns.
SMALL_DISK_SIZE = "16m"


def fill(path: Path) -> int:
    """Write zeros to ``path`` until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * 4096
    with path.open("wb", buffering=0) as sink:
        while True:
            try:
                written += sink.write(chunk) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written

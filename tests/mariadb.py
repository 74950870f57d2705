"""A real MariaDB for the tests: ``mariadb_server`` (one per session) and ``game_db`` (a fresh
database and a user granted SELECT only on it, per test).

The server is Debian's ``mariadb-server``: ``mariadb-install-db`` into a temporary directory,
then ``mariadbd`` on a private socket and a free loopback port, stopped when the session ends.
A test that stops or restarts the database takes a server of its own: ``private_mariadb``.
Its statement log (``mysql.slow_log``, every statement) shows the rows each statement examined.
Loaded as a pytest plugin by ``tests/conftest.py``; nothing is skipped for want of MariaDB.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomysql
import pymysql
import pytest

from tests.support import free_port as _free_port

INSTALL_DB = "mariadb-install-db"
SERVER = "mariadbd"


@dataclass
class MariaDb:
    """A throwaway MariaDB server whose admin is ``root`` with no password, on its socket only
    (the socket sits in a private directory); tests connect over TCP as users they create."""

    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.root / "mysqld.sock"

    @classmethod
    def create(cls) -> MariaDb:
        if shutil.which(INSTALL_DB) is None or not Path("/usr/sbin", SERVER).exists():
            pytest.fail(
                "MariaDB is not installed: run `apt-get install mariadb-server` (scripts/test "
                "does; it is in scripts/system-packages.txt)."
            )
        server = cls(Path(tempfile.mkdtemp(prefix="mmolove-mariadb-")), _free_port())
        subprocess.run(
            [INSTALL_DB, "--no-defaults", f"--datadir={server.root / 'data'}",
             "--auth-root-authentication-method=normal", "--skip-test-db", *_as_root()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        server.start()
        return server

    def start(self) -> None:
        log = self.root / "error.log"
        self.process = subprocess.Popen(
            ["/usr/sbin/" + SERVER, "--no-defaults", *_as_root(),
             f"--datadir={self.root / 'data'}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
             f"--pid-file={self.root / 'mariadbd.pid'}", f"--log-error={log}",
             # small and fast: a throwaway server's durability is not under test
             "--skip-log-bin", "--performance-schema=OFF", "--innodb-buffer-pool-size=64M",
             "--innodb-log-file-size=16M", "--innodb-flush-log-at-trx-commit=0",
             # the statement log: every statement with the rows it examined, in a table
             "--slow-query-log=1", "--long-query-time=0", "--log-output=TABLE"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:  # pymysql leaves a refused socket for the garbage collector: probe it here
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(str(self.socket))
                pymysql.connect(unix_socket=str(self.socket), user="root").close()
                return
            except (OSError, pymysql.MySQLError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    self.stop()
                    pytest.fail(f"mariadbd did not start:\n{tail}")
                time.sleep(0.1)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server: SIGTERM shuts it down cleanly, SIGKILL crashes it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def destroy(self) -> None:
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, user: str) -> str:
        return f"mysql://{user}@127.0.0.1:{self.port}/{database}"

    @contextlib.asynccontextmanager
    async def admin(self, database: str | None = None) -> AsyncIterator[Any]:
        """A cursor as root over the socket, autocommitting."""
        conn = await aiomysql.connect(
            unix_socket=str(self.socket), user="root", db=database, autocommit=True
        )
        try:
            async with conn.cursor() as cursor:
                yield cursor
        finally:
            await conn.ensure_closed()

    async def sql(
        self, statement: str, args: Sequence[object] = (), *, database: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement as root (``%s`` placeholders); its rows, if any."""
        async with self.admin(database) as cursor:
            await cursor.execute(statement, args or None)
            return list(await cursor.fetchall())

    async def create_database(self) -> GameDatabase:
        """A fresh database and a user who may only SELECT from it, with a password."""
        tag = secrets.token_hex(5)
        game = GameDatabase(self, f"game_{tag}", f"reader_{tag}", "mdb-pw-" + secrets.token_hex(6))
        async with self.admin() as cursor:
            await cursor.execute(f"CREATE DATABASE `{game.name}`")
            await cursor.execute(f"CREATE USER '{game.user}'@'%%' IDENTIFIED BY %s", game.password)
            await cursor.execute(f"GRANT SELECT ON `{game.name}`.* TO '{game.user}'@'%'")
        return game

    async def drop_database(self, game: GameDatabase) -> None:
        async with self.admin() as cursor:
            await cursor.execute(f"DROP USER IF EXISTS '{game.user}'@'%'")
            await cursor.execute(f"DROP DATABASE IF EXISTS `{game.name}`")


@dataclass(frozen=True)
class GameDatabase:
    """One database on a ``MariaDb``: ``url`` and ``password`` are the SELECT-only user's."""

    server: MariaDb
    name: str
    user: str
    password: str

    @property
    def url(self) -> str:
        return self.server.url(self.name, self.user)

    async def run(self, *statements: str) -> None:
        """Run statements as root in this database (tables, rows, grants)."""
        async with self.server.admin(self.name) as cursor:
            for statement in statements:
                await cursor.execute(statement)

    async def rows(self, query: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return await self.server.sql(query, args, database=self.name)

    async def load(self, statement: str, rows: Iterable[Sequence[object]]) -> None:
        """Insert many rows at once: ``statement`` is an INSERT ... VALUES (%s, ...)."""
        async with self.server.admin(self.name) as cursor:
            await cursor.executemany(statement, list(rows))

    async def examined(self, fragment: str) -> list[int]:
        """Rows examined by each logged statement whose text holds ``fragment``, in order."""
        found = await self.server.sql(
            "SELECT rows_examined FROM mysql.slow_log WHERE db = %s AND sql_text LIKE %s "
            "ORDER BY start_time",
            (self.name, "%" + fragment.replace("%", r"\%") + "%"),
        )
        return [int(row[0]) for row in found]


def _as_root() -> list[str]:
    # mariadbd refuses to run as root unless told to; a CI container runs everything as root.
    return ["--user=root"] if os.geteuid() == 0 else []


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDb]:
    server = MariaDb.create()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
async def game_db(mariadb_server: MariaDb) -> AsyncIterator[GameDatabase]:
    game = await mariadb_server.create_database()
    yield game
    await mariadb_server.drop_database(game)


@pytest.fixture
def private_mariadb() -> Iterator[MariaDb]:
    """A server of the test's own, to stop, freeze and restart."""
    server = MariaDb.create()
    try:
        yield server
    finally:
        server.destroy()

"""The seam to a game's database, against a real SQLite file, PostgreSQL and MariaDB: rows by
column name, :params (lists too), read-only, a statement timeout, and clear errors that never
show a password."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.config.values import Secret
from relay.errors import ConfigError, SourceError
from relay.sources.database import SourceDatabase, connect
from tests.mariadb import GameDatabase, MariaDb
from tests.postgres import PG_PASSWORD, Cluster, PgServer, admin, with_database
from tests.support import freeze

CREATE = (
    "CREATE TABLE characters (guid INTEGER PRIMARY KEY, account INTEGER NOT NULL, "
    "name VARCHAR(32) NOT NULL, level INTEGER NOT NULL)"
)
ROWS = [(1, 7842, "Ayla", 20), (2, 7842, "Brann", 3), (3, 12, "Cairne", 20), (4, 99, "Dorn", 20)]
INSERT = "INSERT INTO characters VALUES " + ", ".join(
    f"({g}, {a}, '{n}', {lv})" for g, a, n, lv in ROWS
)
REACHED = (
    "SELECT account AS referee_identity, name FROM characters "
    "WHERE account IN (:players) AND level >= :level ORDER BY guid"
)


@dataclass
class Backend:
    """One game database: the relay reads it by ``url``; ``admin`` runs SQL with full rights."""

    kind: str
    url: str
    password: Secret | None
    admin: Callable[[str], Awaitable[list[tuple[object, ...]]]]
    forever: str  # a query that would run for much longer than any timeout
    timeout_said: str  # the database's own words when its statement timeout stops it

    async def connect(self, statement_timeout_s: float = 5.0) -> SourceDatabase:
        return await connect(
            self.url, password=self.password, statement_timeout_s=statement_timeout_s, name="game"
        )


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "game.db"

        def run(sql: str) -> list[tuple[object, ...]]:
            with sqlite3.connect(path) as db:
                return db.execute(sql).fetchall()

        async def sqlite_admin(sql: str) -> list[tuple[object, ...]]:
            return await asyncio.to_thread(run, sql)

        forever = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        )
        await sqlite_admin(CREATE)
        yield Backend("sqlite", f"sqlite:///{path}", None, sqlite_admin, forever, "interrupted")
    elif request.param == "postgresql":
        server: PgServer = request.getfixturevalue("pg_server")
        name = "game_" + secrets.token_hex(5)
        async with admin(server) as db:
            await db.execute(f'CREATE DATABASE "{name}"')
        url = with_database(server.url, name)

        async def pg_admin(sql: str) -> list[tuple[object, ...]]:
            async with admin(PgServer(url, server.password)) as db:
                return [tuple(row) for row in await db.fetch(sql)]

        await pg_admin(CREATE)
        password = Secret(server.password) if server.password else None
        yield Backend("postgresql", url, password, pg_admin, "SELECT pg_sleep(60)", "57014")
        async with admin(server) as db:
            await db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    else:
        maria: MariaDb = request.getfixturevalue("mariadb_server")
        game = await maria.create_database()

        async def maria_admin(sql: str) -> list[tuple[object, ...]]:
            return await game.rows(sql)

        await maria_admin(CREATE)
        timeout_said = "max_statement_time exceeded"
        yield Backend(
            "mariadb",
            game.url,
            Secret(game.password),
            maria_admin,
            "SELECT SLEEP(60)",
            timeout_said,
        )
        await maria.drop_database(game)


async def test_rows_come_keyed_by_column_name_with_list_parameters(backend: Backend):
    await backend.admin(INSERT)
    db = await backend.connect()
    try:
        # identities cross as text: account 7842 is the player "7842", whatever the column type
        rows = await db.fetch(REACHED, {"players": ["7842", "12", "5"], "level": 20})
        assert [(int(str(row["referee_identity"])), row["name"]) for row in rows] == [
            (7842, "Ayla"),
            (12, "Cairne"),
        ]
        assert list(rows[0]) == ["referee_identity", "name"]
        assert await db.fetch(REACHED, {"players": [], "level": 1}) == []
        paged = "SELECT guid FROM characters WHERE guid > :cursor ORDER BY guid LIMIT :limit"
        assert await db.fetch(paged, {"cursor": 1, "limit": 2}) == [{"guid": 2}, {"guid": 3}]
    finally:
        await db.close()


async def test_a_query_that_writes_fails_clearly_and_changes_nothing(backend: Backend):
    """The read-only transaction (a read-only file for SQLite) is what refuses the write: the
    PostgreSQL user here may write, and MariaDB's is granted UPDATE for this test."""
    await backend.admin(INSERT)
    if backend.kind == "mariadb":
        await _grant_update(backend)
    db = await backend.connect()
    try:
        with pytest.raises(SourceError) as caught:
            await db.fetch("UPDATE characters SET level = 80 WHERE guid = :guid", {"guid": 1})
        assert caught.value.reason == "write"
        assert str(caught.value).startswith(
            "the query of source game (" + ("sqlite:" if backend.kind == "sqlite" else "")
        )
        assert (
            "tried to write; a source's query must be a single SELECT, and its database "
            "user should have SELECT only" in str(caught.value)
        )
        # the connection is fine afterwards: the next poll reads
        assert await db.fetch("SELECT level FROM characters WHERE guid = 1", {}) == [{"level": 20}]
    finally:
        await db.close()
    assert await backend.admin("SELECT level FROM characters WHERE guid = 1") == [(20,)]


async def test_a_user_granted_select_only_is_refused_a_write_with_the_same_message(
    game_db: GameDatabase,
):
    await game_db.run(CREATE, INSERT)
    db = await connect(game_db.url, password=Secret(game_db.password), statement_timeout_s=5)
    try:
        with pytest.raises(SourceError, match="tried to write") as caught:
            await db.fetch("DELETE FROM characters", {})
        assert "1142 DELETE command denied" in str(caught.value)
    finally:
        await db.close()
    assert len(await game_db.rows("SELECT * FROM characters")) == len(ROWS)


async def test_a_statement_is_stopped_by_the_database_at_the_timeout(backend: Backend):
    db = await backend.connect(statement_timeout_s=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            await db.fetch(backend.forever, {})
        elapsed = time.monotonic() - started
        assert caught.value.reason == "timeout"
        # the server's own timeout, not the client's grace, and long before the query's end
        assert backend.timeout_said in str(caught.value)
        assert "statement_timeout_s of 1 s" in str(caught.value)
        assert elapsed < 30
        assert await db.fetch("SELECT 1 AS one", {}) == [{"one": 1}]
    finally:
        await db.close()


async def test_a_timestamp_cursor_handed_back_as_text_still_pages(backend: Backend):
    """A cursor may be a timestamp; the relay keeps it as text (str() of what was read)."""
    await backend.admin("CREATE TABLE signups (id INTEGER PRIMARY KEY, at TIMESTAMP NOT NULL)")
    times = ", ".join(f"({n}, '2026-01-0{n} 10:00:00')" for n in range(1, 5))
    await backend.admin(f"INSERT INTO signups VALUES {times}")
    query = "SELECT id, at AS cursor_at FROM signups WHERE at > :cursor ORDER BY at LIMIT :limit"
    db = await backend.connect()
    try:
        first = await db.fetch(query, {"cursor": "2026-01-01 10:00:00", "limit": 2})
        assert [row["id"] for row in first] == [2, 3]
        rest = await db.fetch(query, {"cursor": str(first[-1]["cursor_at"]), "limit": 2})
        assert [row["id"] for row in rest] == [4]
    finally:
        await db.close()


async def test_two_columns_with_one_name_are_refused(backend: Backend):
    db = await backend.connect()
    try:
        with pytest.raises(SourceError, match="returns two columns named guid; give each an alias"):
            await db.fetch("SELECT a.guid, b.guid FROM characters a, characters b", {})
    finally:
        await db.close()


async def test_an_unknown_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match="is not one the relay reads; use mysql://"):
        await connect("mssql://reader:pw@db/game", password=None, statement_timeout_s=1)


async def test_a_missing_sqlite_file_is_unavailable_not_created(tmp_path: Path):
    with pytest.raises(SourceError, match=r"cannot be reached \(FileNotFoundError") as caught:
        await connect(f"sqlite:///{tmp_path}/game.db", password=None, statement_timeout_s=1)
    assert caught.value.reason == "unavailable"
    assert not (tmp_path / "game.db").exists()


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize("where", ["password_file", "url"])
async def test_a_wrong_password_is_a_clear_error_that_never_shows_it(
    backend: Backend, where: str, capsys: pytest.CaptureFixture[str]
):
    wrong = "wrong-pw-" + secrets.token_hex(6)
    url, password = backend.url, Secret(wrong)
    if where == "url":
        url, password = (
            url.replace("://", f"://{_user(url)}:{wrong}@").replace(f"{_user(url)}@", "", 1),
            None,
        )
    with pytest.raises(SourceError) as caught:
        await connect(url, password=password, statement_timeout_s=5, name="game")
    message = str(caught.value)
    assert caught.value.reason == "credentials"
    assert message.startswith("source game (" + backend.url.split("://")[0] + "://***@127.0.0.1:")
    assert ("28P01" if backend.kind == "postgresql" else "1045 Access denied") in message
    assert "check the user in the URL and the password in password_file" in message
    for secret in (wrong, backend.password.reveal() if backend.password else wrong):
        assert secret not in message
        assert secret not in repr(caught.value)
    assert wrong not in capsys.readouterr().out


def _user(url: str) -> str:
    return url.split("://")[1].split("@")[0]


async def _grant_update(backend: Backend) -> None:
    user = _user(backend.url)
    database = backend.url.rsplit("/", 1)[1]
    await backend.admin(f"GRANT UPDATE ON `{database}`.* TO '{user}'@'%'")


async def test_a_stopped_or_frozen_mariadb_fails_the_poll_and_the_next_poll_after_it_is_back_reads(
    private_mariadb: MariaDb,
):
    game = await private_mariadb.create_database()
    await game.run(CREATE, INSERT)
    db = await connect(game.url, password=Secret(game.password), statement_timeout_s=1, name="game")
    query = "SELECT count(*) AS n FROM characters"
    try:
        assert await db.fetch(query, {}) == [{"n": 4}]
        private_mariadb.stop()
        with pytest.raises(SourceError, match=r"^source game \(mysql://\*\*\*@127") as caught:
            await db.fetch(query, {})
        assert caught.value.reason == "unavailable"
        assert "cannot be reached" in str(caught.value)
        with pytest.raises(SourceError, match="2003 Can't connect to MySQL server"):
            await connect(game.url, password=Secret(game.password), statement_timeout_s=1)
        private_mariadb.start()
        assert await db.fetch(query, {}) == [{"n": 4}]
        # Frozen (SIGSTOP): it never answers, so the client's own clock ends the poll.
        assert private_mariadb.process is not None
        await freeze(private_mariadb.process.pid)
        try:
            with pytest.raises(SourceError, match=r"no answer within 2 s") as caught:
                await db.fetch(query, {})
            assert caught.value.reason == "timeout"
        finally:
            private_mariadb.process.send_signal(signal.SIGCONT)
        assert await db.fetch(query, {}) == [{"n": 4}]
    finally:
        await db.close()


async def test_a_stopped_postgresql_fails_the_poll_and_the_next_poll_after_it_is_back_reads():
    cluster = Cluster.create()
    server = PgServer(cluster.url, PG_PASSWORD)
    try:
        async with admin(server) as conn:
            await conn.execute(CREATE)
            await conn.execute(INSERT)
        db = await connect(
            cluster.url, password=Secret(PG_PASSWORD), statement_timeout_s=1, name="game"
        )
        query = "SELECT count(*) AS n FROM characters"
        try:
            assert await db.fetch(query, {}) == [{"n": 4}]
            await asyncio.to_thread(cluster.stop)
            with pytest.raises(SourceError, match=r"^source game \(postgresql://\*\*\*@") as caught:
                await db.fetch(query, {})
            assert caught.value.reason == "unavailable"
            await asyncio.to_thread(cluster.start)
            assert await db.fetch(query, {}) == [{"n": 4}]
        finally:
            await db.close()
    finally:
        await asyncio.to_thread(cluster.destroy)

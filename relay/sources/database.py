"""The one seam to a game's database: ``connect(url, ...)`` gives a ``SourceDatabase`` whose
``fetch`` runs one statement read-only and under a statement timeout, on SQLite (aiosqlite),
PostgreSQL (asyncpg) or MySQL/MariaDB (aiomysql). Every failure comes out as ``SourceError``.

URLs: ``mysql://user@host:port/db`` (``?unix_socket=/path`` for a socket), ``postgresql://``
or ``postgres://`` as libpq takes them, and ``sqlite:///`` followed by the file's path, as
SQLAlchemy writes it: ``sqlite:////var/lib/game.db`` is absolute (four slashes),
``sqlite:///game.db`` relative to the relay's working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import aiomysql  # type: ignore[import-untyped]
import aiosqlite
import asyncpg

from relay.config.values import Secret, mask_url
from relay.errors import ConfigError, SourceError, SourceFailure
from relay.sources.statements import Dialect, bind, dialect_of

Rows = list[dict[str, object]]
_T = TypeVar("_T")
# The server stops a statement at statement_timeout_s; this margin lets its own error arrive
# first, and the client's clock still ends a poll the server never answers (frozen, cut off).
_CLIENT_GRACE_S = 1.0


class SourceDatabase(Protocol):
    async def fetch(self, query: str, params: Mapping[str, object]) -> Rows:
        """Run one read-only statement with named :params; rows keyed by column name."""

    async def close(self) -> None: ...


async def connect(
    url: str, *, password: Secret | None, statement_timeout_s: float, name: str = ""
) -> SourceDatabase:
    """Open a source's database now, so a wrong URL, password or host is known at once.

    ``password`` (from password_file) wins over one written in the URL. ``name`` is the
    source's name for messages. A connection lost later is reopened by the next ``fetch``.
    """
    dialect = dialect_of(url)
    if dialect is None:
        raise ConfigError(
            f"source {name or mask_url(url)}: the URL {mask_url(url)!r} is not one the relay "
            "reads; use mysql://user@host:port/db, postgresql://user@host:port/db or "
            "sqlite:////path/game.db."
        )
    database = _DRIVERS[dialect](url, password, statement_timeout_s, name)
    await database.open()
    return database


def _rows(columns: Sequence[str], tuples: Sequence[Sequence[object]]) -> Rows:
    if len(set(columns)) != len(columns):
        twice = sorted({column for column in columns if columns.count(column) > 1})
        raise ValueError(f"returns two columns named {', '.join(twice)}; give each an alias")
    return [dict(zip(columns, row, strict=True)) for row in tuples]


class _Database:
    """What all three drivers share: the lock, the timeout, reopening and the one error.

    A driver opens a connection (``_open``), runs a statement read-only (``_run``), drops a
    connection (``_drop``) and says what a foreign error means (``_reason``).
    """

    dialect: ClassVar[Dialect]

    def __init__(self, url: str, password: Secret | None, timeout_s: float, name: str) -> None:
        self._url = url
        self._password = password
        self._timeout_s = timeout_s
        # Zero means "no limit" to all three servers: the shortest timeout is 1 ms.
        self._timeout_ms = max(1, round(timeout_s * 1000))
        self._url_password = unquote(urlsplit(url).password or "")
        masked = url if self.dialect == "sqlite" else mask_url(url)  # a path holds no secret
        self._label = f"source {name} ({masked})" if name else f"source {masked}"
        self._lock = asyncio.Lock()  # one statement at a time on the one connection
        self._conn: Any = None

    async def open(self) -> None:
        async with self._lock:
            await self._guarded(self._ensure_open())

    async def fetch(self, query: str, params: Mapping[str, object]) -> Rows:
        try:
            sql, args = bind(query, params, self.dialect)
        except ValueError as exc:
            raise SourceError(f"the query of {self._label} {exc}.", "query") from exc
        async with self._lock:
            columns, tuples = await self._guarded(self._fetch(sql, args))
        try:
            return _rows(columns, tuples)
        except ValueError as exc:
            raise SourceError(f"the query of {self._label} {exc}.", "query") from exc

    async def close(self) -> None:
        async with self._lock:
            await self._discard()

    async def _ensure_open(self) -> None:
        if self._conn is None:
            self._conn = await self._open()

    async def _fetch(self, sql: str, args: list[object]) -> tuple[list[str], list[Any]]:
        await self._ensure_open()
        return await self._run(sql, args)

    async def _guarded(self, work: Awaitable[_T]) -> _T:
        # Any failure leaves the connection in doubt (a statement cut mid-answer, a server
        # gone): drop it, and the next poll opens a fresh one. Polls are seconds apart.
        try:
            async with asyncio.timeout(self._timeout_s + _CLIENT_GRACE_S):
                return await work
        except BaseException as exc:
            await self._discard()
            if isinstance(exc, Exception):
                raise self._translate(exc) from exc
            raise

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # a connection already broken has nothing left to close
            with contextlib.suppress(Exception):
                await self._drop(conn)

    def _translate(self, exc: Exception) -> SourceError:
        said = self._said(exc)
        for secret in (self._password.reveal() if self._password else "", self._url_password):
            if secret:
                said = said.replace(secret, "***")
        reason = "timeout" if isinstance(exc, TimeoutError) else self._reason(exc)
        message = {
            "write": f"the query of {self._label} tried to write; a source's query must be a "
            f"single SELECT, and its database user should have SELECT only ({said}).",
            "timeout": f"the query of {self._label} was stopped after its statement_timeout_s "
            f"of {self._timeout_s:g} s ({said}); give it an index to use or raise the timeout.",
            "credentials": f"{self._label} refused the relay's credentials ({said}); check the "
            "user in the URL and the password in password_file.",
            "unavailable": f"{self._label} cannot be reached ({said}); the relay keeps "
            "polling and resumes when it answers.",
            "query": f"the query of {self._label} failed ({said}); fix it, then try it with "
            "`mmolove-relay sources try`.",
        }[reason]
        return SourceError(message, reason)

    def _said(self, exc: Exception) -> str:
        """The database's own words for what went wrong."""
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"no answer within {self._timeout_s + _CLIENT_GRACE_S:g} s"
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def _open(self) -> Any:
        raise NotImplementedError

    async def _run(self, sql: str, args: list[object]) -> tuple[list[str], list[Any]]:
        raise NotImplementedError

    async def _drop(self, conn: Any) -> None:
        raise NotImplementedError

    def _reason(self, exc: Exception) -> SourceFailure:
        raise NotImplementedError


class _Sqlite(_Database):
    """A file opened read-only (``mode=ro``, and ``query_only`` for anything it attaches); a
    progress handler interrupts a statement that outlives the timeout."""

    dialect = "sqlite"

    def _path(self) -> Path:
        path = Path(unquote(self._url.split("://", 1)[1].removeprefix("/"))).absolute()
        # Checked first: aiosqlite leaves a failed open's thread to finish on its own.
        if not path.is_file():
            raise FileNotFoundError(f"no file {path}")
        return path

    async def _open(self) -> Any:
        path = self._path()
        self._deadline = float("inf")
        conn = await aiosqlite.connect(
            f"file:{quote(str(path))}?mode=ro", uri=True, timeout=self._timeout_s
        )
        try:
            await conn.execute("PRAGMA query_only = ON")
            # Called by SQLite every 1,000 virtual-machine steps (~µs): a true answer aborts.
            await conn.set_progress_handler(lambda: time.monotonic() > self._deadline, 1000)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _run(self, sql: str, args: list[object]) -> tuple[list[str], list[Any]]:
        self._deadline = time.monotonic() + self._timeout_s
        try:
            async with self._conn.execute(sql, args) as cursor:
                rows = list(await cursor.fetchall())
                return [column[0] for column in cursor.description or ()], rows
        finally:
            self._deadline = float("inf")

    async def _drop(self, conn: Any) -> None:
        await conn.close()

    def _reason(self, exc: Exception) -> SourceFailure:
        code = getattr(exc, "sqlite_errorname", "")
        if isinstance(exc, OSError):
            return "unavailable"
        if code.startswith("SQLITE_READONLY"):
            return "write"
        if code == "SQLITE_INTERRUPT":
            return "timeout"
        if code.startswith(("SQLITE_CANTOPEN", "SQLITE_BUSY", "SQLITE_NOTADB", "SQLITE_IOERR")):
            return "unavailable"
        return "query"


# PostgreSQL types its parameters from the query; identities and cursors cross as text (or
# int), so a value is converted to the type the server asked for: account IN ('7842') on an
# integer column keeps the column's own index.
_FROM_TEXT: dict[str, Any] = {
    "int2": int,
    "int4": int,
    "int8": int,
    "oid": int,
    "numeric": Decimal,
    "float4": float,
    "float8": float,
    "timestamp": datetime.fromisoformat,
    "timestamptz": datetime.fromisoformat,
    "date": date.fromisoformat,
}
_TEXT = ("text", "varchar", "bpchar", "name")


def _pg_value(type_name: str, value: object) -> object:
    if isinstance(value, str) and type_name in _FROM_TEXT:
        return _FROM_TEXT[type_name](value)
    if isinstance(value, int | Decimal) and type_name in _TEXT:
        return str(value)
    return value


class _Postgres(_Database):
    """Each fetch is a transaction ``READ ONLY`` with ``SET LOCAL statement_timeout``."""

    dialect = "postgresql"

    async def _open(self) -> Any:
        password = self._password.reveal() if self._password else None
        return await asyncpg.connect(self._url, password=password, timeout=self._timeout_s)

    async def _run(self, sql: str, args: list[object]) -> tuple[list[str], list[Any]]:
        conn: asyncpg.Connection = self._conn
        async with conn.transaction(readonly=True):
            await conn.execute(f"SET LOCAL statement_timeout = {self._timeout_ms}")
            statement = await conn.prepare(sql)
            types = [parameter.name for parameter in statement.get_parameters()]
            records = await statement.fetch(*map(_pg_value, types, args))
            return [attribute.name for attribute in statement.get_attributes()], records

    async def _drop(self, conn: Any) -> None:
        conn.terminate()

    def _reason(self, exc: Exception) -> SourceFailure:
        if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
            return "write"
        if isinstance(exc, asyncpg.QueryCanceledError):
            return "timeout"
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
            return "credentials"
        if isinstance(
            exc,
            OSError
            | asyncpg.InterfaceError
            | asyncpg.exceptions.PostgresConnectionError
            | asyncpg.exceptions.OperatorInterventionError
            | asyncpg.exceptions.InvalidCatalogNameError,
        ):
            return "unavailable"
        return "query"

    def _said(self, exc: Exception) -> str:
        if isinstance(exc, asyncpg.PostgresError):
            return f"{exc.sqlstate} {exc}"
        return super()._said(exc)


# MySQL and MariaDB error numbers (mysqld_error.h, errmsg.h) and what they mean here.
_MYSQL_REASONS: dict[int, SourceFailure] = {
    1792: "write",  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    1969: "timeout",  # MariaDB ER_STATEMENT_TIMEOUT (max_statement_time)
    3024: "timeout",  # MySQL ER_QUERY_TIMEOUT (max_execution_time)
    1045: "credentials",  # ER_ACCESS_DENIED_ERROR
    1044: "credentials",  # ER_DBACCESS_DENIED_ERROR
    1049: "unavailable",  # ER_BAD_DB_ERROR: the database is not (yet) there
    1053: "unavailable",  # ER_SERVER_SHUTDOWN
    1927: "unavailable",  # MariaDB ER_CONNECTION_KILLED
    2002: "unavailable",  # CR_CONNECTION_ERROR (socket)
    2003: "unavailable",  # CR_CONN_HOST_ERROR
    2006: "unavailable",  # CR_SERVER_GONE_ERROR
    2013: "unavailable",  # CR_SERVER_LOST
}


class _MySql(_Database):
    """Each fetch runs inside ``START TRANSACTION READ ONLY``. The statement timeout is set
    once per connection, by the server's kind as its handshake names it (``VERSION()`` holds
    "MariaDB" on MariaDB): MariaDB's ``max_statement_time`` in seconds, MySQL's
    ``max_execution_time`` in milliseconds (which MySQL applies to SELECT only)."""

    dialect = "mysql"

    async def _open(self) -> Any:
        parts = urlsplit(self._url)
        options = parse_qs(parts.query)
        password = self._password.reveal() if self._password else unquote(parts.password or "")
        conn = await aiomysql.connect(
            host=parts.hostname or "localhost",
            port=parts.port or 3306,
            user=unquote(parts.username or ""),
            password=password,
            db=unquote(parts.path.lstrip("/")) or None,
            unix_socket=options.get("unix_socket", [None])[-1],
            connect_timeout=self._timeout_s,
            charset="utf8mb4",
            autocommit=True,
        )
        try:
            async with conn.cursor() as cursor:
                if "mariadb" in conn.get_server_info().lower():
                    seconds = self._timeout_ms / 1000
                    await cursor.execute(f"SET SESSION max_statement_time = {seconds:.3f}")
                else:
                    await cursor.execute(f"SET SESSION max_execution_time = {self._timeout_ms}")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _run(self, sql: str, args: list[object]) -> tuple[list[str], list[Any]]:
        async with self._conn.cursor() as cursor:
            await cursor.execute("START TRANSACTION READ ONLY")
            await cursor.execute(sql, args)
            rows = list(await cursor.fetchall())
            columns = [column[0] for column in cursor.description or ()]
            await cursor.execute("COMMIT")
            return columns, rows

    async def _drop(self, conn: Any) -> None:
        conn.close()
        await asyncio.sleep(0)  # the transport lets its socket go on the loop's next turn

    def _reason(self, exc: Exception) -> SourceFailure:
        if isinstance(exc, aiomysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
            # A user granted SELECT only is refused a write (1142, "UPDATE command denied")
            # before the read-only transaction is consulted.
            if exc.args[0] == 1142 and not str(exc.args[-1]).upper().startswith("SELECT"):
                return "write"
            return _MYSQL_REASONS.get(exc.args[0], "query")
        return "unavailable" if isinstance(exc, OSError) else "query"

    def _said(self, exc: Exception) -> str:
        if isinstance(exc, aiomysql.MySQLError) and len(exc.args) == 2:
            return f"{exc.args[0]} {exc.args[1]}"
        return super()._said(exc)


_DRIVERS: dict[Dialect, type[_Database]] = {
    "sqlite": _Sqlite,
    "postgresql": _Postgres,
    "mysql": _MySql,
}

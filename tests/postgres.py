"""A real PostgreSQL for the tests: ``pg_server`` (one per session) and ``pg_url`` (a fresh
database per test).

Point the tests at a server of your own with ``MMOLOVE_TEST_PG_URL`` (a URL whose user may
``CREATE DATABASE``; its password may sit in the URL or in ``PGPASSWORD``). Without it, the
session starts a throwaway cluster of its own from Debian's ``postgresql`` package: initdb into
a temporary directory (as the ``postgres`` user when run as root), on a free loopback port.
Loaded as a pytest plugin by ``tests/conftest.py``; nothing is skipped for want of PostgreSQL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.support import free_port

# Distinctive, so a leak into logs or output is unambiguous.
PG_PASSWORD = "pg-pw-" + secrets.token_hex(6)
PG_USER = "relay"


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster: password auth over loopback TCP, stopped and started
    at will (the fault tests restart it under load)."""

    root: Path
    port: int
    bindir: Path

    @property
    def url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    @classmethod
    def create(cls) -> Cluster:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            pytest.fail(
                "PostgreSQL is not installed: run `apt-get install postgresql` (scripts/test "
                "does), or set MMOLOVE_TEST_PG_URL to a server of your own."
            )
        root = Path(tempfile.mkdtemp(prefix="mmolove-pg-"))
        cluster = cls(root, free_port(), Path(found[-1]).parent)
        (root / "pw").write_text(PG_PASSWORD + "\n")
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to postgres
            shutil.chown(root, "postgres")
            shutil.chown(root / "pw", "postgres")
        cluster._run(
            "initdb", "-D", str(root / "data"), "-U", PG_USER, f"--pwfile={root / 'pw'}",
            "--auth=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        cluster.start()
        return cluster

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root, timeout=120)


@dataclass(frozen=True)
class PgServer:
    url: str  # without a database's name in effect: the admin database
    password: str | None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("MMOLOVE_TEST_PG_URL")
    if external:
        yield PgServer(external, None)
        return
    cluster = Cluster.create()
    try:
        yield PgServer(cluster.url, PG_PASSWORD)
    finally:
        cluster.destroy()


@pytest.fixture
async def pg_url(pg_server: PgServer) -> AsyncIterator[str]:
    """A URL of a new, empty database (the password stays out of it: see ``pg_password``)."""
    name = "mmolove_test_" + secrets.token_hex(6)
    async with admin(pg_server) as db:
        await db.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_server.url, name)
    async with admin(pg_server) as db:
        await db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def pg_password(pg_server: PgServer) -> str | None:
    return pg_server.password


@contextlib.asynccontextmanager
async def admin(server: PgServer) -> AsyncIterator[asyncpg.Connection]:
    db = await asyncpg.connect(server.url, password=server.password)
    try:
        yield db
    finally:
        await db.close()


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))

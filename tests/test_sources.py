"""The source watchers in a running relay, against real game databases (SQLite files and
PostgreSQL): registrations read past a cursor, milestones asked about referred players
only, each event stored and delivered once, bad rows rejected by name, and failures shown."""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from relay.config.settings import Settings
from relay.config.sources import SourceConfig
from relay.config.values import Secret
from relay.metrics import Metrics
from relay.sandbox import RunningSandbox
from relay.sources.watch import PLAYERS_PER_QUERY, Watcher, try_once
from relay.store.contract import EventFilter
from relay.store.postgres import PostgresOutbox
from relay.store.sqlite import SqliteOutbox
from tests.postgres import PgServer, admin, with_database
from tests.support import SERVER, StartRelay, cli, eventually

REGISTRATIONS = (
    "SELECT id AS cursor, account AS referee_identity, token FROM mmolove_referrals"
    " WHERE id > :cursor ORDER BY id LIMIT :limit"
)
LEVEL20 = (
    "SELECT DISTINCT account AS referee_identity FROM characters"
    " WHERE account IN (:players) AND level >= 20"
)
GAME_SCHEMA = """
CREATE TABLE account (id INTEGER PRIMARY KEY, username TEXT NOT NULL);
CREATE TABLE mmolove_referrals (
    id INTEGER PRIMARY KEY AUTOINCREMENT, account INTEGER NOT NULL, token TEXT NOT NULL
);
CREATE TABLE characters (
    guid INTEGER PRIMARY KEY, account INTEGER NOT NULL, level INTEGER NOT NULL
);
CREATE INDEX characters_account ON characters (account);
"""


def token_of(account: int) -> str:
    return f"tok-{account:05d}-0123456789"


@contextlib.contextmanager
def game_db(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def make_game(path: Path, *, accounts: int = 1000) -> None:
    with game_db(path) as db:
        db.executescript(GAME_SCHEMA)
        db.executemany(
            "INSERT INTO account (id, username) VALUES (?, ?)",
            [(i, f"user{i}") for i in range(1, accounts + 1)],
        )


def refer(path: Path, accounts: range | list[int]) -> None:
    """What the registration page's one PHP line does for each referred account."""
    with game_db(path) as db:
        db.executemany(
            "INSERT INTO mmolove_referrals (account, token) VALUES (?, ?)",
            [(a, token_of(a)) for a in accounts],
        )


def registrations(url: str, **keys: Any) -> SourceConfig:
    return SourceConfig(
        name="registrations",
        produces="registered",
        url=url,
        query=REGISTRATIONS,
        server_id=SERVER,
        interval_s=0.1,
        **keys,
    )


def level20(url: str, **keys: Any) -> SourceConfig:
    return SourceConfig(
        name="level20",
        produces="qualified",
        url=url,
        query=LEVEL20,
        server_id=SERVER,
        milestone="level20",
        interval_s=0.1,
        **keys,
    )


def delivered_keys(sandbox: RunningSandbox) -> Counter[tuple[str, str]]:
    return Counter(
        (r["event"], r["server_event_id"]) for r in sandbox.sandbox.snapshot()["accepted"]
    )


async def source_status(relay: Any, name: str) -> dict[str, Any]:
    _, status = await relay.get("/v1/status")
    found: dict[str, Any] = next(s for s in status["sources"] if s["name"] == name)
    return found


async def test_300_of_1000_accounts_referred_are_delivered_once_each(
    tmp_path: Path, start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    game = tmp_path / "game.db"
    make_game(game)
    referred = list(range(3, 1000, 3))[:300]
    refer(game, referred[:200])
    relay = await start_relay(game_sources=(registrations(f"sqlite:///{game}"),))
    await eventually(lambda: len(delivered_keys(sandbox)) == 200, what="the first 200")
    refer(game, referred[200:])  # registrations keep arriving while the relay polls
    await eventually(lambda: len(delivered_keys(sandbox)) == 300, timeout_s=20, what="all 300")
    keys = delivered_keys(sandbox)
    assert keys == Counter({("registered", f"reg-{a}"): 1 for a in referred})
    stored = await relay.handle.outbox.count(EventFilter(event="registered"))
    assert stored == 300
    state = await source_status(relay, "registrations")
    assert state["state"] == "ok"
    assert state["events_stored"] == 300
    assert state["rows_read"] >= 300
    assert json.loads(state["cursor"]) == 300
    assert await relay.handle.outbox.source_cursor("registrations") == "300"
    text = await (await relay.http.get(relay.url + "/metrics")).text()
    assert 'mmolove_relay_source_polls_total{result="ok",source="registrations"}' in text


async def test_the_milestone_watcher_asks_about_referred_players_only(
    tmp_path: Path, start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    game = tmp_path / "game.db"
    make_game(game)
    referred = list(range(1, 1001, 10))  # 100 referred players
    refer(game, referred)
    with game_db(game) as db:  # everyone reaches level 20: only the referred may qualify
        db.executemany(
            "INSERT INTO characters (guid, account, level) VALUES (?, ?, ?)",
            [(a * 2 + k, a, 20 + k) for a in range(1, 1001) for k in (0, 1)],
        )
    relay = await start_relay(
        game_sources=(registrations(f"sqlite:///{game}"), level20(f"sqlite:///{game}"))
    )
    await eventually(lambda: len(delivered_keys(sandbox)) == 200, timeout_s=20, what="200")
    keys = delivered_keys(sandbox)
    assert keys == Counter(
        {(e, f"{p}-{a}{s}"): 1 for a in referred for e, p, s in
         (("registered", "reg", ""), ("qualified", "qual", "-level20"))}
    )  # fmt: skip
    # Each qualified after its registered, and no longer watched once qualified.
    order = [r["server_event_id"] for r in sandbox.sandbox.snapshot()["accepted"]]
    for a in referred:
        assert order.index(f"reg-{a}") < order.index(f"qual-{a}-level20")
    state = await eventually(
        lambda: _watched_none(relay), what="qualified players no longer watched"
    )
    assert state["events_stored"] == 100
    # The game's own planner walks the account index for the IN list, not the table.
    with game_db(game) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN " + LEVEL20.replace(":players", ",".join("?" * PLAYERS_PER_QUERY)),
            [str(a) for a in range(PLAYERS_PER_QUERY)],
        ).fetchall()
    assert any("USING INDEX characters_account (account=?)" in row[-1] for row in plan), plan


async def _watched_none(relay: Any) -> dict[str, Any] | None:
    state = await source_status(relay, "level20")
    return state if state["players_watched"] == 0 else None


@pytest.mark.unit
async def test_each_milestone_poll_asks_about_the_next_players_in_turn(tmp_path: Path) -> None:
    """players_per_poll = 2 over five watched players: the polls ask about 1-2, 3-4, 5, then
    1-2 again. Only player 5 is at level 20 at first, so it is found on the third poll, and
    player 1, levelled up meanwhile, when the turn comes back to it."""
    game = tmp_path / "game.db"
    make_game(game, accounts=5)
    refer(game, range(1, 6))
    with game_db(game) as db:
        db.executemany(
            "INSERT INTO characters (guid, account, level) VALUES (?, ?, ?)",
            [(a, a, 20 if a == 5 else 10) for a in range(1, 6)],
        )
    url = f"sqlite:///{game}"
    outbox = await SqliteOutbox.open(tmp_path / "outbox.db")
    watchers = [
        Watcher(config, outbox, Metrics(), note=lambda _: None, server_ids=[SERVER])
        for config in (registrations(url), level20(url, players_per_poll=2))
    ]
    try:
        await watchers[0].poll()
        milestones = watchers[1]

        async def qualified_after_a_poll() -> list[str]:
            await milestones.poll()
            stored = await outbox.select(EventFilter(event="qualified"), 10)
            return sorted(r.server_event_id for r in stored)

        assert [await qualified_after_a_poll() for _ in range(3)] == [[], [], ["qual-5-level20"]]
        assert milestones.state.players_watched == 4  # 5 qualified: watched no more
        with game_db(game) as db:
            db.execute("UPDATE characters SET level = 20 WHERE account = 1")
        assert await qualified_after_a_poll() == ["qual-1-level20", "qual-5-level20"]
        assert milestones.state.players_watched == 3
    finally:
        for watcher in watchers:
            await watcher.close()
        await outbox.close()


async def test_a_player_posted_by_the_web_page_and_seen_by_the_watcher_is_stored_once(
    tmp_path: Path, start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    game = tmp_path / "game.db"
    make_game(game, accounts=10)
    relay = await start_relay(game_sources=(registrations(f"sqlite:///{game}"),))
    # The registration page POSTs as the PHP example does, with the examples' key...
    page = {
        "event": "registered",
        "token": token_of(7),
        "referee_identity": "7",
        "server_event_id": "reg-7",
    }
    status, answer = await relay.post(page)
    assert status == 202, answer
    refer(game, [7, 8])  # ...and its referral row is what the watcher reads
    state = await eventually(lambda: _stored_cursor(relay, 2), what="the watcher past both rows")
    assert state["events_stored"] == 1  # player 8; player 7 was already stored
    assert len(await relay.handle.outbox.select(EventFilter(token=token_of(7)))) == 1
    await eventually(lambda: len(delivered_keys(sandbox)) == 2, what="both delivered")
    assert delivered_keys(sandbox) == Counter(
        {("registered", "reg-7"): 1, ("registered", "reg-8"): 1}
    )
    assert sandbox.sandbox.snapshot()["duplicates"] == 0
    # Each event says who reported it: the page's POST, or the watcher.
    [seven] = await relay.handle.outbox.select(EventFilter(token=token_of(7)))
    [eight] = await relay.handle.outbox.select(EventFilter(token=token_of(8)))
    assert (seven.reported_by, eight.reported_by) == (None, "registrations")
    _, story = await relay.get("/v1/players/8")
    assert [e["reported_by"] for e in story["events"]] == ["registrations"]
    code, out, err = await cli("player", "8", "--url", relay.url)
    assert code == 0, out + err
    assert "registered (source registrations)" in out
    async with relay.http.get(relay.url + f"/ui/events/{eight.id}") as resp:
        page = await resp.text()
    assert 'id="reported-by">source registrations <small>' in page


async def _stored_cursor(relay: Any, cursor: int) -> dict[str, Any] | None:
    state = await source_status(relay, "registrations")
    return state if state["cursor"] == json.dumps(cursor) else None


async def test_a_bad_row_is_rejected_by_name_and_the_rows_after_it_go_on(
    tmp_path: Path, start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    game = tmp_path / "game.db"
    make_game(game, accounts=10)
    with game_db(game) as db:
        db.executemany(
            "INSERT INTO mmolove_referrals (account, token) VALUES (?, ?)",
            [(1, token_of(1)), (2, ""), (3, "bad\x07token"), (4, "x" * 600), (5, token_of(5))],
        )
    relay = await start_relay(game_sources=(registrations(f"sqlite:///{game}"),))
    await eventually(lambda: len(delivered_keys(sandbox)) == 2, what="the two good rows")
    assert set(delivered_keys(sandbox)) == {("registered", "reg-1"), ("registered", "reg-5")}

    async def three_rejected() -> list[Any] | None:
        from relay.store.contract_records import RejectedFilter

        rows = await relay.handle.outbox.records.rejections(RejectedFilter())
        return rows if len(rows) == 3 else None

    rejected = await eventually(three_rejected, what="three rejections recorded")
    assert {r.referee_identity for r in rejected} == {"2", "3", "4"}
    assert all(r.peer == "source registrations" for r in rejected)
    assert all(r.message.startswith("source registrations: ") for r in rejected)
    state = await source_status(relay, "registrations")
    assert state["rejected"] == 3
    assert json.loads(state["cursor"]) == 5


async def test_a_writing_query_fails_with_a_clear_error_and_the_source_shows_failing(
    tmp_path: Path, start_relay: StartRelay
) -> None:
    game = tmp_path / "game.db"
    make_game(game, accounts=3)
    writer = replace(
        registrations(f"sqlite:///{game}"),
        query="INSERT INTO account (id, username) VALUES (:cursor + 100, 'x') RETURNING"
        " id AS cursor, id AS referee_identity, username AS token, :limit AS l",
    )
    relay = await start_relay(game_sources=(writer,))
    state = await eventually(lambda: _failing(relay, "registrations"), what="failing")
    assert state["reason"] == "write"
    assert "tried to write" in state["last_error"]
    with game_db(game) as db:
        assert db.execute("SELECT COUNT(*) FROM account").fetchone()[0] == 3


async def _failing(relay: Any, name: str) -> dict[str, Any] | None:
    state = await source_status(relay, name)
    return state if state["state"] == "failing" else None


# -- PostgreSQL: as a game's database, and as the outbox --------------------------------------


@pytest.fixture
async def pg_game(pg_server: PgServer) -> Any:
    """A game database on the PostgreSQL server, with a user granted SELECT only."""
    name = "game_" + secrets.token_hex(5)
    user, password = "reader_" + secrets.token_hex(4), "rd-pw-" + secrets.token_hex(8)
    async with admin(pg_server) as db:
        await db.execute(f'CREATE DATABASE "{name}"')
        await db.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
    url = with_database(pg_server.url, name)
    db = await asyncpg.connect(url, password=pg_server.password)
    try:
        await db.execute(
            "CREATE TABLE account (id INTEGER PRIMARY KEY);"
            "CREATE TABLE mmolove_referrals (id SERIAL PRIMARY KEY, account INTEGER NOT NULL,"
            " token TEXT NOT NULL);"
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {user};"
        )
        await db.execute("INSERT INTO account SELECT generate_series(1, 1000)")
        reader = url.replace(url.split("://")[1].split("@")[0], user, 1)
        yield db, reader, Secret(password)
    finally:
        await db.close()
        async with admin(pg_server) as a:
            await a.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            await a.execute(f"DROP ROLE {user}")


async def test_a_postgresql_game_database_300_of_1000(
    pg_game: Any, start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    db, url, password = pg_game
    referred = list(range(7, 1001, 3))[:300]
    await db.executemany(
        "INSERT INTO mmolove_referrals (account, token) VALUES ($1, $2)",
        [(a, token_of(a)) for a in referred],
    )
    relay = await start_relay(game_sources=(registrations(url, password=password),))
    await eventually(lambda: len(delivered_keys(sandbox)) == 300, timeout_s=20, what="300")
    assert delivered_keys(sandbox) == Counter({("registered", f"reg-{a}"): 1 for a in referred})
    assert await relay.handle.outbox.count(EventFilter(event="registered")) == 300


async def test_a_wrong_password_is_clear_and_never_shown(
    pg_game: Any, start_relay: StartRelay, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url, _ = pg_game
    wrong = "wrong-pw-" + secrets.token_hex(6)
    relay = await start_relay(game_sources=(registrations(url, password=Secret(wrong)),))
    state = await eventually(lambda: _failing(relay, "registrations"), what="failing")
    assert state["reason"] == "credentials"
    assert "refused the relay's credentials" in state["last_error"]
    _, status = await relay.get("/v1/status")
    text = await (await relay.http.get(relay.url + "/metrics")).text()
    assert 'mmolove_relay_source_polls_total{result="credentials",source="registrations"}' in text
    captured = capsys.readouterr()
    for output in (json.dumps(status), text, captured.out, captured.err):
        assert wrong not in output


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_events_and_cursor_commit_together(
    backend: str, tmp_path: Path, pg_url: str, pg_password: str | None
) -> None:
    from relay.events import validate

    outbox: Any
    if backend == "sqlite":
        outbox = await SqliteOutbox.open(tmp_path / "outbox.db")
    else:
        outbox = await PostgresOutbox.open(pg_url, where="test", password=pg_password)
    try:
        assert await outbox.source_cursor("reg") is None
        event = validate(
            {"event": "registered", "token": token_of(1), "referee_identity": "1",
             "server_event_id": "reg-1", "server_id": SERVER},
            server_ids=[SERVER], allow_extra_fields=False, now=1.8e9,
        )  # fmt: skip
        [added] = await outbox.add_polled([event], 1.8e9, source="reg", cursor="41")
        assert added.created
        [again] = await outbox.add_polled([event], 1.8e9, source="reg", cursor='"2026-12-07"')
        assert not again.created
        assert await outbox.source_cursor("reg") == '"2026-12-07"'
        assert await outbox.watched_players(SERVER, 0) == [("1", token_of(1))]
        assert await outbox.watched_players(SERVER, 1.9e9) == []
    finally:
        await outbox.close()


async def test_try_prints_what_it_would_store_and_stores_nothing(
    tmp_path: Path, settings: Settings
) -> None:
    game = tmp_path / "game.db"
    make_game(game, accounts=5)
    refer(game, [1, 2])
    outbox = await SqliteOutbox.open(tmp_path / "outbox.db")
    try:
        _, found = await try_once(registrations(f"sqlite:///{game}"), outbox, [SERVER])
        assert [json.loads(e.body)["server_event_id"] for e in found.events] == ["reg-1", "reg-2"]
        assert await outbox.count(EventFilter()) == 0
        assert await outbox.source_cursor("registrations") is None
    finally:
        await outbox.close()


async def test_a_database_locked_marks_the_source_failing_then_it_resumes_missing_nothing(
    tmp_path: Path, start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    game = tmp_path / "game.db"
    make_game(game, accounts=20)
    refer(game, [1, 2])
    source = registrations(f"sqlite:///{game}", statement_timeout_s=0.3)
    relay = await start_relay(game_sources=(source,))
    await eventually(lambda: _stored_cursor(relay, 2), what="the first two rows")
    with game_db(game) as holder:  # the game holds its database: no reader gets in
        holder.execute("BEGIN EXCLUSIVE")
        holder.executemany(
            "INSERT INTO mmolove_referrals (account, token) VALUES (?, ?)",
            [(a, token_of(a)) for a in (3, 4, 5)],  # registered while the relay cannot read
        )
        state = await eventually(lambda: _failing(relay, "registrations"), what="failing")
        assert state["reason"] in ("unavailable", "timeout")
        assert "database is locked" in state["last_error"]
        holder.execute("COMMIT")
    state = await eventually(lambda: _stored_cursor(relay, 5), timeout_s=15, what="resumed")
    assert state["state"] == "ok"
    await eventually(lambda: len(delivered_keys(sandbox)) == 5, what="all five delivered")
    assert delivered_keys(sandbox) == Counter({("registered", f"reg-{a}"): 1 for a in range(1, 6)})


async def test_the_console_overview_names_each_source_and_its_state(
    tmp_path: Path, start_relay: StartRelay
) -> None:
    game = tmp_path / "game.db"
    make_game(game, accounts=3)
    refer(game, [1])
    broken = replace(level20(f"sqlite:///{tmp_path / 'missing.db'}"), name="level20-broken")
    relay = await start_relay(game_sources=(registrations(f"sqlite:///{game}"), broken))
    await eventually(lambda: _stored_cursor(relay, 1), what="the registration stored")
    await eventually(lambda: _failing(relay, "level20-broken"), what="the broken one failing")
    async with relay.http.get(relay.url + "/ui/") as resp:
        assert resp.status == 200
        page = await resp.text()
    table = page[page.index('<table id="sources">') :]
    table = table[: table.index("</table>")]
    assert "registrations <small>sqlite:///" in table
    assert '<span class="state ok">ok</span>' in table
    assert '<span class="state failing">failing</span>' in table
    assert "cannot be reached" in table

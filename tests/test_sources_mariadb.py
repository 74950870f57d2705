"""The AzerothCore recipe in a running relay against a real MariaDB: 1,000 accounts, 300
of them referred, 100,000 characters. Exactly the 300 registrations are delivered, once
each; the level-20 milestone qualifies each referred player past it once, after its
registered; and the database's own statement log shows each poll examined only the
referred players' rows, through the account index."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from relay.config.loading import load_settings
from relay.config.settings import Settings
from relay.config.sources import SourceConfig
from relay.config.values import Secret
from relay.sandbox import RunningSandbox
from relay.store.contract import EventFilter
from tests.alert_receiver import alerting, receiving
from tests.mariadb import GameDatabase, MariaDb
from tests.support import SECRET, SERVER, StartRelay, eventually, freeze, registered
from tests.test_sources import _failing, source_status

RECIPE = Path(__file__).parent.parent / "examples" / "sources" / "azerothcore.toml"
REFERRALS = Path(__file__).parent.parent / "examples" / "sources" / "referrals.sql"
CHARACTERS = 100_000  # two per account for accounts 1..50,000
# azerothcore-wotlk data/sql/base/db_characters/characters.sql, trimmed to what it reads
CREATE_CHARACTERS = (
    "CREATE TABLE characters (guid INT UNSIGNED NOT NULL DEFAULT 0, "
    "account INT UNSIGNED NOT NULL DEFAULT 0, level TINYINT UNSIGNED NOT NULL DEFAULT 0, "
    "totaltime INT UNSIGNED NOT NULL DEFAULT 0, "
    "PRIMARY KEY (guid), KEY idx_account (account)) ENGINE=InnoDB"
)
# Character seq belongs to account (seq + 1) DIV 2; its level is (account * 7) % 80 + 1.
FILL = (
    "INSERT INTO characters SELECT seq, (seq + 1) DIV 2, ((seq + 1) DIV 2 * 7) % 80 + 1, 0 "
    f"FROM seq_1_to_{CHARACTERS}"
)


def _referred(n: int) -> bool:
    return n % 10 in (0, 3, 7)  # 300 of accounts 1..1000


def _registrations(
    game: GameDatabase, *, interval_s: float, statement_timeout_s: float
) -> SourceConfig:
    """A registration watcher over the referral table of referrals.sql."""
    return SourceConfig(
        name="registrations",
        produces="registered",
        url=game.url,
        password=Secret(game.password),
        query="SELECT id AS `cursor`, referee_identity, token FROM mmolove_referral"
        " WHERE id > :cursor ORDER BY id LIMIT :limit",
        server_id=SERVER,
        interval_s=interval_s,
        statement_timeout_s=statement_timeout_s,
    )


def _recipe(tmp_path: Path, game: GameDatabase) -> Path:
    """The recipe as an operator would adapt it: their URL, password file and intervals;
    the registration watcher and the level-20 milestone."""
    (tmp_path / "game.password").write_text(game.password + "\n")
    text = RECIPE.read_text()
    text = re.sub(r'url = "mysql://[^"]*"', f'url = "{game.url}"', text)
    text = re.sub(r'password_file = "[^"]*"', f'password_file = "{tmp_path}/game.password"', text)
    text = re.sub(r"interval_s = \d+", "interval_s = 0.2", text)
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


@pytest.mark.timeout(120)
async def test_the_azerothcore_recipe_in_a_relay(
    tmp_path: Path, game_db: GameDatabase, start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    statements = [s for s in REFERRALS.read_text().split(";") if "CREATE TABLE" in s]
    await game_db.run(*statements, CREATE_CHARACTERS, FILL)
    referred = [n for n in range(1, 1001) if _referred(n)]
    await game_db.load(
        "INSERT INTO mmolove_referral (referee_identity, token) VALUES (%s, %s)",
        [(str(n), f"tok-{n:05d}-mariadb") for n in referred],
    )
    loaded = load_settings(
        {"MMOLOVE_SERVER_ID": SERVER, "MMOLOVE_SECRET": SECRET}, _recipe(tmp_path, game_db)
    )
    sources = tuple(s for s in loaded.game_sources if s.name != "acore-10-hours")
    assert [s.name for s in sources] == ["acore-registrations", "acore-level-20"]
    relay = await start_relay(game_sources=tuple(replace(s, interval_s=0.2) for s in sources))
    level20 = {n for n in referred if (n * 7) % 80 + 1 >= 20}
    total = len(referred) + len(level20)

    def delivered() -> Counter[str]:
        return Counter(r["server_event_id"] for r in sandbox.sandbox.snapshot()["accepted"])

    await eventually(lambda: sum(delivered().values()) == total, timeout_s=60, what="delivered")
    expected = {f"reg-{n}" for n in referred} | {f"qual-{n}-level-20" for n in level20}
    assert set(delivered()) == expected
    assert set(delivered().values()) == {1}
    order = [r["server_event_id"] for r in sandbox.sandbox.snapshot()["accepted"]]
    assert all(order.index(f"reg-{n}") < order.index(f"qual-{n}-level-20") for n in level20)
    assert await relay.handle.outbox.count(EventFilter(event="qualified")) == len(level20)
    # MariaDB's own log: each milestone poll examined the referred players' rows only
    # (two characters each), never the 100,000-row table.
    examined = await game_db.examined("FROM characters")
    assert examined, "the statement log holds no milestone poll"
    assert max(examined) <= 2 * len(referred), examined


@pytest.mark.long
@pytest.mark.timeout(120)
async def test_a_database_stopped_10_s_fails_alerts_and_resumes_missing_nothing(
    private_mariadb: MariaDb, start_relay: StartRelay, settings: Settings, sandbox: RunningSandbox
) -> None:
    game = await private_mariadb.create_database()
    statements = [s for s in REFERRALS.read_text().split(";") if "CREATE TABLE" in s]
    await game.run(*statements)
    insert = "INSERT INTO mmolove_referral (referee_identity, token) VALUES (%s, %s)"
    await game.load(insert, [(str(n), f"tok-{n:05d}-restart") for n in range(1, 6)])
    source = _registrations(game, interval_s=0.2, statement_timeout_s=1.0)

    def delivered() -> set[str]:
        return {r["server_event_id"] for r in sandbox.sandbox.snapshot()["accepted"]}

    async with receiving() as receiver:
        relay = await start_relay(
            alerting(settings, receiver, alert_after_s=2.0), game_sources=(source,)
        )
        await eventually(lambda: len(delivered()) == 5, what="the first five")
        hooks = receiver.got.setdefault("webhook", [])
        private_mariadb.stop()
        stopped = time.monotonic()
        state = await eventually(lambda: _failing(relay, "registrations"), what="failing")
        assert state["reason"] == "unavailable"
        assert (
            "MySQL server" in state["last_error"]
        )  # the driver's own words: lost, or can't connect
        assert game.password not in json.dumps(state)
        await eventually(
            lambda: any(h["alert"] == "source:registrations" for h in hooks),
            timeout_s=10,
            what="alert",
        )
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
        private_mariadb.start()
        await game.load(insert, [(str(n), f"tok-{n:05d}-restart") for n in range(6, 11)])
        await eventually(lambda: len(delivered()) == 10, timeout_s=30, what="all ten")
        assert delivered() == {f"reg-{n}" for n in range(1, 11)}
        await eventually(
            lambda: any(h["status"] == "resolved" for h in hooks),
            timeout_s=10,
            what="the alert resolved",
        )
    assert (await source_status(relay, "registrations"))["state"] == "ok"


@pytest.mark.timeout(120)
async def test_a_frozen_database_holds_up_neither_ingest_nor_delivery(
    private_mariadb: MariaDb, start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    game = await private_mariadb.create_database()
    await game.run(*[s for s in REFERRALS.read_text().split(";") if "CREATE TABLE" in s])
    # The poll waits statement_timeout_s on a frozen server.
    source = _registrations(game, interval_s=0.1, statement_timeout_s=20.0)
    relay = await start_relay(game_sources=(source,))
    await eventually(lambda: _polled(relay), what="a first poll")
    assert private_mariadb.process is not None
    await freeze(private_mariadb.process.pid)  # it takes connections, never answers
    try:
        await asyncio.sleep(0.5)  # the next poll has started and hangs
        polls = (await source_status(relay, "registrations"))["polls"]
        ids = []
        for n in range(20):
            status, answer = await relay.post(registered(f"tok-frozen-{n:02d}", f"http-{n}"))
            assert status == 202, answer
            ids.append(answer["id"])
        await relay.wait_finished(ids)  # delivered while the poll still hangs
        assert (await source_status(relay, "registrations"))["polls"] == polls
    finally:
        private_mariadb.process.send_signal(signal.SIGCONT)


async def _polled(relay: object) -> bool:
    return bool((await source_status(relay, "registrations"))["polls"] > 0)

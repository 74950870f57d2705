"""The recipes in examples/sources/, each run against a real MariaDB holding its emulator's
tables: the registration query pages through exactly the referred players in cursor order,
the milestone queries name only referred players past the milestone, through the index.

The game tables below keep only the columns the recipes read, plus the key columns and the
index as each project publishes them (the files named in each recipe's header).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.config.values import Secret
from relay.sources.database import connect
from relay.sources.statements import bind, parameter_names, single_select
from tests.mariadb import GameDatabase

RECIPES = Path(__file__).parent.parent / "examples" / "sources"
ACCOUNTS = 1_000  # accounts 1..1000 hold the players under test
CHARACTERS = 100_000  # two per account: the test's accounts, then 49,000 more
PAGE = 64
CHUNK = 100  # players per milestone query, as the relay binds them in chunks


@dataclass(frozen=True)
class Emulator:
    recipe: str
    create: str  # the game's table, trimmed to what the recipes read
    # SQL over MariaDB's seq_1_to_N (column seq) filling CHARACTERS rows: character seq of
    # account (seq + 1) DIV 2; odd ones levelled, even ones new (see expected_* below)
    fill: str
    index: str  # the published index on the account column
    identity: str  # SQL of the account's identity from the account number `n`

    def player(self, n: int) -> str:
        return f"player{n}" if "CONCAT" in self.identity else str(n)


ACCOUNT = "((seq + 1) DIV 2)"
LEVEL = f"IF(seq % 2 = 1, ({ACCOUNT} * 7) % 80 + 1, 1 + {ACCOUNT} % 5)"
SECONDS = f"IF(seq % 2 = 1, ({ACCOUNT} * 37 % 20) * 3600, 1800)"

EMULATORS = [
    Emulator(
        "azerothcore.toml",
        # azerothcore-wotlk data/sql/base/db_characters/characters.sql (TrinityCore alike)
        "CREATE TABLE characters (guid INT UNSIGNED NOT NULL DEFAULT 0, "
        "account INT UNSIGNED NOT NULL DEFAULT 0, name VARCHAR(12) NOT NULL, "
        "level TINYINT UNSIGNED NOT NULL DEFAULT 0, totaltime INT UNSIGNED NOT NULL DEFAULT 0, "
        "PRIMARY KEY (guid), KEY idx_account (account)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        f"INSERT INTO characters SELECT seq, {ACCOUNT}, CONCAT('c', seq), {LEVEL}, {SECONDS} "
        f"FROM seq_1_to_{CHARACTERS}",
        "idx_account",
        "n",
    ),
    Emulator(
        "rathena.toml",
        # rathena sql-files/main.sql
        "CREATE TABLE `char` (char_id INT UNSIGNED NOT NULL AUTO_INCREMENT, "
        "account_id INT UNSIGNED NOT NULL DEFAULT 0, name VARCHAR(30) NOT NULL DEFAULT '', "
        "base_level SMALLINT UNSIGNED NOT NULL DEFAULT 1, PRIMARY KEY (char_id), "
        "KEY account_id (account_id)) ENGINE=MyISAM",
        f"INSERT INTO `char` SELECT seq, {ACCOUNT}, CONCAT('c', seq), {LEVEL} "
        f"FROM seq_1_to_{CHARACTERS}",
        "account_id",
        "n",
    ),
    Emulator(
        "l2j-mobius.toml",
        # L2J Mobius dist/db_installer/sql/game/characters.sql
        "CREATE TABLE characters (account_name VARCHAR(45) DEFAULT NULL, "
        "charId INT UNSIGNED NOT NULL DEFAULT 0, char_name VARCHAR(35) NOT NULL, "
        "level TINYINT UNSIGNED DEFAULT NULL, onlinetime INT DEFAULT NULL, "
        "PRIMARY KEY (charId), KEY account_name (account_name)) ENGINE=InnoDB DEFAULT CHARSET=utf8",
        f"INSERT INTO characters SELECT CONCAT('player', {ACCOUNT}), seq, CONCAT('c', seq), "
        f"{LEVEL}, {SECONDS} FROM seq_1_to_{CHARACTERS}",
        "account_name",
        "CONCAT('player', n)",
    ),
]


def referred(n: int) -> bool:
    return n % 10 in (0, 3, 7)  # 300 of the 1,000


def registration_order() -> list[int]:
    """The referred accounts in the order they registered: not the accounts' order."""
    return sorted((n for n in range(1, ACCOUNTS + 1) if referred(n)), key=lambda n: (n * 13) % 1009)


def expected(milestone: str) -> set[int]:
    """Referred accounts past the milestone, from the same formulas as the table's fill."""
    kind, _, amount = milestone.partition("-")
    past = set()
    for n in range(1, ACCOUNTS + 1):
        levelled, new = (n * 7) % 80 + 1, 1 + n % 5
        hours = (n * 37 % 20) + 0.5
        if referred(n) and (max(levelled, new) if kind == "level" else hours) >= int(amount):
            past.add(n)
    return past


def sources(emulator: Emulator) -> list[dict[str, Any]]:
    recipe: list[dict[str, Any]] = tomllib.loads((RECIPES / emulator.recipe).read_text())["sources"]
    return recipe


@pytest.mark.parametrize("emulator", EMULATORS, ids=lambda e: e.recipe)
def test_each_recipe_is_well_formed(emulator: Emulator):
    recipe = sources(emulator)
    assert [s["produces"] for s in recipe].count("registered") == 1
    assert "qualified" in [s["produces"] for s in recipe]
    assert len({s["name"] for s in recipe}) == len(recipe)
    for source in recipe:
        assert source["url"].startswith("mysql://mmolove_reader@")
        assert source["password_file"]
        assert single_select(source["query"]) is None
        if source["produces"] == "registered":
            assert parameter_names(source["query"], "mysql") == {"cursor", "limit"}
        else:
            assert parameter_names(source["query"], "mysql") == {"players"}
            assert source["milestone"]
    header = (RECIPES / emulator.recipe).read_text().split("[[sources]]")[0]
    referrals = (RECIPES / "referrals.sql").read_text()
    table = re.sub(r"--[^\n]*", "", referrals[referrals.index("CREATE") : referrals.index(";") + 1])
    # the recipe's comment shows the same CREATE TABLE as the .sql file beside it
    shown = " ".join(line.strip("# ") for line in header.splitlines() if line.startswith("#  "))
    assert " ".join(table.replace("IF NOT EXISTS ", "").split()) in " ".join(shown.split())
    assert "->execute([" in header  # the one PHP line that fills it


@pytest.mark.parametrize("emulator", EMULATORS, ids=lambda e: e.recipe)
async def test_each_recipe_runs_against_its_tables_in_mariadb(
    emulator: Emulator, game_db: GameDatabase
):
    await game_db.run(
        (RECIPES / "referrals.sql").read_text().split(";")[0],
        emulator.create,
        emulator.fill,
    )
    order = registration_order()
    await game_db.load(
        "INSERT INTO mmolove_referral (referee_identity, token) VALUES (%s, %s)",
        [(emulator.player(n), f"mmref-{n}") for n in order],
    )
    recipe = sources(emulator)
    db = await connect(game_db.url, password=Secret(game_db.password), statement_timeout_s=5)
    try:
        registration = next(s for s in recipe if s["produces"] == "registered")
        seen = await _page(db, registration["query"])
        assert [row["referee_identity"] for row in seen] == [emulator.player(n) for n in order]
        assert [row["token"] for row in seen] == [f"mmref-{n}" for n in order]
        assert [row["cursor"] for row in seen] == sorted({row["cursor"] for row in seen})
        assert all(isinstance(row["ts"], int) and row["ts"] > 1_700_000_000 for row in seen)

        players = [emulator.player(n) for n in order]
        for milestone in (s for s in recipe if s["produces"] == "qualified"):
            found: list[str] = []
            for at in range(0, len(players), CHUNK):
                rows = await db.fetch(milestone["query"], {"players": players[at : at + CHUNK]})
                assert all(list(row) == ["referee_identity"] for row in rows)
                found += [str(row["referee_identity"]) for row in rows]
            want = sorted(emulator.player(n) for n in expected(milestone["milestone"]))
            assert 0 < len(want) < len(players)
            assert sorted(found) == want, milestone["name"]
    finally:
        await db.close()


@pytest.mark.parametrize("emulator", EMULATORS, ids=lambda e: e.recipe)
async def test_each_milestone_query_reads_only_the_players_it_names_through_the_index(
    emulator: Emulator, game_db: GameDatabase
):
    """EXPLAIN names the published index; the statement log shows the rows examined: two
    characters per player named, not the 100,000 of the table."""
    await game_db.run(emulator.create, emulator.fill, "ANALYZE TABLE " + _table(emulator))
    players = [emulator.player(n) for n in registration_order()[:CHUNK]]
    db = await connect(game_db.url, password=Secret(game_db.password), statement_timeout_s=5)
    try:
        for milestone in (s for s in sources(emulator) if s["produces"] == "qualified"):
            sql, values = bind(milestone["query"], {"players": players}, "mysql")
            async with game_db.server.admin(game_db.name) as cursor:
                await cursor.execute("EXPLAIN " + sql, values)
                columns = [column[0] for column in cursor.description]
                plan = [dict(zip(columns, row, strict=True)) for row in await cursor.fetchall()]
            assert [(step["key"], step["type"]) for step in plan] == [(emulator.index, "range")]
            assert int(plan[0]["rows"]) < CHARACTERS / 100

            await db.fetch(milestone["query"], {"players": players})
            examined = await game_db.examined(f"IN ('{players[0]}', '{players[1]}'")
            assert examined, "the statement log holds the query"
            assert examined[-1] <= 2 * len(players), examined  # measured: exactly 200
    finally:
        await db.close()


async def _page(db: Any, query: str) -> list[dict[str, object]]:
    """Every row, a page at a time, the cursor handed back as text as the relay keeps it."""
    rows: list[dict[str, object]] = []
    cursor: object = 0
    while page := await db.fetch(query, {"cursor": cursor, "limit": PAGE}):
        assert len(page) <= PAGE
        rows += page
        cursor = str(page[-1]["cursor"])
    return rows


def _table(emulator: Emulator) -> str:
    return emulator.create.split("(")[0].removeprefix("CREATE TABLE ").strip()

"""A source's query text: :name parameters bound per driver, and the single-SELECT check."""

from __future__ import annotations

import pytest

from relay.sources.statements import (
    Dialect,
    bind,
    dialect_of,
    parameter_names,
    single_select,
)

QUERY = "SELECT guid FROM characters WHERE guid > :cursor AND account IN (:players) LIMIT :limit"
PARAMS = {"cursor": 7, "players": ["7842", "12"], "limit": 100}


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        ("sqlite", "guid > ? AND account IN (?, ?) LIMIT ?"),
        ("postgresql", "guid > $1 AND account IN ($2, $3) LIMIT $4"),
        ("mysql", "guid > %s AND account IN (%s, %s) LIMIT %s"),
    ],
)
def test_each_driver_gets_its_own_placeholders_and_a_list_expands(dialect: Dialect, sql: str):
    text, values = bind(QUERY, PARAMS, dialect)
    assert text == "SELECT guid FROM characters WHERE " + sql
    assert values == [7, "7842", "12", 100]


@pytest.mark.parametrize(
    ("dialect", "query"),
    [
        ("postgresql", "SELECT level::text, 'at :noon' FROM t -- :gone\nWHERE a = :x"),
        ("postgresql", "SELECT $$ :dollar $$, $tag$ :tagged $tag$ FROM t WHERE a = :x"),
        ("postgresql", 'SELECT "odd:name", a[lo:hi] FROM t /* :block */ WHERE a = :x'),
        ("mysql", "SELECT 'it\\'s :quoted', `odd:name` FROM t # :hash\nWHERE a = :x"),
        ("sqlite", "SELECT 'it''s :quoted', \"odd:name\" FROM t WHERE a = :x"),
    ],
)
def test_colons_in_literals_comments_and_casts_are_not_parameters(dialect: Dialect, query: str):
    assert parameter_names(query, dialect) == {"x"}
    text, values = bind(query, {"x": 1}, dialect)
    assert values == [1]
    assert text.count(":") == query.count(":") - 1  # only :x went


def test_a_literal_percent_survives_pymysql_formatting():
    query = "SELECT name FROM t WHERE name LIKE 'a%' AND id > :cursor"
    text, _ = bind(query, {"cursor": 1}, "mysql")
    assert text == "SELECT name FROM t WHERE name LIKE 'a%%' AND id > %s"
    assert bind("SELECT 'a%'", {}, "sqlite")[0] == "SELECT 'a%'"


def test_an_empty_list_matches_nothing_instead_of_breaking_the_syntax():
    assert bind("SELECT 1 FROM t WHERE a IN (:players)", {"players": []}, "mysql") == (
        "SELECT 1 FROM t WHERE a IN (NULL)",
        [],
    )


def test_a_parameter_the_relay_does_not_give_is_named():
    with pytest.raises(ValueError, match=r"uses :player, .* \(it gives :limit, :players\)"):
        bind("SELECT 1 WHERE a IN (:player)", {"players": ["1"], "limit": 5}, "sqlite")


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("mysql://reader@127.0.0.1:3306/acore_characters", "mysql"),
        ("postgresql://reader@db/game", "postgresql"),
        ("postgres://reader@db/game", "postgresql"),
        ("sqlite:////var/lib/game.db", "sqlite"),
        ("mssql://reader@db/game", None),
        ("/var/lib/game.db", None),
    ],
)
def test_the_dialect_comes_from_the_url_scheme(url: str, dialect: Dialect | None):
    assert dialect_of(url) == dialect


@pytest.mark.parametrize(
    "query",
    [
        QUERY,
        QUERY + ";\n",
        "  (SELECT 1)",
        "WITH r AS (SELECT id FROM referrals) SELECT id FROM r",
        "SELECT 'UPDATE; DELETE' AS words, REPLACE(name, 'a', 'b') FROM t",
        "SELECT 1 -- ; DROP TABLE t",
    ],
)
def test_a_single_select_passes(query: str):
    assert single_select(query) is None


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("", "it is empty"),
        ("SELECT 1; DELETE FROM t", "it holds several statements"),
        ("UPDATE t SET a = 1", "it starts with UPDATE, not SELECT or WITH"),
        ("CALL refresh()", "it starts with CALL"),
        ("SELECT * INTO OUTFILE '/tmp/x' FROM t", "it has INTO"),
        ("SELECT id INTO @last FROM t", "it has INTO"),
        ("SELECT * FROM t FOR UPDATE", "it locks the rows it reads (FOR UPDATE)"),
        ("SELECT * FROM t LOCK IN SHARE MODE", "it locks the rows it reads (LOCK IN SHARE MODE)"),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "it contains DELETE"),
    ],
)
def test_anything_else_is_refused_with_the_reason(query: str, why: str):
    reason = single_select(query, "postgresql" if "RETURNING" in query else "mysql")
    assert reason is not None
    assert reason.startswith(why)

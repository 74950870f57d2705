"""``[[sources]]`` in the configuration: each entry checked, errors naming the source, the
password masked everywhere, and check-config refusing a query that is not one SELECT."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from relay.config.loading import load_settings
from relay.config.report import describe
from relay.errors import ConfigError
from tests.support import cli

BASE = {"MMOLOVE_SERVER_ID": "srv-9", "MMOLOVE_SECRET": "s3cr3t-for-the-config-tests"}
REGISTRATIONS = (
    "SELECT id AS cursor, account AS referee_identity, token FROM mmolove_referrals"
    " WHERE id > :cursor ORDER BY id LIMIT :limit"
)
LEVEL20 = "SELECT account AS referee_identity FROM characters WHERE account IN (:players)"
PASSWORD = "game-db-pass-7f3a9c"


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(body, encoding="utf-8")
    return path


def _source(**keys: object) -> str:
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in keys.items())
    return f"[[sources]]\n{lines}\n"


def _load(tmp_path: Path, *entries: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return load_settings(environ or BASE, _config(tmp_path, "\n".join(entries)))


def test_both_kinds_load_with_their_defaults(tmp_path: Path) -> None:
    secret = tmp_path / "game.password"
    secret.write_text(PASSWORD + "\n")
    settings = _load(
        tmp_path,
        _source(
            name="registrations",
            produces="registered",
            url="mysql://relay@127.0.0.1:3306/acore_auth",
            password_file=str(secret),
            query=REGISTRATIONS,
        ),
        _source(
            name="level20",
            produces="qualified",
            milestone="level20",
            url="sqlite:////srv/game/characters.db",
            query=LEVEL20,
            interval_s=30,
        ),
    )
    reg, lvl = settings.game_sources
    assert (reg.name, reg.produces, reg.server_id, reg.interval_s) == (
        "registrations",
        "registered",
        "srv-9",
        10.0,
    )
    assert reg.statement_timeout_s == 5.0
    assert reg.password is not None
    assert reg.password.reveal() == PASSWORD
    assert (lvl.milestone, lvl.interval_s, lvl.start_cursor) == ("level20", 30.0, 0)
    assert lvl.players_per_poll == 1000
    shown = json.dumps(describe(settings))
    assert PASSWORD not in shown
    assert "registrations" in shown
    assert "level20" in shown


def test_a_password_in_the_url_is_masked(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        _source(
            name="reg",
            produces="registered",
            url=f"mysql://relay:{PASSWORD}@db.internal:3306/auth",
            query=REGISTRATIONS,
        ),
    )
    shown = json.dumps(describe(settings))
    assert PASSWORD not in shown
    assert "***@db.internal:3306" in shown


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        ({"produces": "registered"}, "sources[0] has name None"),
        ({"name": "a b", "produces": "registered"}, "sources[0] has name 'a b'"),
        ({"name": "reg", "produces": "joined"}, "source reg has produces = 'joined'"),
        ({"name": "reg", "produces": "registered", "url": "oracle://x/y"}, "source reg has url"),
        ({"name": "reg", "produces": "registered", "query": " "}, "source reg has no query"),
        (
            {"name": "reg", "produces": "registered", "query": "SELECT 1 FROM t"},
            "does not use :cursor, :limit",
        ),
        (
            {"name": "lvl", "produces": "qualified", "query": LEVEL20},
            "source lvl produces qualified but has milestone None",
        ),
        (
            {
                "name": "lvl",
                "produces": "qualified",
                "query": LEVEL20,
                "milestone": "l20",
                "players_per_poll": 0,
            },
            "source lvl has players_per_poll = 0; give a whole number of players above 0",
        ),
        (
            {"name": "reg", "produces": "registered", "players_per_poll": 100},
            "source reg: only a qualified source takes players_per_poll",
        ),
        (
            {"name": "reg", "produces": "registered", "interval_s": 0},
            "source reg has interval_s = 0",
        ),
        (
            {"name": "reg", "produces": "registered", "server_id": "srv-nope"},
            "source reg has server_id 'srv-nope'",
        ),
    ],
)
def test_a_bad_entry_is_named(tmp_path: Path, keys: dict[str, object], said: str) -> None:
    entry = {"url": "sqlite:////srv/game.db", "query": REGISTRATIONS, **keys}
    with pytest.raises(ConfigError, match=re.escape(said)):
        _load(tmp_path, _source(**entry))


def test_two_sources_of_one_name_are_refused(tmp_path: Path) -> None:
    entry = _source(name="reg", produces="registered", url="sqlite:////g.db", query=REGISTRATIONS)
    with pytest.raises(ConfigError, match="source names repeat in \\[\\[sources\\]\\]: reg"):
        _load(tmp_path, entry, entry)


def test_an_unknown_key_is_a_typo(tmp_path: Path) -> None:
    entry = _source(name="r", produces="registered", url="sqlite:////g.db", query=REGISTRATIONS)
    with pytest.raises(ConfigError, match=r"unknown config key sources\[0\].intervall_s"):
        _load(tmp_path, entry + "intervall_s = 5\n")


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("DELETE FROM mmolove_referrals WHERE id > :cursor LIMIT :limit", "starts with DELETE"),
        (REGISTRATIONS + "; DROP TABLE accounts", "several statements"),
        (REGISTRATIONS + " FOR UPDATE", "locks the rows it reads"),
    ],
)
async def test_check_config_refuses_what_is_not_one_select(
    tmp_path: Path, query: str, why: str
) -> None:
    path = _config(
        tmp_path,
        _source(name="reg", produces="registered", url="mysql://relay@db/auth", query=query),
    )
    code, out, err = await cli("--config", str(path), "check-config", env=BASE)
    assert code == 3, out + err
    assert "the query of source reg is not a single SELECT" in err
    assert why in err


async def test_check_config_shows_sources_masked(tmp_path: Path) -> None:
    secret = tmp_path / "game.password"
    secret.write_text(PASSWORD)
    path = _config(
        tmp_path,
        _source(
            name="reg",
            produces="registered",
            url=f"postgresql://relay:{PASSWORD}@db/game",
            password_file=str(secret),
            query=REGISTRATIONS,
        ),
    )
    code, out, err = await cli("--config", str(path), "check-config", env=BASE)
    assert code == 0, out + err
    assert f"  game_sources = reg   [file {path}]" in out
    assert "  source reg: registered from postgresql://***@db/game every 10 s" in out
    assert "reg" in out
    assert "postgresql://***@db/game" in out
    assert PASSWORD not in out + err

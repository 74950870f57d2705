"""``mmolove-relay sources`` and ``sources try NAME``: what each source has done, as the
daemon tells it, and one read-only poll that prints the events it would store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from relay.sandbox import RunningSandbox
from tests.support import SECRET, SERVER, StartRelay, cli, eventually
from tests.test_sources import make_game, refer, registrations, source_status

ENV = {"MMOLOVE_SERVER_ID": SERVER, "MMOLOVE_SECRET": SECRET}


def _config(tmp_path: Path, game: Path) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        "[[sources]]\n"
        'name = "registrations"\n'
        'produces = "registered"\n'
        f'url = "sqlite:///{game}"\n'
        'query = "SELECT id AS cursor, account AS referee_identity, token'
        ' FROM mmolove_referrals WHERE id > :cursor ORDER BY id LIMIT :limit"\n'
    )
    return path


async def test_sources_lists_each_source_from_the_daemon(
    tmp_path: Path, start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    game = tmp_path / "game.db"
    make_game(game, accounts=5)
    refer(game, [2, 4])
    relay = await start_relay(game_sources=(registrations(f"sqlite:///{game}"),))
    await eventually(lambda: _events_stored(relay, 2), what="the watcher stored both registrations")
    code, out, err = await cli("sources", "--url", relay.url)
    assert code == 0, out + err
    header, row = out.splitlines()[:2]
    assert header.split() == [
        "SOURCE", "PRODUCES", "STATE", "LAST", "POLL", "CURSOR", "ROWS", "STORED", "WATCHED"
    ]  # fmt: skip
    assert row.split()[:3] == ["registrations", "registered", "ok"]
    assert row.split()[-4:] == ["2", "2", "2", "-"]
    code, out, err = await cli("sources", "--json", "--url", relay.url)
    [listed] = json.loads(out)
    assert (listed["name"], listed["cursor"], listed["events_stored"]) == ("registrations", "2", 2)
    code, out, err = await cli("status", "--url", relay.url)
    assert code == 0, out + err
    assert "sources (mmolove-relay sources)" in out


async def _events_stored(relay: object, count: int) -> bool:
    state = await source_status(relay, "registrations")
    return bool(state["events_stored"] == count)


async def test_try_prints_the_events_and_stores_nothing(tmp_path: Path) -> None:
    game = tmp_path / "game.db"
    make_game(game, accounts=5)
    refer(game, [3, 5])
    outbox = tmp_path / "outbox.db"
    env = {**ENV, "MMOLOVE_RELAY_DB": str(outbox)}
    config = str(_config(tmp_path, game))
    code, out, err = await cli("--config", config, "sources", "try", "registrations", env=env)
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith(f"source registrations (sqlite:///{game}): read 2 row(s)")
    assert "Nothing was stored." in lines[0]
    events = [json.loads(line) for line in lines[1:3]]
    assert [(e["event"], e["server_event_id"], e["referee_identity"]) for e in events] == [
        ("registered", "reg-3", "3"),
        ("registered", "reg-5", "5"),
    ]
    assert not outbox.exists()  # not even made
    code, out, err = await cli(
        "--config", config, "sources", "try", "registrations", "--json", env=env
    )
    assert json.loads(out)["cursor"] == "2"
    with sqlite3.connect(game) as db:  # and the game's database untouched
        assert db.execute("SELECT COUNT(*) FROM mmolove_referrals").fetchone()[0] == 2


async def test_try_names_the_sources_there_are(tmp_path: Path) -> None:
    game = tmp_path / "game.db"
    make_game(game, accounts=1)
    config = str(_config(tmp_path, game))
    code, out, err = await cli("--config", config, "sources", "try", "nope", env=ENV)
    assert code == 3, out + err
    assert "no source named 'nope' in [[sources]] (sources: registrations)" in err


async def test_try_reports_a_database_it_cannot_read(tmp_path: Path) -> None:
    config = str(_config(tmp_path, tmp_path / "missing.db"))
    env = {**ENV, "MMOLOVE_RELAY_DB": str(tmp_path / "outbox.db")}
    code, out, err = await cli("--config", config, "sources", "try", "registrations", env=env)
    assert code == 3, out + err
    assert "source registrations" in err
    assert "cannot be reached" in err

"""The player view against a real daemon and the sandbox: every event of the player's
referral, MMOLove's answer, the rejected inputs naming them, and one verdict with the fix."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.config.values import Secret, ServerConfig
from relay.events import validate
from relay.offline import stopped
from relay.player import story as player_story
from relay.sandbox import RunningSandbox
from relay.store.contract import Attempt, Outbox, Outcome
from relay.store.sqlite import SqliteOutbox
from relay.store.sqlite_schema import MIGRATIONS
from tests.support import SERVER, Relay, StartRelay, cli, qualified, registered


async def story(relay: Relay, player: str) -> dict[str, Any]:
    code, out, err = await cli("player", player, "--json", "--url", relay.url)
    assert code == 0, err
    return dict(json.loads(out))


async def test_a_counted_referral_tells_every_event_and_mmoloves_state(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay()
    _, reg = await relay.post(registered("tok-7842", "7842"))
    _, qual = await relay.post(qualified("tok-7842", "7842"))
    _, other = await relay.post(registered("tok-other", "9999"))
    await relay.wait_finished([reg["id"], qual["id"], other["id"]])

    told = await story(relay, "7842")
    assert (told["referee_identity"], told["token"]) == ("7842", "tok-7842")
    assert [
        (e["event"], e["server_event_id"], e["status"], e["outcome"]) for e in told["events"]
    ] == [
        ("registered", "reg-7842", "delivered", "accepted"),
        ("qualified", "qual-7842", "delivered", "accepted"),
    ]
    assert told["events"][1]["state"] == "qualified"
    assert told["events"][1]["referral_id"]
    assert told["verdict"]["counted"] is True
    assert told["verdict"]["sentence"].startswith("Counted: MMOLove has referral")

    code, out, err = await cli("player", "7842", "--url", relay.url)
    assert code == 0, err
    assert "reg-7842" in out
    assert "qual-7842" in out
    assert out.strip().splitlines()[-1].startswith("Counted:")

    code, out, err = await cli("events", "list", "--player", "7842", "--json", "--url", relay.url)
    assert code == 0, err
    assert sorted(e["id"] for e in json.loads(out)["events"]) == [reg["id"], qual["id"]]


async def test_a_referral_held_behind_a_401_pause_says_so_and_how_to_fix_it(
    start_relay: StartRelay,
) -> None:
    # No probe while the story is read: a probe in flight shows its event in_flight.
    relay = await start_relay(
        servers=(ServerConfig(SERVER, Secret("not-the-secret")),), pause_probe_s=60.0
    )
    _, reg = await relay.post(registered("tok-held", "held-1"))
    deadline = time.monotonic() + 10
    while not (await relay.get("/v1/status"))[1]["servers"][0]["paused"]:
        assert time.monotonic() < deadline, "the server never paused"
        await asyncio.sleep(0.05)

    _, qual = await relay.post(qualified("tok-held", "held-1"))
    told = await story(relay, "held-1")
    assert [(e["id"], e["status"], e["note"]) for e in told["events"]] == [
        (reg["id"], "pending", f"held: server {SERVER} is paused"),
        (qual["id"], "pending", f"held: server {SERVER} is paused"),
    ]
    verdict = told["verdict"]
    assert verdict["counted"] is None
    assert f"deliveries for server {SERVER} are paused" in verdict["sentence"]
    assert "systemctl reload mmolove-relay" in verdict["fix"]

    _, direct = await relay.get("/v1/players/held-1")
    assert direct["verdict"] == verdict  # the API and the CLI tell the same story


async def test_a_dead_referral_is_not_counted_and_names_the_retry(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    relay = await start_relay()
    sandbox.sandbox.faults.unknown_tokens.add("tok-gone")
    _, reg = await relay.post(registered("tok-gone", "gone-1"))
    _, qual = await relay.post(qualified("tok-gone", "gone-1"))
    await relay.wait_finished([reg["id"], qual["id"]])

    told = await story(relay, "gone-1")
    assert [e["outcome"] for e in told["events"]] == ["not_found", "predecessor_dead"]
    assert told["verdict"]["counted"] is False
    assert told["verdict"]["sentence"].startswith(f"Not counted: registered #{reg['id']} is dead")
    assert told["verdict"]["fix"] == f"mmolove-relay retry {reg['id']}"


async def test_a_player_whose_events_were_all_rejected_is_told_why(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay()
    bad = registered("tok-typo", "typo-1", reffere="x")
    assert (await relay.post(bad))[0] == 422
    deadline = time.monotonic() + 5
    while True:
        told = await story(relay, "typo-1")
        if told["rejected"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert told["token"] is None
    assert told["events"] == []
    assert [r["code"] for r in told["rejected"]] == ["unknown_field"]
    assert told["verdict"]["counted"] is False
    assert "1 input(s) naming this player were rejected" in told["verdict"]["sentence"]


async def test_the_ledger_answers_after_the_bodies_are_pruned(start_relay: StartRelay) -> None:
    relay = await start_relay()
    _, reg = await relay.post(registered("tok-old", "old-1"))
    _, qual = await relay.post(qualified("tok-old", "old-1"))
    await relay.wait_finished([reg["id"], qual["id"]])
    outbox = relay.handle.outbox
    now = time.time()
    assert await outbox.prune(now + 1, now - 180 * 86400) == (2, 2)
    assert await outbox.get(reg["id"]) is None

    told = await story(relay, "old-1")
    assert [(e["id"], e["source"], e["outcome"]) for e in told["events"]] == [
        (reg["id"], "ledger", "accepted"),
        (qual["id"], "ledger", "accepted"),
    ]
    assert told["verdict"]["counted"] is True

    # Past ledger_retention_s the ledger entry goes too.
    await outbox.prune(now + 1, now + 1)
    assert (await story(relay, "old-1"))["events"] == []


async def test_a_pruned_event_still_names_the_source_that_reported_it(outbox: Outbox) -> None:
    """On both backends: the story names the source that read an event from the game's
    database while the event is in the outbox, and still once it is pruned to the ledger."""
    now = time.time()
    body = registered("tok-src", "src-1")
    read = validate(body, server_ids=[SERVER], allow_extra_fields=False, now=now)
    [added] = await outbox.add([replace(read, reported_by="registrations")], now)
    [record] = await outbox.claim(now, 1, servers=[SERVER], lease_s=30, max_age_s=3600)
    attempt = Attempt(record.id, now, 1.0, 200, "accepted", None)
    await outbox.finish(record, Outcome(status="delivered", outcome="accepted"), attempt)

    async def told() -> list[tuple[int, str, str | None]]:
        found = await player_story(outbox, stopped([SERVER]), "src-1")
        return [(e.id, e.source, e.reported_by) for e in found.events]

    assert await told() == [(added.id, "outbox", "registrations")]
    assert await outbox.prune(now + 1, ledger_before=now - 1) == (1, 1)
    assert await told() == [(added.id, "ledger", "registrations")]


async def test_a_referral_backing_off_says_until_when_and_its_follower_waits(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    relay = await start_relay(backoff_base_s=1000.0, backoff_cap_s=1000.0)
    sandbox.sandbox.faults.error_rate = 1.0  # every answer a 500
    _, reg = await relay.post(registered("tok-slow", "slow-1"))
    await relay.post(qualified("tok-slow", "slow-1"))
    deadline = time.monotonic() + 10
    while (await relay.get(f"/v1/events/{reg['id']}"))[1]["attempts"] == 0:
        assert time.monotonic() < deadline, "never attempted"
        await asyncio.sleep(0.05)

    told = await story(relay, "slow-1")
    assert told["events"][1]["note"] == f"waits behind #{reg['id']}"
    verdict = told["verdict"]
    assert verdict["counted"] is None
    assert verdict["sentence"].startswith(f"Pending: registered #{reg['id']} is backing off after")
    assert "next attempt at" in verdict["sentence"]
    assert verdict["fix"] == f"mmolove-relay retry {reg['id']}"


async def test_a_referral_behind_an_open_circuit_says_it_recovers_by_itself(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    relay = await start_relay(breaker_cooldown_s=60.0)
    faults = sandbox.sandbox.faults
    faults.throttle_next, faults.retry_after_s = 1, 60  # a 429 with Retry-After opens it
    await relay.post(registered("tok-circ", "circ-1"))
    deadline = time.monotonic() + 10
    while (await relay.get("/v1/status"))[1]["circuit"] == "closed":
        assert time.monotonic() < deadline, "the circuit never opened"
        await asyncio.sleep(0.05)

    told = await story(relay, "circ-1")
    assert told["events"][0]["note"].startswith("held: the circuit to MMOLove is open until")
    verdict = told["verdict"]
    assert verdict["counted"] is None
    assert verdict["sentence"].startswith("Pending: MMOLove is failing, so the circuit is open")


@pytest.mark.unit
async def test_an_outbox_from_before_the_player_view_is_backfilled(tmp_path: Path) -> None:
    """Migration 4 reads referee_identity out of the stored bodies of older registrations."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:3], start=1):
        db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    body = json.dumps(registered("tok-v2", "v2-player") | {"server_id": SERVER, "ts": 1})
    db.execute(
        "INSERT INTO events (server_id, token, event, server_event_id, rank, test, body,"
        " fingerprint, created_at, next_attempt_at) VALUES (?, 'tok-v2', 'registered',"
        " 'reg-v2-player', 0, 0, ?, 'f', 1, 1)",
        (SERVER, body.encode()),
    )
    db.close()

    box = await SqliteOutbox.open(path)
    try:
        told = await player_story(box, stopped(()), "v2-player")
    finally:
        await box.close()
    assert told.token == "tok-v2"
    assert [e.server_event_id for e in told.events] == ["reg-v2-player"]


@pytest.mark.unit
async def test_ledger_entries_from_before_it_kept_sources_are_still_told(tmp_path: Path) -> None:
    """Migration 6 adds reported_by to a ledger that holds entries: they are still read, and
    name no source (their events, which knew it, are gone)."""
    path = tmp_path / "v5.db"
    db = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:5], start=1):
        db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    db.execute(
        "INSERT INTO ledger (event_id, server_id, token, event, server_event_id,"
        " referee_identity, test, outcome, referral_id, state, attempts, created_at,"
        " finished_at) VALUES (7, ?, 'tok-v5', 'registered', 'reg-v5-player', 'v5-player', 0,"
        " 'accepted', 'ref-v5', 'registered', 1, 1, 2)",
        (SERVER,),
    )
    db.close()

    box = await SqliteOutbox.open(path)
    try:
        told = await player_story(box, stopped(()), "v5-player")
    finally:
        await box.close()
    assert [(e.id, e.source, e.reported_by) for e in told.events] == [(7, "ledger", None)]
    assert told.verdict.counted is True

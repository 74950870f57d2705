"""Alerts against a real daemon, the sandbox and a real local receiver on loopback
(``tests.alert_receiver``), which checks each payload the way the real service documents it."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest

from relay.config.settings import Settings
from relay.config.values import AlertTarget, Secret
from relay.sandbox import RunningSandbox
from tests.alert_receiver import HOOK_SECRET, URL_TOKEN, Receiver, alerting, wrong_secret
from tests.support import SECRET, SERVER, StartRelay, cli, eventually, registered, running_relay


async def test_a_pause_fires_within_5_s_on_every_target_and_resolves_once_fixed(
    start_relay: StartRelay, settings: Settings, receiver: Receiver
) -> None:
    relay = await start_relay(alerting(wrong_secret(settings), receiver))
    await relay.post(registered("tok-a", "p-a"))
    await eventually(
        lambda: len(receiver.got.get("webhook", [])) == 1, timeout_s=5.0, what="a pause alert"
    )
    await eventually(
        lambda: all(receiver.got.get(k) for k in ("discord", "slack")), timeout_s=5.0, what="all"
    )
    for kind in ("discord", "slack", "webhook"):
        [text] = receiver.texts(kind)
        assert f"deliveries for MMOLove server {SERVER} are paused" in text
        assert "Since 20" in text  # since when
        assert "systemctl reload mmolove-relay" in text  # the command to run
        assert socket.gethostname() in text  # which relay
    [hook] = receiver.got["webhook"]
    assert (hook["alert"], hook["status"]) == (f"paused:{SERVER}", "firing")

    relay.handle.reload(settings)  # the right secret: the probe resumes the server
    await eventually(
        lambda: len(receiver.got.get("webhook", [])) == 2, timeout_s=10.0, what="a resolved message"
    )
    assert receiver.got["webhook"][1]["status"] == "resolved"
    assert receiver.texts("slack")[1].startswith("\u2705 mmolove-relay on")
    assert "resolved after" in receiver.texts("discord")[1]
    assert receiver.bad == []
    _, status = await relay.get("/v1/status")
    assert status["alerts"]["firing"] == []
    assert {t["ok"] for t in status["alerts"]["targets"]} == {True}


async def test_a_flapping_pause_sends_one_message_not_twenty(
    start_relay: StartRelay, settings: Settings, receiver: Receiver
) -> None:
    """Paused and resumed ten times within the hold: one firing message, and no resolved."""
    relay = await start_relay(alerting(settings, receiver, alert_resolve_after_s=30.0))
    state = relay.handle.dispatcher.servers[SERVER]
    for _ in range(10):
        state.paused_reason = "401 unauthorized (flapping)"
        await asyncio.sleep(0.15)
        state.paused_reason = None
        await asyncio.sleep(0.15)
    await asyncio.sleep(0.5)
    assert [h["status"] for h in receiver.got["webhook"]] == ["firing"]
    assert len(receiver.texts("discord")) == len(receiver.texts("slack")) == 1


async def test_a_restart_mid_incident_sends_no_duplicate(
    settings: Settings, receiver: Receiver
) -> None:
    paused = alerting(wrong_secret(settings), receiver)
    async with running_relay(paused) as relay:
        await relay.post(registered("tok-r", "p-r"))
        await eventually(
            lambda: len(receiver.got.get("webhook", [])) == 1, timeout_s=5.0, what="a pause alert"
        )
    # The same outbox, still the wrong secret: the server pauses again on the first attempt.
    async with running_relay(paused) as relay:
        await eventually(
            lambda: relay.handle.dispatcher.servers[SERVER].paused_reason,
            timeout_s=5.0,
            what="pause",
        )
        await asyncio.sleep(1.0)
    assert [h["status"] for h in receiver.got["webhook"]] == ["firing"]


async def test_dead_events_are_told_in_one_batched_message(
    start_relay: StartRelay, settings: Settings, receiver: Receiver, sandbox: RunningSandbox
) -> None:
    relay = await start_relay(alerting(settings, receiver))
    tokens = [f"tok-dead-{i}" for i in range(3)]
    sandbox.sandbox.faults.unknown_tokens.update(tokens)
    for token in tokens:  # dying a few rule evaluations apart, as a burst does
        _, event = await relay.post(registered(token, f"p-{token}"))
        await relay.wait_finished([event["id"]])
        await asyncio.sleep(0.3)
    await eventually(lambda: receiver.texts("slack"), timeout_s=5.0, what="a dead alert")
    await asyncio.sleep(0.5)
    [text] = receiver.texts("slack")
    assert "3 events died, not_found \u00d73: `mmolove-relay events list --status dead`" in text


async def test_a_burst_of_rejected_inputs_fires(
    start_relay: StartRelay, settings: Settings, receiver: Receiver
) -> None:
    relay = await start_relay(alerting(settings, receiver, alert_rejected_count=5))
    for i in range(5):
        await relay.post({"event": "registered", "token": f"t{i}"})
    await eventually(lambda: receiver.texts("webhook"), timeout_s=5.0, what="a rejected alert")
    [hook] = receiver.got["webhook"]
    assert hook["alert"] == "rejected"
    assert "ingest rejected 5 inputs" in hook["text"]


@pytest.mark.timed  # delivery is timed in wall-clock seconds
async def test_a_target_down_slow_or_throttling_never_holds_up_delivery(
    start_relay: StartRelay, settings: Settings, receiver: Receiver, capsys: Any
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        down_port = closed.getsockname()[1]
    down = AlertTarget("slack", Secret(f"http://127.0.0.1:{down_port}/slack/{URL_TOKEN}"))
    receiver.delay_s["discord"] = 3.0
    receiver.throttle["webhook"] = 2
    targets = (
        down,
        receiver.target("discord"),
        receiver.target("webhook", secret=Secret(HOOK_SECRET)),
    )
    relay = await start_relay(alerting(settings, receiver, alerts=targets, alert_rejected_count=1))
    await relay.post({"event": "registered", "token": "bad"})  # fires "rejected"
    await eventually(
        lambda: receiver.arrivals.get("discord"), timeout_s=5.0, what="the slow target reached"
    )

    # Meanwhile referrals flow as ever.
    started = time.monotonic()
    _, event = await relay.post(registered("tok-flow", "p-flow"))
    await relay.wait_finished([event["id"]], timeout_s=2.0)
    assert time.monotonic() - started < 2.0

    await eventually(
        lambda: receiver.got.get("webhook"), timeout_s=10.0, what="the throttled webhook"
    )
    gaps = [
        b - a
        for a, b in zip(
            receiver.arrivals["webhook"], receiver.arrivals["webhook"][1:], strict=False
        )
    ]
    assert len(gaps) == 2
    assert min(gaps) >= 0.45  # Discord-style retry_after (0.5 s) honoured
    await eventually(lambda: receiver.got.get("discord"), timeout_s=10.0, what="the slow target")

    async def down_reported() -> bool:
        _, status = await relay.get("/v1/status")
        # Given up on, not only retrying (ok is false from the first failed attempt on).
        return any(t["state"] == "failing" for t in status["alerts"]["targets"])

    deadline = time.monotonic() + 20
    while not await down_reported():
        assert time.monotonic() < deadline, "the down target never showed in status"
        await asyncio.sleep(0.1)
    _, status = await relay.get("/v1/status")
    [failing] = [t for t in status["alerts"]["targets"] if t["ok"] is False]
    assert failing["last_error"].startswith("unreachable")
    async with relay.http.get(relay.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'mmolove_relay_alerts_total{kind="slack",result="failed"} 1.0' in metrics
    shown = json.dumps(status) + metrics + capsys.readouterr().out
    assert URL_TOKEN not in shown


async def test_alert_test_reports_each_target_and_masks_the_url(
    receiver: Receiver, sandbox: RunningSandbox
) -> None:
    env = {
        "MMOLOVE_SERVER_ID": SERVER,
        "MMOLOVE_SECRET": SECRET,
        "MMOLOVE_ENDPOINT": sandbox.url,
        "MMOLOVE_RELAY_ALERT_URL": f"{receiver.url}/slack/{URL_TOKEN}",
        "MMOLOVE_RELAY_ALERT_KIND": "slack",
    }
    code, out, err = await cli("alert-test", env=env)
    assert code == 0, err
    assert "ok: answered 200" in out
    assert "a test alert" in receiver.texts("slack")[0]
    assert URL_TOKEN not in out + err

    code, out, err = await cli("check-config", env=env)
    assert code == 0, err
    assert "slack" in out
    assert URL_TOKEN not in out

    env["MMOLOVE_RELAY_ALERT_URL"] = f"http://127.0.0.1:9/slack/{URL_TOKEN}"
    code, out, err = await cli("alert-test", "--json", env=env)
    assert code == 1
    [result] = json.loads(out)["targets"]
    assert result["ok"] is False
    assert result["detail"].startswith("unreachable")
    assert URL_TOKEN not in out + err


async def test_a_discord_message_never_exceeds_2000_characters(
    start_relay: StartRelay, settings: Settings, receiver: Receiver
) -> None:
    relay = await start_relay(alerting(settings, receiver, alert_rejected_count=1))
    long_reason = "x" * 3000
    relay.handle.dispatcher.servers[SERVER].paused_reason = long_reason
    await eventually(lambda: receiver.texts("discord"), timeout_s=5.0, what="a discord alert")
    assert receiver.bad == []
    assert len(receiver.texts("discord")[0]) == 2000
    assert len(receiver.texts("slack")[0]) > 3000


async def test_over_max_outbox_bytes_ingest_answers_503_and_the_alert_fires(
    start_relay: StartRelay, settings: Settings, receiver: Receiver
) -> None:
    """Like low disk: refused with Retry-After, nothing stored, and the operator told."""
    relay = await start_relay(alerting(settings, receiver, max_outbox_bytes=1))
    async with relay.http.post(relay.url + "/v1/events", json=registered("t", "p")) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "30"
        assert "max_outbox_bytes" in (await resp.json())["error"]["message"]
    _, status = await relay.get("/v1/status")
    assert status["counts"]["pending"] == 0
    status_code, ready = await relay.get("/readyz")
    assert status_code == 503
    assert any(p.startswith("outbox full") for p in ready["problems"])
    await eventually(
        lambda: receiver.got.get("webhook"), timeout_s=5.0, what="an outbox-full alert"
    )
    assert receiver.got["webhook"][0]["alert"] == "outbox_full"


async def test_an_outage_fires_the_circuit_and_backlog_alerts_and_reminds_at_most_as_told(
    start_relay: StartRelay, settings: Settings, receiver: Receiver, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.outage = True
    relay = await start_relay(
        alerting(
            settings, receiver, alert_after_s=0.5, alert_pending_age_s=0.5, alert_reminder_s=1.0
        )
    )
    await relay.post(registered("tok-out", "p-out"))
    hooks = receiver.got.setdefault("webhook", [])
    await eventually(
        lambda: {"circuit", "backlog"} <= {h["alert"] for h in hooks}, timeout_s=5.0, what="both"
    )
    await asyncio.sleep(2.3)
    circuit = [h["status"] for h in hooks if h["alert"] == "circuit"]
    assert circuit[0] == "firing"
    assert 1 <= circuit.count("reminder") <= 3  # one per alert_reminder_s, not one per check
    assert (
        "the circuit to MMOLove has been open"
        in next(h for h in hooks if h["alert"] == "circuit")["text"]
    )

    sandbox.sandbox.faults.outage = False
    await eventually(
        lambda: {h["alert"] for h in hooks if h["status"] == "resolved"} >= {"circuit", "backlog"},
        timeout_s=10.0,
        what="both resolved",
    )


async def test_a_disk_near_full_fires(
    start_relay: StartRelay, settings: Settings, receiver: Receiver, tmp_path: Any
) -> None:
    import shutil

    free = shutil.disk_usage(tmp_path).free
    await start_relay(alerting(settings, receiver, min_free_bytes=free))  # half of 2x: near
    await eventually(lambda: receiver.got.get("webhook"), timeout_s=5.0, what="a disk alert")
    assert receiver.got["webhook"][0]["alert"] == "disk"


async def test_a_failing_source_alerts_after_alert_after_s_and_resolves_once_it_reads(
    start_relay: StartRelay, settings: Settings, receiver: Receiver, tmp_path: Any
) -> None:
    from tests.test_sources import game_db, make_game, registrations

    game = tmp_path / "game.db"
    make_game(game, accounts=3)
    source = registrations(f"sqlite:///{game}", statement_timeout_s=0.2)
    hooks = receiver.got.setdefault("webhook", [])
    with game_db(game) as holder:
        holder.execute("BEGIN EXCLUSIVE")  # the game's database cannot be read
        await start_relay(alerting(settings, receiver, alert_after_s=0.5), game_sources=(source,))
        await eventually(
            lambda: any(h["alert"] == "source:registrations" for h in hooks),
            timeout_s=10,
            what="fired",
        )
        holder.execute("COMMIT")
    fired = next(h for h in hooks if h["alert"] == "source:registrations")
    assert fired["status"] == "firing"
    assert "source registrations has failed to poll" in fired["text"]
    assert "database is locked" in fired["text"]
    await eventually(
        lambda: any(h["status"] == "resolved" for h in hooks if h["alert"] == fired["alert"]),
        timeout_s=10,
        what="resolved",
    )

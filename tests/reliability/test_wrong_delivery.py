"""Upstream answers that once made the relay record a wrong delivery or stall it: a 2xx that
is not MMOLove speaking, a qualified that overtakes its registered, a Retry-After of an hour.

Each scenario runs an in-process relay against the sandbox with a fault switched on.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from relay.sandbox import IMPOSTORS, RunningSandbox
from tests.support import StartRelay, cli, eventually, qualified, registered

pytestmark = pytest.mark.timeout(40)


async def _record(relay: Any, event_id: int) -> dict[str, Any]:
    _, record = await relay.get(f"/v1/events/{event_id}")
    return record


@pytest.mark.parametrize("impostor", sorted(IMPOSTORS))
async def test_a_2xx_that_is_not_mmoloves_answer_is_not_a_delivery(
    start_relay: StartRelay, sandbox: RunningSandbox, impostor: str
) -> None:
    """A captive portal's 200 page, an empty or cut body, ok: false, {} or a 201/202/204:
    the event stays pending, the server pauses saying what came back, and once MMOLove
    answers again the event is delivered."""
    sandbox.sandbox.faults.impostor = impostor
    relay = await start_relay()
    status, answer = await relay.post(registered("tok-portal", "p1"))
    assert status == 202
    event_id = answer["id"]

    async def paused() -> dict[str, Any] | None:
        _, body = await relay.get("/v1/status")
        [server] = body["servers"]
        return server if server["paused"] else None

    server = await eventually(paused, timeout_s=10, what="the server pauses")
    assert f"answered {IMPOSTORS[impostor][0]} with" in server["paused_reason"]
    assert "not MMOLove's answer" in server["paused_reason"]

    # The pause comes before the attempt is recorded; probes then keep trying the event
    # (in flight for a moment each time), and it is never delivered.
    async def recorded() -> dict[str, Any] | None:
        record = await _record(relay, event_id)
        return record if record["delivery_log"] else None

    record = await eventually(recorded, timeout_s=10, what="the first attempt's record")
    assert record["status"] in ("pending", "in_flight")
    assert record["delivery_log"][-1]["outcome"] == "unexpected_answer"
    assert sandbox.sandbox.snapshot()["accepted"] == []

    sandbox.sandbox.faults.impostor = None
    done = await relay.wait_finished([event_id])
    assert (done[event_id]["status"], done[event_id]["outcome"]) == ("delivered", "accepted")
    assert len(sandbox.sandbox.snapshot()["accepted"]) == 1


async def test_mmolove_relay_test_refuses_the_same_answers(sandbox: RunningSandbox) -> None:
    """`mmolove-relay test` and delivery share one classification of MMOLove's answers."""
    sandbox.sandbox.faults.impostor = "html"
    env = {
        "MMOLOVE_SERVER_ID": "srv-1",
        "MMOLOVE_SECRET": "secret-1-for-tests",
        "MMOLOVE_ENDPOINT": sandbox.url,
    }
    code, out, _ = await cli("test", env=env)
    assert code != 0
    assert "not MMOLove's answer" in out
    assert "guest Wi-Fi" in out  # says what came back


async def test_one_retry_after_of_an_hour_holds_the_shared_breaker_only_its_cap(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    """One 429 with Retry-After: 3600: that event waits its hour, but the shared breaker
    reopens after breaker_retry_after_cap_s, status says when, and the rest flows."""
    faults = sandbox.sandbox.faults
    faults.throttle_next, faults.retry_after_s = 1, 3600
    relay = await start_relay(concurrency=1, breaker_retry_after_cap_s=2.0)
    _, answer = await relay.post(registered("tok-429", "p0"))
    throttled = answer["id"]

    async def was_throttled() -> bool:
        return (await _record(relay, throttled))["outcome"] == "http_429"

    await eventually(was_throttled, timeout_s=10, what="the 429 to be recorded")
    _, status = await relay.get("/v1/status")
    assert status["circuit"] == "open"
    assert 0 < status["circuit_reopens_in_s"] <= 2.0
    assert status["next_attempt_in_s"] >= status["circuit_reopens_in_s"] - 0.1

    others = [(await relay.post(registered(f"tok-{i}", f"p{i}")))[1]["id"] for i in range(1, 6)]
    done = await relay.wait_finished(others, timeout_s=15)
    assert {r["status"] for r in done.values()} == {"delivered"}
    record = await _record(relay, throttled)
    assert record["status"] == "pending"
    assert record["next_attempt_at"] - time.time() > 3000  # its own Retry-After still holds


@pytest.mark.parametrize("early", ["qualified", "reversed"])
async def test_an_event_that_overtakes_its_registered_waits_for_it_then_lands_after_it(
    start_relay: StartRelay, sandbox: RunningSandbox, early: str
) -> None:
    """The game server's race: a qualified (or reversed) posted a second before its
    registered. MMOLove refuses the early one (422); the relay holds it, visibly, and sends
    it again once the registered is delivered: both accepted, in order."""
    relay = await start_relay()
    body = {"event": early, "token": "tok-race", "server_event_id": f"{early}-p1"}
    _, answer = await relay.post(body)
    first = answer["id"]

    async def refused() -> dict[str, Any] | None:
        record = await _record(relay, first)
        return record if record["outcome"] == "waiting_for_registered" else None

    record = await eventually(refused, timeout_s=10, what=f"the {early} to wait")
    assert record["status"] == "pending"
    assert "no registered for token tok-race" in record["last_error"]
    assert "orphaned" in record["last_error"]
    _, status = await relay.get("/v1/status")
    assert status["waiting_for_registered"] == 1
    code, out, _ = await cli("status", "--url", relay.url)
    assert "wait for it" in out, (code, out)

    await asyncio.sleep(1.0)  # the registered comes a second later
    _, answer = await relay.post(registered("tok-race", "p1"))
    done = await relay.wait_finished([first, answer["id"]])
    assert {r["status"] for r in done.values()} == {"delivered"}
    assert [a["http_status"] for a in done[first]["delivery_log"]] == [200, 422]
    accepted = [a["event"] for a in sandbox.sandbox.snapshot()["accepted"]]
    assert accepted == ["registered", early]


async def test_an_early_qualified_whose_registered_never_comes_dies_orphaned_at_max_age(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    relay = await start_relay(max_age_s=1.5)
    _, answer = await relay.post(qualified("tok-alone", "p1"))
    record = (await relay.wait_finished([answer["id"]]))[answer["id"]]
    assert (record["status"], record["outcome"]) == ("dead", "orphaned")
    assert "no registered for its token" in record["last_error"]
    assert sandbox.sandbox.snapshot()["requests"] == 1  # held, not resent while it waited

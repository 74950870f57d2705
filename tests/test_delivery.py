"""Delivery against the sandbox: every outcome class of MMOLove's answers, ordering per
referral, backoff, Retry-After, the circuit breaker and the per-server pause."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from relay import signing
from relay.config.settings import Settings
from relay.config.values import Secret
from relay.sandbox import RunningSandbox
from tests.support import (
    SECRET,
    SERVER,
    Relay,
    StartRelay,
    eventually,
    qualified,
    registered,
)

pytestmark = pytest.mark.timeout(40)


async def post_ids(relay: Relay, bodies: list[dict[str, Any]]) -> list[int]:
    answers = await asyncio.gather(*(relay.post(b) for b in bodies))
    assert {status for status, _ in answers} == {202}, answers
    return [a["id"] for _, a in answers]


async def status_of(relay: Relay) -> dict[str, Any]:
    _, body = await relay.get("/v1/status")
    return body


async def test_200_referrals_land_exactly_once_in_order(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    """registered + qualified for 200 tokens, posted concurrently (qualified first in each
    pair): all land once, and MMOLove sees each token's registered before its qualified."""
    sandbox.sandbox.faults.latency_ms = 2
    relay = await start_relay(concurrency=8)
    bodies = []
    for i in range(200):
        bodies += [qualified(f"tok-{i}", f"p{i}"), registered(f"tok-{i}", f"p{i}")]
    ids = await post_ids(relay, bodies)
    records = await relay.wait_finished(ids, timeout_s=30)
    assert {r["status"] for r in records.values()} == {"delivered"}
    assert {r["outcome"] for r in records.values()} == {"accepted"}

    snap = sandbox.sandbox.snapshot()
    assert snap["duplicate_sends"] == 0
    keys = [(a["token"], a["event"]) for a in snap["accepted"]]
    assert len(keys) == len(set(keys)) == 400
    position = {key: index for index, key in enumerate(keys)}
    for i in range(200):
        assert position[(f"tok-{i}", "registered")] < position[(f"tok-{i}", "qualified")]
    assert snap["by_status"] == {"200": 400}  # never a 422 from an out-of-order send


async def test_delivered_sub_outcomes_duplicate_ignored_and_test(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    relay = await start_relay()
    # MMOLove already has this one (say, a previous relay sent it): it answers duplicate.
    body = (
        b'{"event":"registered","token":"tok-dup","server_id":"srv-1",'
        b'"referee_identity":"p9","server_event_id":"reg-p9","ts":1733500000}'
    )
    header = signing.signature_header(body, SECRET, int(time.time()))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sandbox.url,
            data=body,
            headers={"Content-Type": "application/json", signing.HEADER: header},
        ) as resp,
    ):
        assert resp.status == 200
    ids = await post_ids(relay, [registered("tok-dup", "p9", ts=1733500000)])
    ids += await post_ids(relay, [registered("tok-first", "p5")])
    await relay.wait_finished(ids[1:])
    ids += await post_ids(
        relay,
        [
            registered("tok-second", "p5"),  # p5 is anchored to tok-first: first touch wins
            registered("tok-test", "p6", test=True),
        ],
    )
    records = await relay.wait_finished(ids)
    assert [records[i]["outcome"] for i in ids] == ["duplicate", "accepted", "ignored", "test"]
    assert all(records[i]["status"] == "delivered" for i in ids)
    assert records[ids[1]]["referral_id"]
    assert sandbox.sandbox.snapshot()["test_events"] == 1


@pytest.mark.parametrize(
    ("setup", "status", "reason"),
    [
        ("error_400", 400, "bad_request"),
        ("unknown_token", 404, "not_found"),
        ("error_422", 422, "illegal_transition"),
    ],
)
async def test_permanent_answers_dead_letter_with_mmoloves_answer(
    start_relay: StartRelay, sandbox: RunningSandbox, setup: str, status: int, reason: str
) -> None:
    faults = sandbox.sandbox.faults
    relay = await start_relay()
    # The registered lands first: a 422 after it is a really illegal transition, not a
    # qualified that overtook its registered (which waits for it instead).
    await relay.wait_finished(await post_ids(relay, [registered("tok-p", "p1")]))
    if setup == "unknown_token":
        faults.unknown_tokens = {"tok-p"}
    else:
        faults.error_rate, faults.error_status = 1.0, status
    ids = await post_ids(relay, [qualified("tok-p", "p1")])
    record = (await relay.wait_finished(ids))[ids[0]]
    assert (record["status"], record["outcome"]) == ("dead", reason)
    assert record["last_http_status"] == status
    assert record["attempts"] == 1  # permanent: not retried
    assert record["response"]  # MMOLove's answer is kept
    assert sandbox.sandbox.snapshot()["requests"] == 2


async def test_followers_of_a_dead_event_are_dead_too_and_never_sent(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.unknown_tokens = {"tok-gone"}
    relay = await start_relay()
    reg, qual = await post_ids(relay, [registered("tok-gone", "p1")]) + await post_ids(
        relay, [qualified("tok-gone", "p1")]
    )
    records = await relay.wait_finished([reg, qual])
    assert records[reg]["outcome"] == "not_found"
    assert (records[qual]["status"], records[qual]["outcome"]) == ("dead", "predecessor_dead")
    assert f"event {reg}" in records[qual]["last_error"]
    assert records[qual]["attempts"] == 0
    assert sandbox.sandbox.snapshot()["requests"] == 1  # the qualified never went out


async def test_server_errors_and_resets_are_retried_until_delivered(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    faults = sandbox.sandbox.faults
    faults.error_rate, faults.error_status = 1.0, 500
    relay = await start_relay(breaker_failures=100)
    [first] = await post_ids(relay, [registered("tok-r", "p1")])
    await eventually(lambda: _attempts_at_least(relay, first, 2))
    faults.error_rate, faults.reset = 0.0, True
    seen = (await relay.get(f"/v1/events/{first}"))[1]["attempts"]
    await eventually(lambda: _attempts_at_least(relay, first, seen + 2))
    faults.reset = False
    record = (await relay.wait_finished([first]))[first]
    assert record["status"] == "delivered"
    log = record["delivery_log"]
    assert log[0]["http_status"] == 200
    assert any(a["http_status"] == 500 for a in log)
    assert any(a["http_status"] is None and a["outcome"] == "network" for a in log)
    # The 500s and resets came before MMOLove applied the event: no send repeated it.
    assert sandbox.sandbox.snapshot()["duplicate_sends"] == 0


async def _attempts_at_least(relay: Relay, event_id: int, n: int) -> bool:
    _, record = await relay.get(f"/v1/events/{event_id}")
    return bool(record["attempts"] >= n)


async def test_429_retry_after_is_honoured(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    faults = sandbox.sandbox.faults
    faults.throttle_next, faults.retry_after_s = 1, 1
    relay = await start_relay()
    [event_id] = await post_ids(relay, [registered("tok-429", "p1")])
    record = (await relay.wait_finished([event_id]))[event_id]
    log = record["delivery_log"]  # newest first
    assert [a["http_status"] for a in log] == [200, 429]
    assert log[0]["started_at"] - log[1]["started_at"] >= 1.0


async def test_hang_past_the_timeout_is_retried(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.hang = True
    relay = await start_relay(send_timeout_s=0.3)
    [event_id] = await post_ids(relay, [registered("tok-hang", "p1")])
    await eventually(lambda: _attempts_at_least(relay, event_id, 2))
    sandbox.sandbox.faults.hang = False
    record = (await relay.wait_finished([event_id]))[event_id]
    assert record["status"] == "delivered"
    assert "timeout" in {a["outcome"] for a in record["delivery_log"]}


async def test_outage_costs_probes_not_the_backlog_and_drains_after(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    faults = sandbox.sandbox.faults
    faults.outage = True
    relay = await start_relay(
        breaker_failures=3, breaker_cooldown_s=0.3, backoff_base_s=0.01, backoff_cap_s=0.02
    )
    ids = await post_ids(relay, [registered(f"tok-o{i}", f"p{i}") for i in range(40)])
    await asyncio.sleep(2.0)
    during = sandbox.sandbox.snapshot()["requests"]
    # Without the breaker, 40 events retrying every ~20 ms would send thousands of requests.
    # With it: the failures that open it (at most one claim round of 4) plus a few probes.
    assert 3 <= during <= 15, during
    assert (await status_of(relay))["circuit"] in ("open", "half_open")
    faults.outage = False
    records = await relay.wait_finished(ids, timeout_s=20)
    assert {r["status"] for r in records.values()} == {"delivered"}
    assert (await status_of(relay))["circuit"] == "closed"


async def test_401_pauses_the_server_and_a_reload_resumes_it(
    start_relay: StartRelay, sandbox: RunningSandbox, settings: Settings
) -> None:
    wrong = replace(settings, servers=(replace(settings.servers[0], secret=Secret("wrong")),))
    relay = await start_relay(wrong, pause_probe_s=0.5)
    ids = await post_ids(relay, [registered(f"tok-a{i}", f"p{i}") for i in range(10)])
    await asyncio.sleep(1.6)
    status = await status_of(relay)
    [server] = status["servers"]
    assert server["paused"] is True
    assert "401" in server["paused_reason"]
    # Paused, not burning: the first round of sends plus about one probe per 0.5 s.
    assert sandbox.sandbox.snapshot()["requests"] <= 4 + 5
    assert status["counts"]["dead"] == 0

    relay.handle.reload(settings)
    records = await relay.wait_finished(ids)
    assert {r["status"] for r in records.values()} == {"delivered"}
    assert (await status_of(relay))["servers"][0]["paused"] is False


async def test_clock_skew_is_measured_and_corrected(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.clock_offset_s = 600  # MMOLove's clock is ten minutes ahead
    relay = await start_relay()
    [event_id] = await post_ids(relay, [registered("tok-skew", "p1")])
    record = (await relay.wait_finished([event_id]))[event_id]
    assert record["status"] == "delivered"
    assert [a["http_status"] for a in record["delivery_log"]] == [200, 401]
    [server] = (await status_of(relay))["servers"]
    assert abs(server["clock_offset_s"] - 600) <= 2


async def test_redirect_is_not_followed_and_pauses_the_server(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.redirect_to = sandbox.url + "-moved"
    # No probe while the event is read (a probe in flight shows it in_flight); the reload
    # below probes at once.
    relay = await start_relay(pause_probe_s=60.0)
    [event_id] = await post_ids(relay, [registered("tok-307", "p1")])
    await eventually(lambda: _attempts_at_least(relay, event_id, 1))
    await asyncio.sleep(0.2)
    [server] = (await status_of(relay))["servers"]
    assert server["paused"] is True
    assert "redirect" in server["paused_reason"]
    _, record = await relay.get(f"/v1/events/{event_id}")
    assert record["status"] == "pending"
    sandbox.sandbox.faults.redirect_to = None
    relay.handle.reload(relay.handle.settings)
    assert (await relay.wait_finished([event_id]))[event_id]["status"] == "delivered"


async def test_events_expire_after_max_age(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    sandbox.sandbox.faults.error_rate = 1.0
    relay = await start_relay(max_age_s=0.5, breaker_failures=1000)
    [event_id] = await post_ids(relay, [registered("tok-old", "p1")])
    record = (await relay.wait_finished([event_id]))[event_id]
    assert (record["status"], record["outcome"]) == ("dead", "expired")
    assert "max_age_s" in record["last_error"]


async def test_new_event_is_dispatched_without_polling_delay(start_relay: StartRelay) -> None:
    """The dispatcher sleeps up to 30 s when idle; a new event must wake it at once."""
    relay = await start_relay()
    await asyncio.sleep(0.3)  # let the dispatcher go idle
    started = time.monotonic()
    [event_id] = await post_ids(relay, [registered("tok-now", "p1")])
    await relay.wait_finished([event_id], timeout_s=5)
    assert time.monotonic() - started < 5


async def test_body_bytes_are_identical_across_attempts(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    """A retry re-signs with a fresh t but sends the same bytes: MMOLove dedups it."""
    faults = sandbox.sandbox.faults
    faults.error_rate, faults.error_status = 1.0, 503
    relay = await start_relay(breaker_failures=100)
    [event_id] = await post_ids(relay, [registered("tok-same", "p1")])
    await eventually(lambda: _attempts_at_least(relay, event_id, 3))
    faults.error_rate = 0.0
    await relay.wait_finished([event_id])
    snap = sandbox.sandbox.snapshot()
    assert [a["server_event_id"] for a in snap["accepted"]] == ["reg-p1"]
    assert snap["duplicate_sends"] == 0
    assert f"{SERVER}/tok-same" in snap["referrals"]


async def test_a_paused_server_resumes_on_any_verdict_from_mmolove(
    start_relay: StartRelay, sandbox: RunningSandbox, settings: Settings
) -> None:
    """A 404 on the probe still proves the signature works: the pause ends."""
    wrong = replace(settings, servers=(replace(settings.servers[0], secret=Secret("wrong")),))
    relay = await start_relay(wrong, pause_probe_s=60.0)
    sandbox.sandbox.faults.unknown_tokens = {"tok-404"}
    [event_id] = await post_ids(relay, [registered("tok-404", "p1")])
    await eventually(lambda: _paused(relay))
    relay.handle.reload(settings)
    record = (await relay.wait_finished([event_id]))[event_id]
    assert (record["status"], record["outcome"]) == ("dead", "not_found")
    assert not await _paused(relay)


async def _paused(relay: Relay) -> bool:
    return bool((await status_of(relay))["servers"][0]["paused"])


async def test_undocumented_4xx_pauses_the_server_instead_of_burning_retries(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    faults = sandbox.sandbox.faults
    faults.error_rate, faults.error_status = 1.0, 403
    relay = await start_relay()
    [event_id] = await post_ids(relay, [registered("tok-403", "p1")])
    await eventually(lambda: _paused(relay))
    [server] = (await status_of(relay))["servers"]
    assert "403" in server["paused_reason"]
    _, record = await relay.get(f"/v1/events/{event_id}")
    assert record["status"] == "pending"


async def test_huge_retry_after_is_capped(start_relay: StartRelay, sandbox: RunningSandbox) -> None:
    faults = sandbox.sandbox.faults
    faults.throttle_next, faults.retry_after_s = 1, 86_400_000
    relay = await start_relay(retry_after_cap_s=0.3)
    [event_id] = await post_ids(relay, [registered("tok-ra", "p1")])
    record = (await relay.wait_finished([event_id], timeout_s=10))[event_id]
    assert [a["http_status"] for a in record["delivery_log"]] == [200, 429]


async def test_half_open_probe_does_not_spin_the_dispatcher(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    """While the one probe hangs, the dispatcher waits for it instead of re-claiming."""
    sandbox.sandbox.faults.error_rate = 1.0
    relay = await start_relay(breaker_failures=1, breaker_cooldown_s=0.1, send_timeout_s=1.5)
    await post_ids(relay, [registered(f"tok-h{i}", f"p{i}") for i in range(5)])
    await eventually(lambda: _circuit_is(relay, "open"))
    sandbox.sandbox.faults.error_rate, sandbox.sandbox.faults.hang = 0.0, True
    await eventually(lambda: _circuit_is(relay, "half_open"))
    cpu = time.process_time()
    await asyncio.sleep(0.8)  # the probe is hanging all this time
    assert await _circuit_is(relay, "half_open")
    # Idle waiting costs next to nothing; a loop re-checking the outbox burns the core.
    assert time.process_time() - cpu < 0.3


async def _circuit_is(relay: Relay, state: str) -> bool:
    return bool((await status_of(relay))["circuit"] == state)


async def test_dispatcher_survives_a_locked_outbox(
    start_relay: StartRelay, sandbox: RunningSandbox, settings: Settings
) -> None:
    """Another process holding the write lock makes claims fail for a while; delivery
    resumes by itself once the lock is gone."""
    import sqlite3
    import threading

    sandbox.sandbox.faults.error_rate = 1.0
    relay = await start_relay(breaker_failures=1000)
    [event_id] = await post_ids(relay, [registered("tok-lock", "p1")])
    await eventually(lambda: _attempts_at_least(relay, event_id, 2))
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        db = sqlite3.connect(settings.db_path, timeout=10)
        db.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(10)
        db.rollback()
        db.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        await asyncio.to_thread(locked.wait, 10)
        # Long enough for claims to give up on the lock (lock_timeout_s) and be retried.
        await asyncio.sleep(settings.lock_timeout_s * 2)
    finally:
        release.set()
        await asyncio.to_thread(holder.join)
    sandbox.sandbox.faults.error_rate = 0.0
    record = (await relay.wait_finished([event_id], timeout_s=20))[event_id]
    assert record["status"] == "delivered"

"""The sandbox answers like MMOLove's ingest API over a real socket, and its faults switch live."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import aiohttp
import pytest

from relay.sandbox import (
    DEMO_SECRET,
    DEMO_SERVER_ID,
    Faults,
    RunningSandbox,
    running_sandbox,
    serve_sandbox,
)
from relay.signing import HEADER, signature_header
from tests.support import eventually

SECRET = "test-secret"
SERVER = "srv-123"
VECTOR_BODY = (
    b'{"event":"registered","token":"mmref-example","server_id":"srv-123",'
    b'"referee_identity":"player-7842","server_event_id":"reg-7842","ts":1733500000}'
)
UTF8_VECTOR_BODY = (
    '{"event":"registered","token":"mmref-ü","server_id":"srv-123",'
    '"referee_identity":"Zoë","server_event_id":"reg-zoë","ts":1733500000}'
).encode()


class Reply(NamedTuple):
    status: int
    json: Any
    headers: Mapping[str, str]


def event(
    kind: str = "registered",
    token: str = "mmref-a",  # noqa: S107 (a referral token, not a credential)
    **fields: Any,
) -> dict[str, Any]:
    """A valid event body for ``token``; ``fields`` override or add to it."""
    body: dict[str, Any] = {
        "event": kind,
        "token": token,
        "server_id": SERVER,
        "server_event_id": f"{kind[:3]}-{token}",
    }
    if kind == "registered":
        body["referee_identity"] = f"player-{token}"
    return body | fields


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


async def send(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes | dict[str, Any],
    *,
    secret: str = SECRET,
    t: int | None = None,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> Reply:
    """POST the body signed at ``t`` (now by default) unless explicit headers are given."""
    raw = body if isinstance(body, bytes) else encode(body)
    if headers is None:
        headers = {HEADER: signature_header(raw, secret, int(time.time()) if t is None else t)}
    headers = {"Content-Type": "application/json", **headers}
    async with http.post(url, data=raw, headers=headers, **kwargs) as response:
        return Reply(response.status, await response.json(content_type=None), response.headers)


@pytest.fixture
async def upstream() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox({SERVER: SECRET}) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize(
    ("secret", "body", "token"),
    [(SECRET, VECTOR_BODY, "mmref-example"), ("s3cr3t-ü", UTF8_VECTOR_BODY, "mmref-ü")],
)
async def test_published_vector_body_signed_now_is_registered(
    http: aiohttp.ClientSession, secret: str, body: bytes, token: str
) -> None:
    async with running_sandbox({SERVER: secret}) as upstream:
        reply = await send(http, upstream.url, body, secret=secret)
        snapshot = upstream.sandbox.snapshot()
    assert reply.status == 200
    assert reply.json["ok"] is True
    assert reply.json["state"] == "registered"
    assert reply.json["referral_id"].startswith("ref_")
    assert snapshot["referrals"][f"{SERVER}/{token}"]["referral_id"] == reply.json["referral_id"]
    assert [record["outcome"] for record in snapshot["accepted"]] == ["accepted"]


async def test_trailing_newline_outside_the_signature_is_bad_signature(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    header = signature_header(VECTOR_BODY, SECRET, int(time.time()))
    reply = await send(http, upstream.url, VECTOR_BODY + b"\n", headers={HEADER: header})
    assert (reply.status, reply.json) == (401, {"error": "bad_signature"})
    assert upstream.sandbox.snapshot()["referrals"] == {}


async def test_signature_ten_minutes_old_is_bad_signature(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    reply = await send(http, upstream.url, VECTOR_BODY, t=int(time.time()) - 600)
    assert (reply.status, reply.json) == (401, {"error": "bad_signature"})


async def test_clock_offset_moves_the_replay_window(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    upstream.sandbox.faults.clock_offset_s = -600
    current = await send(http, upstream.url, VECTOR_BODY)
    old = await send(http, upstream.url, VECTOR_BODY, t=int(time.time()) - 600)
    assert current.status == 401
    assert (old.status, old.json["state"]) == (200, "registered")


async def test_a_kid_other_than_the_servers_current_one_is_bad_signature(
    http: aiohttp.ClientSession,
) -> None:
    async with running_sandbox({SERVER: SECRET}, kids={SERVER: "k-2"}) as upstream:
        replies = {}
        for kid in ("k-1", "k-2", None):
            body = encode(event(token=f"mmref-{kid}"))
            header = signature_header(body, SECRET, int(time.time()), kid)
            replies[kid] = (await send(http, upstream.url, body, headers={HEADER: header})).status
    # A header without a kid signs with the current key: MMOLove says no more about kid.
    assert replies == {"k-1": 401, "k-2": 200, None: 200}


@pytest.mark.parametrize(
    "headers",
    [{}, {HEADER: "v1=sha256=00"}, {HEADER: "t=soon,v1=sha256=00"}, {HEADER: "t=1733500000"}],
    ids=["missing", "no-t", "t-not-a-number", "no-v1"],
)
async def test_missing_or_malformed_signature_header_is_400(
    upstream: RunningSandbox, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    reply = await send(http, upstream.url, VECTOR_BODY, headers=headers)
    assert reply.status == 400
    assert HEADER in reply.json["error"]


async def test_exact_repeat_is_a_duplicate_with_one_effect(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    first = await send(http, upstream.url, VECTOR_BODY)
    again = await send(http, upstream.url, VECTOR_BODY, t=int(time.time()) - 5)
    snapshot = upstream.sandbox.snapshot()
    assert first.json["state"] == "registered"
    assert (again.status, again.json) == (200, {"ok": True, "duplicate": True})
    assert (snapshot["duplicates"], len(snapshot["accepted"]), snapshot["duplicate_sends"]) == (
        1,
        1,
        1,
    )


async def test_second_referrer_of_an_anchored_referee_is_ignored_first_touch(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    await send(http, upstream.url, event(token="mmref-a", referee_identity="player-1"))
    late = event(token="mmref-b", referee_identity="player-1")
    reply = await send(http, upstream.url, late)
    repeat = await send(http, upstream.url, late)
    snapshot = upstream.sandbox.snapshot()
    assert (reply.status, reply.json) == (200, {"ok": True, "ignored": "first_touch_conflict"})
    assert repeat.json == {"ok": True, "duplicate": True}
    assert [r["outcome"] for r in snapshot["accepted"]] == ["accepted", "ignored"]
    assert list(snapshot["referrals"]) == [f"{SERVER}/mmref-a"]


async def test_qualified_before_registered_is_422_and_not_remembered(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    early = await send(http, upstream.url, event("qualified"))
    await send(http, upstream.url, event("registered"))
    retried = await send(http, upstream.url, event("qualified"))
    assert (early.status, early.json) == (
        422,
        {"error": "illegal transition from none on qualified"},
    )
    assert (retried.status, retried.json["state"]) == (200, "qualified")


async def test_registered_then_qualified_keeps_the_referral_id(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    registered = await send(http, upstream.url, event("registered"))
    qualified = await send(http, upstream.url, event("qualified"))
    assert qualified.json == {
        "ok": True,
        "referral_id": registered.json["referral_id"],
        "state": "qualified",
    }
    referral = upstream.sandbox.snapshot()["referrals"][f"{SERVER}/mmref-a"]
    assert referral["state"] == "qualified"


async def test_repeats_under_new_event_ids_are_noops_and_registered_after_qualified_is_422(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    await send(http, upstream.url, event("registered", server_event_id="reg-1"))
    again = await send(http, upstream.url, event("registered", server_event_id="reg-2"))
    await send(http, upstream.url, event("qualified", server_event_id="qual-1"))
    requalified = await send(http, upstream.url, event("qualified", server_event_id="qual-2"))
    late = await send(http, upstream.url, event("registered", server_event_id="reg-3"))
    assert (again.status, again.json["state"]) == (200, "registered")
    assert (requalified.status, requalified.json["state"]) == (200, "qualified")
    assert late.json == {"error": "illegal transition from qualified on registered"}
    assert len(upstream.sandbox.snapshot()["accepted"]) == 4


async def test_reversed_reports_the_current_state_without_acting(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    orphan = await send(http, upstream.url, event("reversed"))
    await send(http, upstream.url, event("registered"))
    reversed_ = await send(http, upstream.url, event("reversed"))
    assert orphan.status == 422
    assert (reversed_.status, reversed_.json["state"]) == (200, "registered")


async def test_test_event_is_fully_verified_but_writes_nothing(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    dry = await send(http, upstream.url, event(test=True))
    stale = await send(http, upstream.url, event(test=True), t=int(time.time()) - 600)
    snapshot = upstream.sandbox.snapshot()
    real = await send(http, upstream.url, event())
    assert (dry.status, dry.json) == (200, {"ok": True, "test": True})
    assert stale.status == 401
    assert (snapshot["test_events"], snapshot["accepted"], snapshot["referrals"]) == (1, [], {})
    assert real.json["state"] == "registered"


async def test_unknown_token_is_404(upstream: RunningSandbox, http: aiohttp.ClientSession) -> None:
    upstream.sandbox.faults.unknown_tokens = {"mmref-gone"}
    reply = await send(http, upstream.url, event(token="mmref-gone"))
    assert (reply.status, reply.json) == (404, {"error": "unknown token"})


async def test_unknown_server_is_404(upstream: RunningSandbox, http: aiohttp.ClientSession) -> None:
    reply = await send(http, upstream.url, event(server_id="srv-nope"))
    assert (reply.status, reply.json) == (404, {"error": "unknown server"})


@pytest.mark.parametrize("body", [b'{"event":', b"\xff\xfe{}", b'{"ts":NaN}'])
async def test_signed_but_unparseable_body_is_400(
    upstream: RunningSandbox, http: aiohttp.ClientSession, body: bytes
) -> None:
    reply = await send(http, upstream.url, body)
    assert (reply.status, reply.json) == (400, {"error": "body is not valid JSON"})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event": "clicked"}, "event"),
        ({"token": "   "}, "token"),
        ({"server_id": 123}, "server_id"),
        ({"server_event_id": None}, "server_event_id"),
        ({"referee_identity": ""}, "referee_identity"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": True}, "ts"),
        ({"test": "yes"}, "test"),
    ],
)
async def test_invalid_field_is_400_naming_the_field(
    upstream: RunningSandbox, http: aiohttp.ClientSession, change: dict[str, Any], field: str
) -> None:
    reply = await send(http, upstream.url, event() | change)
    assert reply.status == 400
    assert reply.json["error"].startswith(field)


async def test_body_that_is_not_an_object_is_400(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    reply = await send(http, upstream.url, b"[]")
    assert (reply.status, reply.json) == (400, {"error": "body must be a JSON object"})


async def test_unknown_extra_fields_are_accepted(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    reply = await send(http, upstream.url, event(campaign="spring", level=12))
    assert (reply.status, reply.json["state"]) == (200, "registered")


async def test_throttle_answers_429_with_retry_after_for_the_next_n_requests(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    upstream.sandbox.faults.throttle_next = 2
    upstream.sandbox.faults.retry_after_s = 7
    replies = [await send(http, upstream.url, event()) for _ in range(3)]
    assert [reply.status for reply in replies] == [429, 429, 200]
    assert [reply.headers.get("Retry-After") for reply in replies[:2]] == ["7", "7"]
    snapshot = upstream.sandbox.snapshot()
    assert (snapshot["requests"], snapshot["by_status"]) == (3, {"429": 2, "200": 1})


async def test_request_log_counts_only_sends_of_an_already_accepted_event(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    """Sends before MMOLove accepts an event are retries, not duplicates; every send after,
    answered or not, is a duplicate send. Test events and unreadable bodies have no key."""
    faults = upstream.sandbox.faults
    faults.outage = True
    await send(http, upstream.url, event())  # refused before acceptance: a plain retry
    faults.outage = False
    await send(http, upstream.url, event())  # accepted
    await send(http, upstream.url, event())  # answered duplicate
    faults.outage = True
    await send(http, upstream.url, event())  # a repeat, though MMOLove answered 503
    faults.outage = False
    await send(http, upstream.url, event(test=True))
    await send(http, upstream.url, b"not json")
    log = upstream.sandbox.request_log()
    key = ("mmref-a", "registered", "reg-mmref-a")
    assert [(s.key, s.repeat, s.status) for s in log] == [
        (key, False, 503),
        (key, False, 200),
        (key, True, 200),
        (key, True, 503),
        (None, False, 200),
        (None, False, 400),
    ]
    assert upstream.sandbox.snapshot()["duplicate_sends"] == 2


async def test_outage_answers_503_before_any_signature_check(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    upstream.sandbox.faults.outage = True
    reply = await send(http, upstream.url, b"not even json", headers={})
    assert (reply.status, reply.json) == (503, {"error": "outage"})


async def test_faults_apply_in_order_so_a_redirect_leaves_the_throttle_untouched(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    faults = upstream.sandbox.faults
    faults.redirect_to = "https://mmolove.gg/api/referral/events"
    faults.throttle_next = 1
    reply = await send(http, upstream.url, event(), allow_redirects=False)
    assert (reply.status, reply.headers["Location"]) == (307, faults.redirect_to)
    assert faults.throttle_next == 1


async def test_error_rate_one_always_answers_the_error_status(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    upstream.sandbox.faults.error_rate = 1.0
    upstream.sandbox.faults.error_status = 502
    replies = [await send(http, upstream.url, event()) for _ in range(2)]
    assert [reply.status for reply in replies] == [502, 502]
    assert upstream.sandbox.snapshot()["accepted"] == []


async def test_latency_delays_normal_answers(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    upstream.sandbox.faults.latency_ms = 150
    started = time.monotonic()
    reply = await send(http, upstream.url, event())
    assert time.monotonic() - started >= 0.15
    assert reply.status == 200


async def test_slow_body_sends_headers_at_once_and_trickles_an_applied_answer(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    """The effect is applied before the body starts; a client that times out mid-body and
    resends gets the duplicate answer."""
    upstream.sandbox.faults.slow_body_ms = 400
    raw = encode(event())
    header = {HEADER: signature_header(raw, SECRET, int(time.time()))}
    started = time.monotonic()
    async with http.post(upstream.url, data=raw, headers=header) as response:
        headers_after = time.monotonic() - started
        assert response.status == 200
        assert (await response.json())["state"] == "registered"
    assert headers_after < 0.2
    assert time.monotonic() - started >= 0.4
    with pytest.raises(TimeoutError):
        await send(http, upstream.url, event(), timeout=aiohttp.ClientTimeout(total=0.1))
    upstream.sandbox.faults.slow_body_ms = 0
    assert (await send(http, upstream.url, event())).json == {"ok": True, "duplicate": True}
    snap = upstream.sandbox.snapshot()
    assert (len(snap["accepted"]), snap["duplicates"], snap["duplicate_sends"]) == (1, 2, 2)


async def test_hang_never_answers_and_lets_go_when_the_client_leaves(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    upstream.sandbox.faults.hang = True
    with pytest.raises(TimeoutError):
        await send(http, upstream.url, event(), timeout=aiohttp.ClientTimeout(total=0.3))
    await eventually(lambda: upstream.sandbox.snapshot()["dropped"] == 1, timeout_s=1)
    assert upstream.sandbox.snapshot()["by_status"] == {}


@pytest.mark.timed  # shutdown is timed in wall-clock seconds
async def test_hung_request_does_not_hold_up_shutdown(http: aiohttp.ClientSession) -> None:
    async with running_sandbox({SERVER: SECRET}) as upstream:
        upstream.sandbox.faults.hang = True
        request = asyncio.create_task(send(http, upstream.url, event()), name="hung-request")
        await eventually(lambda: upstream.sandbox.snapshot()["requests"] == 1, timeout_s=1)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 0.3
    with pytest.raises(aiohttp.ClientConnectionError):
        await request


async def test_reset_drops_the_connection_without_a_response_or_traceback(
    upstream: RunningSandbox, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.sandbox.faults.reset = True
    with (
        caplog.at_level(logging.DEBUG, logger="aiohttp"),
        pytest.raises(aiohttp.ClientConnectionError),
    ):
        await send(http, upstream.url, event())
    await asyncio.sleep(0.05)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert upstream.sandbox.snapshot()["dropped"] == 1


async def test_faults_endpoint_merges_only_the_given_fields(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    faults = upstream.sandbox.faults
    faults.error_status = 418
    async with http.post(
        f"{upstream.base_url}/_sandbox/faults",
        json={"outage": True, "unknown_tokens": ["mmref-x"], "latency_ms": 1},
    ) as response:
        assert response.status == 200
    assert (faults.outage, faults.unknown_tokens, faults.latency_ms) == (True, {"mmref-x"}, 1.0)
    assert faults.error_status == 418
    assert (await send(http, upstream.url, event())).status == 503


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"outage": True, "outrage": True}, "unknown fault field 'outrage'"),
        ({"outage": True, "latency_ms": "slow"}, "fault field 'latency_ms' must be a number"),
        ({"outage": True, "throttle_next": 1.5}, "fault field 'throttle_next' must be an integer"),
        ({"outage": 1}, "fault field 'outage' must be a boolean"),
        ({"unknown_tokens": "mmref-x"}, "fault field 'unknown_tokens' must be a list of strings"),
    ],
)
async def test_faults_endpoint_refuses_bad_fields_and_applies_none(
    upstream: RunningSandbox, http: aiohttp.ClientSession, change: dict[str, Any], error: str
) -> None:
    async with http.post(f"{upstream.base_url}/_sandbox/faults", json=change) as response:
        assert (response.status, await response.json()) == (400, {"error": error})
    assert upstream.sandbox.faults.outage is False


async def test_state_endpoint_returns_the_snapshot(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    await send(http, upstream.url, event())
    async with http.get(f"{upstream.base_url}/_sandbox/state") as response:
        state = await response.json()
    assert state == upstream.sandbox.snapshot()
    assert state["by_status"] == {"200": 1}


async def test_reset_endpoint_clears_state_and_the_held_faults_object(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    faults = upstream.sandbox.faults
    await send(http, upstream.url, event())
    faults.unknown_tokens.add("mmref-x")
    faults.latency_ms = 5
    async with http.post(f"{upstream.base_url}/_sandbox/reset") as response:
        assert response.status == 200
    assert upstream.sandbox.faults is faults
    assert (faults.unknown_tokens, faults.latency_ms) == (set(), 0)
    assert upstream.sandbox.snapshot()["requests"] == 0
    assert (await send(http, upstream.url, event())).json["state"] == "registered"


async def test_date_header_follows_the_sandbox_clock(
    upstream: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    upstream.sandbox.faults.clock_offset_s = 3600
    refused = await send(http, upstream.url, event(), headers={})
    async with http.get(f"{upstream.base_url}/_sandbox/state") as response:
        state_date = response.headers["Date"]
    for date in (refused.headers["Date"], state_date):
        skew = (parsedate_to_datetime(date) - datetime.now(UTC)).total_seconds()
        assert 3595 < skew < 3605


async def test_serve_sandbox_reports_its_url_and_stops_on_shutdown(
    http: aiohttp.ClientSession,
) -> None:
    shutdown = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve_sandbox(
            {DEMO_SERVER_ID: DEMO_SECRET},
            host="127.0.0.1",
            port=0,
            faults=Faults(),
            shutdown=shutdown,
            on_ready=ready.set_result,
        ),
        name="sandbox-server",
    )
    async with asyncio.timeout(1):
        url = await ready
    reply = await send(http, url, event(server_id=DEMO_SERVER_ID), secret=DEMO_SECRET)
    shutdown.set()
    async with asyncio.timeout(1):
        await server
    assert url.startswith("http://127.0.0.1:")
    assert url.endswith("/api/referral/events")
    assert ":0/" not in url
    assert reply.json["state"] == "registered"

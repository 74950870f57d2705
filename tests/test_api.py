"""Ingest API: every rejection answers the right 4xx with code, message and field, and
stores nothing; acceptance answers only once durable; repeats are told from conflicts."""

from __future__ import annotations

import io
import json
import stat
from typing import Any

import pytest

from relay.config.values import Secret
from tests.support import SERVER, Relay, StartRelay, qualified, registered

pytestmark = pytest.mark.timeout(30)


async def stored(relay: Relay) -> int:
    _, status = await relay.get("/v1/status")
    return sum(status["counts"].values())


async def post_raw(
    relay: Relay, data: bytes, content_type: str = "application/json", path: str = "/v1/events"
) -> tuple[int, dict[str, Any]]:
    async with relay.http.post(
        relay.url + path, data=data, headers={"Content-Type": content_type}
    ) as resp:
        return resp.status, await resp.json()


INVALID_EVENTS: list[tuple[str, Any, int, str, str | None]] = [
    ("array instead of object", [registered("t", "p")], 422, "not_an_object", None),
    ("missing event", {"token": "t", "server_event_id": "s"}, 422, "missing_field", "event"),
    (
        "missing token",
        {"event": "qualified", "server_event_id": "s"},
        422,
        "missing_field",
        "token",
    ),
    (
        "missing server_event_id",
        {"event": "qualified", "token": "t"},
        422,
        "missing_field",
        "server_event_id",
    ),
    (
        "registered without referee",
        {"event": "registered", "token": "t", "server_event_id": "s"},
        422,
        "missing_field",
        "referee_identity",
    ),
    ("unknown event", {**qualified("t", "p"), "event": "clicked"}, 422, "invalid_field", "event"),
    ("typo field", {**qualified("t", "p"), "tokn": "x"}, 422, "unknown_field", "tokn"),
    ("token not string", {**qualified("t", "p"), "token": 42}, 422, "invalid_field", "token"),
    ("blank token", {**qualified("t", "p"), "token": "   "}, 422, "invalid_field", "token"),
    ("huge token", {**qualified("t", "p"), "token": "x" * 600}, 422, "invalid_field", "token"),
    (
        "ts in milliseconds",
        {**qualified("t", "p"), "ts": 1733500000000},
        422,
        "invalid_field",
        "ts",
    ),
    ("ts negative", {**qualified("t", "p"), "ts": -5}, 422, "invalid_field", "ts"),
    ("ts boolean", {**qualified("t", "p"), "ts": True}, 422, "invalid_field", "ts"),
    ("ts string", {**qualified("t", "p"), "ts": "1733500000"}, 422, "invalid_field", "ts"),
    ("ts tiny float", {**qualified("t", "p"), "ts": 5e-324}, 422, "invalid_field", "ts"),
    ("ts fraction", {**qualified("t", "p"), "ts": 1733500000.5}, 422, "invalid_field", "ts"),
    ("NUL in token", {**qualified("t", "p"), "token": "a\x00b"}, 422, "invalid_field", "token"),
    (
        "newline in server_event_id",
        {**qualified("t", "p"), "server_event_id": "q-1\nq-2"},
        422,
        "invalid_field",
        "server_event_id",
    ),
    (
        "ESC in referee_identity",
        {**registered("t", "p"), "referee_identity": "a\x1b]0;owned\x07"},
        422,
        "invalid_field",
        "referee_identity",
    ),
    (
        "NUL in referee_identity",
        {**qualified("t", "p"), "referee_identity": "a\x00b"},
        422,
        "invalid_field",
        "referee_identity",
    ),
    ("test not boolean", {**qualified("t", "p"), "test": "yes"}, 422, "invalid_field", "test"),
    (
        "unknown server",
        {**qualified("t", "p"), "server_id": "srv-other"},
        422,
        "unknown_server",
        "server_id",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "code", "field"), INVALID_EVENTS, ids=[c[0] for c in INVALID_EVENTS]
)
async def test_invalid_event_is_rejected_with_field_and_not_stored(
    start_relay: StartRelay, case: str, body: Any, status: int, code: str, field: str | None
) -> None:
    relay = await start_relay()
    got_status, answer = await relay.post(body)
    assert got_status == status, answer
    assert answer["error"]["code"] == code
    assert answer["error"]["field"] == field
    assert answer["error"]["message"]
    assert await stored(relay) == 0


BAD_BODIES = [
    (b'{"event": "registered",', "application/json", 400, "invalid_json"),
    (b"\xff\xfe not utf-8", "application/json", 400, "invalid_json"),
    (
        b'{"event": "qualified", "token": "t", "server_event_id": "s", "ts": NaN}',
        "application/json",
        400,
        "invalid_json",
    ),
    (
        b'{"event": "qualified", "token": "a", "token": "b", "server_event_id": "s"}',
        "application/json",
        422,
        "repeated_field",
    ),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 413, "body_too_large"),
    (
        b"event=registered&token=t",
        "application/x-www-form-urlencoded",
        415,
        "unsupported_media_type",
    ),
    (json.dumps(qualified("t", "p")).encode(), "text/plain", 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(("data", "content_type", "status", "code"), BAD_BODIES)
async def test_bad_body_answers_4xx_json_and_stores_nothing(
    start_relay: StartRelay, data: bytes, content_type: str, status: int, code: str
) -> None:
    relay = await start_relay(max_body_bytes=64 * 1024)
    got_status, answer = await post_raw(relay, data, content_type)
    assert (got_status, answer["error"]["code"]) == (status, code)
    assert await stored(relay) == 0


async def test_deep_nesting_within_size_limit_is_a_clear_400(start_relay: StartRelay) -> None:
    relay = await start_relay()
    got_status, answer = await post_raw(relay, b"[" * 50_000 + b"]" * 50_000)
    assert got_status == 400
    assert answer["error"]["code"] == "invalid_json"
    assert await stored(relay) == 0


async def test_accept_is_202_with_id_then_exact_repeat_is_200_duplicate(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay()
    status, first = await relay.post(registered("tok-a", "p1"))
    assert status == 202
    assert first["status"] in ("pending", "in_flight", "delivered")
    assert first["duplicate"] is False
    # The client retries without ts, as before: the relay filled ts the first time, and
    # the retry must still count as the same event.
    status, again = await relay.post(registered("tok-a", "p1"))
    assert status == 200
    assert again["duplicate"] is True
    assert again["id"] == first["id"]
    assert again["token"] == "tok-a"
    assert await stored(relay) == 1


async def test_same_key_with_different_payload_is_409(start_relay: StartRelay) -> None:
    relay = await start_relay()
    status, first = await relay.post(registered("tok-b", "p1", ts=1733500000))
    assert status == 202
    status, answer = await relay.post(registered("tok-b", "p1", ts=1733500001))
    assert status == 409
    assert answer["error"]["code"] == "conflict"
    assert answer["error"]["field"] == "server_event_id"
    assert answer["id"] == first["id"]
    status, _ = await relay.post(
        {**registered("tok-b", "p1"), "referee_identity": "p2", "server_event_id": "reg-p1"}
    )
    assert status == 409
    assert await stored(relay) == 1


async def test_trimmed_strings_are_the_same_event(start_relay: StartRelay) -> None:
    relay = await start_relay()
    assert (await relay.post(qualified("tok-c", "p1")))[0] == 202
    status, answer = await relay.post({**qualified("tok-c", "p1"), "token": " tok-c "})
    assert (status, answer["duplicate"]) == (200, True)


async def test_canonical_body_is_compact_utf8_in_documented_order(
    start_relay: StartRelay,
) -> None:
    """The stored bytes are the ones signed and sent: compact, unescaped UTF-8, key order
    as in MMOLove's examples, server_id and ts added by the relay."""
    relay = await start_relay()
    body = {
        "ts": 1733500000,
        "server_event_id": "reg-zoë",
        "referee_identity": "Zoë",
        "token": "mmref-ü",
        "event": "registered",
    }
    status, answer = await relay.post(body)
    assert status == 202
    _, record = await relay.get(f"/v1/events/{answer['id']}")
    assert record["body"] == (
        '{"event":"registered","token":"mmref-ü","server_id":"srv-1",'
        '"referee_identity":"Zoë","server_event_id":"reg-zoë","ts":1733500000}'
    )


async def test_extra_fields_rejected_by_default_and_kept_when_allowed(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(allow_extra_fields=True)
    status, answer = await relay.post(
        {**qualified("tok-x", "p"), "ts": 1733500000, "campaign": "w1"}
    )
    assert status == 202
    _, record = await relay.get(f"/v1/events/{answer['id']}")
    assert record["body"].endswith(',"ts":1733500000,"campaign":"w1"}')


async def test_batch_stores_valid_items_and_answers_per_item(start_relay: StartRelay) -> None:
    relay = await start_relay()
    assert (await relay.post(registered("tok-d", "p0")))[0] == 202
    items = [
        registered("tok-e", "p1"),
        {"event": "registered", "token": "tok-e"},
        registered("tok-d", "p0"),
        {**registered("tok-d", "p0"), "referee_identity": "other"},
        qualified("tok-e", "p1"),
    ]
    status, answer = await relay.post(items, path="/v1/events/batch")
    assert status == 200
    results = answer["results"]
    assert [r["status"] for r in results] == [202, 422, 200, 409, 202]
    assert results[1]["error"]["field"] == "server_event_id"
    assert results[2]["duplicate"] is True
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert await stored(relay) == 3


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ([], 422, "not_an_array"),
        ({"events": []}, 422, "not_an_array"),
        ([qualified(f"t{i}", "p") for i in range(6)], 413, "batch_too_large"),
    ],
)
async def test_batch_shape_errors(
    start_relay: StartRelay, body: Any, status: int, code: str
) -> None:
    relay = await start_relay(max_batch=5)
    got, answer = await relay.post(body, path="/v1/events/batch")
    assert (got, answer["error"]["code"]) == (status, code)
    assert await stored(relay) == 0


async def test_lookup_by_id_server_event_id_and_token(start_relay: StartRelay) -> None:
    relay = await start_relay()
    _, reg = await relay.post(registered("tok-f", "p1"))
    _, qual = await relay.post(qualified("tok-f", "p1"))
    records = await relay.wait_finished([reg["id"], qual["id"]])
    assert records[qual["id"]]["state"] == "qualified"
    assert records[qual["id"]]["referral_id"] == records[reg["id"]]["referral_id"]
    assert records[reg["id"]]["delivery_log"][0]["http_status"] == 200

    status, found = await relay.get("/v1/events?server_event_id=qual-p1")
    assert status == 200
    assert [e["id"] for e in found["events"]] == [qual["id"]]
    _, by_token = await relay.get("/v1/events?token=tok-f")
    assert [e["id"] for e in by_token["events"]] == [qual["id"], reg["id"]]  # newest first

    assert (await relay.get("/v1/events/999999"))[0] == 404
    assert (await relay.get("/v1/events/abc"))[0] == 404
    _, everything = await relay.get("/v1/events")
    assert [e["id"] for e in everything["events"]] == [qual["id"], reg["id"]]
    _, page = await relay.get("/v1/events?limit=1&status=delivered&event=registered")
    assert ([e["id"] for e in page["events"]], page["total"]) == ([reg["id"]], 1)
    for bad in ("?colour=red", "?since=soon", "?limit=0", "?limit=1e9"):
        status, answer = await relay.get("/v1/events" + bad)
        assert status == 422, (bad, answer)
    assert (await relay.get("/v1/nothing-here"))[0] == 404


async def test_ingest_token_is_required_when_configured(start_relay: StartRelay) -> None:
    relay = await start_relay(ingest_token=Secret("tok-en"))
    status, answer = await relay.post(qualified("tok-g", "p"))
    assert (status, answer["error"]["code"]) == (401, "unauthorized")
    status, _ = await relay.post(qualified("tok-g", "p"), headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, _ = await relay.post(
        qualified("tok-g", "p"), headers={"Authorization": "Bearer tok-en"}
    )
    assert status == 202
    for probe in ("/healthz", "/readyz"):
        async with relay.http.get(relay.url + probe) as resp:
            assert resp.status == 200, probe  # probes carry no token
    for private in ("/v1/status", "/metrics", "/v1/events"):
        async with relay.http.get(relay.url + private) as resp:
            assert resp.status == 401, private


async def test_several_servers_need_server_id(start_relay: StartRelay, settings: Any) -> None:
    from relay.config.values import ServerConfig

    two = (*settings.servers, ServerConfig("srv-2", Secret("s2")))
    relay = await start_relay(servers=two)
    status, answer = await relay.post(qualified("tok-h", "p"))
    assert (status, answer["error"]["field"]) == (422, "server_id")
    status, _ = await relay.post({**qualified("tok-h", "p"), "server_id": SERVER})
    assert status == 202


async def test_wrong_method_is_json_405(start_relay: StartRelay) -> None:
    relay = await start_relay()
    async with relay.http.put(relay.url + "/v1/events") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"


async def test_concurrent_ingests_are_all_acknowledged(start_relay: StartRelay) -> None:
    """Group commit: 300 concurrent posts each get their own id, all stored."""
    import asyncio

    relay = await start_relay()
    answers = await asyncio.gather(
        *(relay.post(qualified(f"tok-{i}", f"p{i}", test=True)) for i in range(300))
    )
    assert {s for s, _ in answers} == {202}
    assert len({a["id"] for _, a in answers}) == 300
    assert await stored(relay) == 300


async def test_client_errors_never_use_aiohttp_default_text(start_relay: StartRelay) -> None:
    relay = await start_relay()
    async with relay.http.post(
        relay.url + "/v1/events",
        data=io.BytesIO(b"x" * 2_000_000),
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
        assert resp.content_type == "application/json"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b'{"event":"qualified","token":"\\ud800","server_event_id":"s"}', 422, "invalid_text"),
        (
            b'{"event":"qualified","token":"t","server_event_id":"s","ts":' + b"9" * 400 + b"}",
            422,
            "invalid_field",
        ),
        (
            b'{"event":"qualified","token":"t","server_event_id":"s","ts":' + b"9" * 5000 + b"}",
            400,
            "invalid_json",
        ),
    ],
)
async def test_pathological_values_are_4xx_not_5xx(
    start_relay: StartRelay, data: bytes, status: int, code: str
) -> None:
    relay = await start_relay()
    got, answer = await post_raw(relay, data)
    assert (got, answer["error"]["code"]) == (status, code)
    got, answer = await post_raw(relay, b"[" + data + b"]", path="/v1/events/batch")
    if status == 400:  # the whole body is unreadable
        assert (got, answer["error"]["code"]) == (400, code)
    else:  # one bad item: answered in its result
        assert (got, answer["results"][0]["status"]) == (200, status)
    assert await stored(relay) == 0


@pytest.mark.parametrize("event_id", ["²", "99999999999999999999", "-1"])
async def test_odd_ids_are_404(start_relay: StartRelay, event_id: str) -> None:
    relay = await start_relay()
    status, answer = await relay.get(f"/v1/events/{event_id}")
    assert (status, answer["error"]["code"]) == (404, "not_found")


async def test_non_utf8_bearer_token_is_401(start_relay: StartRelay) -> None:
    relay = await start_relay(ingest_token=Secret("tok-en"))
    async with relay.http.post(
        relay.url + "/v1/events",
        data=b"{}",
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer \udcff".encode("utf-8", "surrogateescape").decode("latin-1"),
        },
    ) as resp:
        assert resp.status == 401


async def test_reload_adds_a_server_to_ingest(start_relay: StartRelay, settings: Any) -> None:
    from dataclasses import replace

    from relay.config.values import ServerConfig

    relay = await start_relay()
    body = {**qualified("tok-new", "p"), "server_id": "srv-2", "test": True}
    assert (await relay.post(body))[0] == 422
    two = (*settings.servers, ServerConfig("srv-2", Secret("s2")))
    relay.handle.reload(replace(settings, servers=two))
    assert (await relay.post(body))[0] == 202


async def test_unix_socket_listener(start_relay: StartRelay, tmp_path: Any) -> None:
    """A sidecar or a same-host game server can use a Unix socket instead of a port."""
    import aiohttp

    from relay.config.values import Listen

    path = tmp_path / "relay.sock"
    relay = await start_relay(listen=Listen(path=path))
    assert relay.url == f"unix:{path}"
    # The owner and its group may connect; others may not.
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as http:
        async with http.post("http://relay/v1/events", json=qualified("tok-u", "p")) as resp:
            assert resp.status == 202
        async with http.get("http://relay/healthz") as resp:
            assert (await resp.json()) == {"ok": True}


async def test_low_disk_answers_503_with_retry_after_and_stores_nothing(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(min_free_bytes=10**18)  # more than any disk has free
    async with relay.http.post(relay.url + "/v1/events", json=qualified("tok-d", "p")) as resp:
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) > 0
        answer = await resp.json()
    assert answer["error"]["code"] == "unavailable"
    assert "free" in answer["error"]["message"]
    assert await stored(relay) == 0
    async with relay.http.get(relay.url + "/healthz") as resp:
        assert resp.status == 200  # the daemon stays up


async def test_a_status_filter_outside_the_statuses_is_422(start_relay: StartRelay) -> None:
    """It once answered 200 with total=0, as if no event had that status."""
    relay = await start_relay()
    status, answer = await relay.get("/v1/events?status=delivred")
    assert status == 422
    assert (answer["error"]["code"], answer["error"]["field"]) == ("invalid_filter", "status")
    assert "pending, in_flight, delivered, dead" in answer["error"]["message"]
    assert (await relay.get("/v1/events?status=delivered"))[0] == 200

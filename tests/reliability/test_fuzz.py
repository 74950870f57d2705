"""Bad input, generated: only 4xx answers, never a 5xx or a dropped connection for a
well-formed HTTP request, nothing stored, and the daemon healthy after.

Hypothesis drives a blocking HTTP client in a worker thread while the relay runs on the
test's event loop, so each request is a real one over loopback.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.events import KNOWN_FIELDS, MAX_FIELD_CHARS
from tests.reliability.checker import record
from tests.support import Relay, StartRelay, registered

MAX_BODY_BYTES = 16 * 1024
EXAMPLES = 300  # per strategy

json_values = st.recursive(
    # No infinities: json.dumps writes them as Infinity, which is not JSON at all (a 400 for
    # the whole body, where a batch item expects its own 422).
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
STRING_FIELDS = ("event", "token", "server_event_id", "referee_identity")
valid = registered("fuzz-valid")


def wrong_for(field: str) -> st.SearchStrategy[Any]:
    """Values that field never accepts."""
    if field in STRING_FIELDS:
        return (
            json_values.filter(lambda v: not isinstance(v, str))
            | st.just("   ")
            # Too long even once the surrounding whitespace the relay strips is gone.
            | st.text(min_size=MAX_FIELD_CHARS + 1, max_size=MAX_FIELD_CHARS + 50).filter(
                lambda v: len(v.strip()) > MAX_FIELD_CHARS
            )
        )
    if field == "test":
        # null is accepted as "not a test" (validate() treats an optional null as absent).
        return json_values.filter(lambda v: not isinstance(v, bool) and v is not None)
    if field == "ts":
        return json_values.filter(lambda v: isinstance(v, str | list | dict | bool) or v is None)
    return json_values  # server_id: a single-server relay knows only its own


invalid_events = st.one_of(
    # One field made wrong.
    st.sampled_from([f for f in KNOWN_FIELDS if f != "server_id"]).flatmap(
        lambda f: wrong_for(f).map(lambda v: {**valid, f: v})
    ),
    # A required field missing.
    st.sampled_from(("event", "token", "server_event_id", "referee_identity")).map(
        lambda f: {k: v for k, v in valid.items() if k != f}
    ),
    # An unknown field.
    st.text(min_size=1).filter(lambda k: k not in KNOWN_FIELDS).map(lambda k: {**valid, k: 1}),
    # Anything at all that is not an object, or an object of random keys.
    json_values.filter(lambda v: not isinstance(v, dict) or "event" not in v),
)
raw_bodies = st.one_of(
    st.binary(max_size=200),  # mostly invalid UTF-8 or invalid JSON
    st.sampled_from([b"[" * 50_000, b'{"a":' * 5_000, b"\xff\xfe{}", b"{" + b" " * 100]),
    st.builds(lambda n: json.dumps(valid).encode()[:n], st.integers(0, 60)),  # truncated
    st.integers(MAX_BODY_BYTES + 1, 4 * MAX_BODY_BYTES).map(
        lambda n: b'{"event":"' + b"x" * n + b'"}'  # oversized
    ),
)


class Client:
    """A blocking client over a fresh connection per request, as a game server might use."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.statuses: Counter[int] = Counter()

    def post(
        self, path: str, body: bytes, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": content_type})
            resp = conn.getresponse()  # a dropped connection raises here and fails the test
            answer = resp.read()
        finally:
            conn.close()
        self.statuses[resp.status] += 1
        assert resp.status < 500, (resp.status, body[:200], answer[:300])
        parsed = json.loads(answer)
        if resp.status >= 400:
            assert parsed["error"]["code"], answer
            assert parsed["error"]["message"], answer
        return resp.status, parsed


def fuzz(client: Client) -> None:
    common = settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same cases in every run: a failure reproduces
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )

    @common
    @given(event=invalid_events, path=st.sampled_from(["/v1/events", "/v1/events/batch"]))
    def invalid_json_events(event: Any, path: str) -> None:
        as_item = path.endswith("batch")
        status, answer = client.post(path, json.dumps([event] if as_item else event).encode())
        if as_item:  # a batch answers 200 with a result per item: each must be a refusal
            assert status == 200, answer
            assert [r["status"] for r in answer["results"]] == [422], answer
        else:
            assert status in (400, 413, 422), answer

    @common
    @given(body=raw_bodies, path=st.sampled_from(["/v1/events", "/v1/events/batch"]))
    def raw(body: bytes, path: str) -> None:
        assert client.post(path, body)[0] in (400, 413, 422)

    @common
    @given(content_type=st.sampled_from(["text/plain", "application/x-www-form-urlencoded", ""]))
    def wrong_type(content_type: str) -> None:
        assert client.post("/v1/events", json.dumps(valid).encode(), content_type)[0] == 415

    invalid_json_events()
    raw()
    wrong_type()


def garbage_http(host: str, port: int, payloads: list[bytes]) -> int:
    """Send malformed HTTP on raw sockets; returns how many got an HTTP 4xx status line."""
    answered = 0
    for payload in payloads:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        if reply:
            assert reply.startswith(b"HTTP/1."), reply[:200]
            assert reply[9:10] == b"4", reply[:200]
            answered += 1
    return answered


GARBAGE = [
    b"\x00\x01\x02\x03" * 50,
    b"GET / HTTP/9.9\r\n\r\n",
    b"POST /v1/events HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    b"POST /v1/events HTTP/1.1\r\nContent-Length: 10\r\n\r\n{",  # truncated, then closed
    b"POST /v1/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/events HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n",
    b"\r\n\r\n\r\n",
    b"POST /v1/events HTTP/1.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 99999999999\r\n\r\n",
]


async def stored(relay: Relay) -> int:
    _, status = await relay.get("/v1/status")
    return sum(status["counts"].values())


@pytest.mark.long
async def test_fuzzed_ingest_gets_only_4xx_stores_nothing_and_leaves_the_daemon_healthy(
    start_relay: StartRelay,
) -> None:
    """Hypothesis-generated bodies and raw garbage: 4xx only, 0 stored, still serving."""
    relay = await start_relay(max_body_bytes=MAX_BODY_BYTES)
    client = Client(relay.url)
    await asyncio.to_thread(fuzz, client)
    answered = await asyncio.to_thread(garbage_http, client.host, client.port, GARBAGE)

    kept = await stored(relay)
    assert kept == 0, "a refused input was stored"
    status, health = await relay.get("/healthz")
    assert (status, health) == (200, {"ok": True})
    status, answer = await relay.post(valid)
    assert status == 202, answer
    requests = sum(client.statuses.values())
    record(
        {
            "scenario": "bad input: fuzzed ingest",
            "requests": requests,
            "by_status": dict(sorted(client.statuses.items())),
            "server_errors": sum(n for s, n in client.statuses.items() if s >= 500),
            "garbage_connections": len(GARBAGE),
            "garbage_answered_4xx": answered,
            "stored": kept,
        }
    )
    assert requests >= 3 * EXAMPLES // 2

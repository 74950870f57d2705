"""A web page in a browser on the game host cannot use the API: the attacks of issue 25
(a text/plain form POST to purge, DNS rebinding to read and forge, a foreign Origin) are
refused, while programs, sidecars and the Unix socket keep working."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.config.values import Listen, Secret
from relay.sandbox import RunningSandbox
from tests.support import Relay, StartRelay, qualified, registered

pytestmark = pytest.mark.timeout(30)
TOKEN = "ingest-token-for-origin-tests"


async def stored(relay: Relay) -> int:
    _, status = await relay.get("/v1/status")
    return sum(status["counts"].values())


async def send(
    relay: Relay, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    async with relay.http.request(method, relay.url + path, data=data, headers=headers) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text.startswith("{") else text


async def two_dead_events(relay: Relay, sandbox: RunningSandbox) -> None:
    sandbox.sandbox.faults.unknown_tokens.add("tok-dead")
    _, reg = await relay.post(registered("tok-dead", "p-dead"))
    _, qual = await relay.post(qualified("tok-dead", "p-dead"))
    await relay.wait_finished([reg["id"], qual["id"]])


async def test_a_text_plain_form_post_cannot_purge_dead_events(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    """What a cross-site <form enctype="text/plain"> sends: no preflight, so it must fail."""
    relay = await start_relay()
    await two_dead_events(relay, sandbox)
    purge = {"status": "dead", "before": 2**40}
    status, answer = await send(
        relay, "POST", "/v1/admin/purge", purge, **{"Content-Type": "text/plain"}
    )
    assert (status, answer["error"]["code"]) == (415, "unsupported_media_type")
    status, answer = await send(relay, "POST", "/v1/admin/retry", {"ids": [1]})  # no type at all
    assert status == 415
    _, dead = await relay.get("/v1/events?status=dead")
    assert dead["total"] == 2
    # The CLI's own call, JSON from this machine, still purges.
    status, answer = await send(
        relay, "POST", "/v1/admin/purge", purge, **{"Content-Type": "application/json"}
    )
    assert status == 200, answer
    assert answer["purged"] == 2


async def test_dns_rebinding_can_neither_read_nor_forge(start_relay: StartRelay) -> None:
    """A page at evil.example re-resolved to 127.0.0.1 sends its own name as Host and Origin."""
    relay = await start_relay()
    _, ours = await relay.post(registered("tok-real", "p-real"))
    port = relay.url.rsplit(":", 1)[1]
    page = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    for path in ("/v1/events", f"/v1/events/{ours['id']}", "/v1/status", "/metrics"):
        status, answer = await send(relay, "GET", path, **page)
        assert (status, answer["error"]["code"]) == (421, "unknown_host"), path
        assert "tok-real" not in json.dumps(answer)
    forged = qualified("tok-real", "p-real")
    status, answer = await send(
        relay, "POST", "/v1/events", forged, **page, **{"Content-Type": "application/json"}
    )
    assert (status, answer["error"]["code"]) == (421, "unknown_host")
    assert "allowed_hosts" in answer["error"]["message"]
    assert await stored(relay) == 1


async def test_a_foreign_origin_is_refused_even_under_a_loopback_host(
    start_relay: StartRelay,
) -> None:
    """A page on another site, or on another local port, posting to 127.0.0.1 directly."""
    relay = await start_relay()
    for origin in ("https://attacker.example", "http://localhost:3000", "null"):
        status, answer = await send(
            relay,
            "POST",
            "/v1/events",
            qualified("tok-o", "p"),
            Origin=origin,
            **{"Content-Type": "application/json"},
        )
        assert (status, answer["error"]["code"]) == (403, "cross_origin"), origin
    assert await stored(relay) == 0


async def test_the_relay_grants_no_cross_origin_request(start_relay: StartRelay) -> None:
    """A browser's preflight gets no Access-Control-Allow-* header, so it stops there."""
    relay = await start_relay()
    status, _ = await send(
        relay,
        "OPTIONS",
        "/v1/events",
        Origin="https://attacker.example",
        **{
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    async with relay.http.options(
        relay.url + "/v1/events", headers={"Access-Control-Request-Method": "POST"}
    ) as resp:
        granted = [h for h in resp.headers if h.lower().startswith("access-control-allow")]
    assert status >= 400
    assert granted == []


async def test_programs_keep_working_under_loopback_names_and_configured_ones(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(allowed_hosts=("relay.lan",))
    port = relay.url.rsplit(":", 1)[1]
    for n, host in enumerate(("127.0.0.1", "localhost", "LocalHost", "relay.lan", "[::1]")):
        status, answer = await send(
            relay,
            "POST",
            "/v1/events",
            qualified(f"tok-{n}", "p"),
            Host=f"{host}:{port}",
            **{"Content-Type": "application/json"},
        )
        assert status == 202, (host, answer)
    status, _ = await send(relay, "GET", "/v1/events", Host=f"relay.lan:{port}")
    assert status == 200


async def test_a_sidecar_with_a_token_answers_under_its_service_name(
    start_relay: StartRelay,
) -> None:
    """A pod reaches the relay as http://relay:8787: the bearer token is what guards it."""
    relay = await start_relay(ingest_token=Secret(TOKEN))
    port = relay.url.rsplit(":", 1)[1]
    json_type = {"Content-Type": "application/json"}
    status, _ = await send(
        relay,
        "POST",
        "/v1/events",
        qualified("tok-s", "p"),
        Host=f"relay:{port}",
        Authorization=f"Bearer {TOKEN}",
        **json_type,
    )
    assert status == 202
    # A foreign Origin is refused there too, token or not.
    status, answer = await send(
        relay,
        "POST",
        "/v1/events",
        qualified("tok-s2", "p"),
        Origin="https://attacker.example",
        Authorization=f"Bearer {TOKEN}",
        **json_type,
    )
    assert (status, answer["error"]["code"]) == (403, "cross_origin")


async def test_the_token_is_accepted_only_with_the_bearer_scheme(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(ingest_token=Secret(TOKEN))
    json_type = {"Content-Type": "application/json"}
    for header in (TOKEN, f"Basic {TOKEN}", f"Token {TOKEN}"):
        status, answer = await send(
            relay, "POST", "/v1/events", qualified("tok-b", "p"), Authorization=header, **json_type
        )
        assert (status, answer["error"]["code"]) == (401, "unauthorized"), header
    for header in (f"Bearer {TOKEN}", f"bearer {TOKEN}"):
        status, _ = await send(
            relay, "POST", "/v1/events", qualified("tok-b", "p"), Authorization=header, **json_type
        )
        assert status in (200, 202), header


async def test_the_unix_socket_takes_any_host(start_relay: StartRelay, tmp_path: Path) -> None:
    """No browser opens a Unix socket; its clients name it as they like (curl: localhost)."""
    path = tmp_path / "relay.sock"
    await start_relay(listen=Listen(path=path))
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as http:
        async with http.post("http://game-host.internal/v1/events", json=qualified("t", "p")) as r:
            assert r.status == 202
        headers = {"Origin": "https://attacker.example"}
        async with http.post(
            "http://localhost/v1/events", json=qualified("t2", "p"), headers=headers
        ) as r:
            assert r.status == 403

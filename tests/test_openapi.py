"""The published OpenAPI document stays true: it names every route the running app serves
(and no other), it is what ``GET /v1/openapi.json`` serves, and real answers of every
documented kind validate against its schemas."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

import jsonschema_rs
import pytest

from relay.config.values import Secret
from relay.openapi import document
from tests.support import Relay, StartRelay, registered

# Served on the same listener, but not part of the JSON API: the console is HTML for people.
UNDOCUMENTED = "/ui"
MAX_BODY_BYTES = 4096
MAX_BATCH = 3


def app_routes(relay: Relay) -> set[tuple[str, str]]:
    """(path template, method) of every route the running relay registered."""
    routes = set()
    for route in relay.handle._app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        # aiohttp answers HEAD for every GET by itself.
        console = path == UNDOCUMENTED or path.startswith(UNDOCUMENTED + "/")
        if route.method in ("HEAD", "*") or console:
            continue
        routes.add((path, route.method.lower()))
    return routes


def documented_routes() -> set[tuple[str, str]]:
    return {(path, method) for path, ops in document()["paths"].items() for method in ops}


async def test_every_route_is_documented_and_every_documented_route_exists(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay()
    assert app_routes(relay) == documented_routes()


async def test_the_daemon_serves_the_shipped_document(start_relay: StartRelay) -> None:
    relay = await start_relay()
    async with relay.http.get(f"{relay.url}/v1/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        served = await resp.json()
    assert served == document()
    assert served["openapi"].startswith("3.1")


def check_answer(template: str, method: str, status: int, content_type: str, raw: bytes) -> None:
    """Fail unless the operation documents ``status`` and the body fits its schema."""
    doc = document()
    if method not in doc["paths"][template]:
        # A method the path does not have: aiohttp's 405, in the error shape.
        assert status == 405, (template, method, status)
        pointer = "#/components/schemas/Error"
    else:
        responses = doc["paths"][template][method]["responses"]
        assert str(status) in responses, f"{method} {template} answered {status}: {raw[:200]!r}"
        content = responses[str(status)]["content"]
        assert content_type in content, (template, method, status, content_type)
        if content_type != "application/json":
            return
        # A JSON pointer in a URI fragment: "~" and "/" escaped, then percent-encoded.
        escaped = quote(template.replace("~", "~0").replace("/", "~1"), safe="~")
        pointer = f"#/paths/{escaped}/{method}/responses/{status}/content/application~1json/schema"
    validator = jsonschema_rs.Draft202012Validator({**doc, "$ref": pointer})
    errors = [str(e) for e in validator.iter_errors(json.loads(raw))]
    assert errors == [], (template, method, status, errors[:3], raw[:300])


async def call(
    relay: Relay,
    template: str,
    method: str,
    path: str | None = None,
    *,
    token: str | None = None,
    **kwargs: Any,
) -> int:
    headers = {
        **kwargs.pop("headers", {}),
        **({"Authorization": f"Bearer {token}"} if token else {}),
    }
    async with relay.http.request(
        method, relay.url + (path or template), headers=headers, **kwargs
    ) as resp:
        raw = await resp.read()
        check_answer(template, method.lower(), resp.status, resp.content_type, raw)
        return resp.status


async def test_real_answers_of_every_kind_validate_against_the_document(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(max_body_bytes=MAX_BODY_BYTES, max_batch=MAX_BATCH)
    event = registered("tok-doc", "p1")
    seen = [
        await call(relay, "/v1/events", "POST", json=event),
        await call(relay, "/v1/events", "POST", json=event),
        await call(relay, "/v1/events", "POST", json={**event, "ts": 1_700_000_000}),
        await call(relay, "/v1/events", "POST", json={**event, "event": "won"}),
        await call(
            relay, "/v1/events", "POST", data=b"{", headers={"Content-Type": "application/json"}
        ),
        await call(relay, "/v1/events", "POST", data=b"{}", headers={"Content-Type": "text/plain"}),
        await call(relay, "/v1/events", "POST", json={"token": "x" * MAX_BODY_BYTES}),
        await call(relay, "/v1/events", "DELETE"),
        await call(relay, "/v1/events/batch", "POST", json=[event, {"event": "won"}]),
        await call(relay, "/v1/events/batch", "POST", json=[event] * (MAX_BATCH + 1)),
        await call(relay, "/v1/events/batch", "POST", json={"not": "an array"}),
        await call(relay, "/v1/events/{id}", "GET", "/v1/events/1"),
        await call(relay, "/v1/events/{id}", "GET", "/v1/events/nope"),
        await call(relay, "/v1/events", "GET", "/v1/events?token=tok-doc&limit=5"),
        await call(relay, "/v1/events", "GET", "/v1/events?limit=0"),
        await call(relay, "/v1/events", "GET", "/v1/events?status=bogus"),
        await call(relay, "/v1/status", "GET"),
        await call(relay, "/v1/rejected", "GET", "/v1/rejected?limit=5"),
        await call(relay, "/v1/rejected", "GET", "/v1/rejected?since=soon"),
        await call(relay, "/v1/players/{referee_identity}", "GET", "/v1/players/p1"),
        await call(relay, "/v1/players/{referee_identity}", "GET", "/v1/players/nobody"),
        await call(relay, "/v1/admin/retry", "POST", json={"ids": [1, 99]}),
        await call(relay, "/v1/admin/retry", "POST", json={"filter": {"status": "dead"}}),
        await call(relay, "/v1/admin/retry", "POST", json={"ids": []}),
        await call(
            relay,
            "/v1/admin/retry",
            "POST",
            data=b"[",
            headers={"Content-Type": "application/json"},
        ),
        await call(
            relay, "/v1/admin/purge", "POST", json={"status": "dead", "before": time.time()}
        ),
        await call(relay, "/v1/admin/purge", "POST", json={"status": "pending", "before": 1}),
        await call(relay, "/healthz", "GET"),
        await call(relay, "/readyz", "GET"),
        await call(relay, "/metrics", "GET"),
        await call(relay, "/v1/openapi.json", "GET"),
    ]
    guarded = await start_relay(
        ingest_token=Secret("doc-token-0123456789"),
        db_path=relay.handle.outbox.path.with_name("b.db"),
    )
    seen.append(await call(guarded, "/v1/events", "POST", json=event))
    seen.append(await call(guarded, "/v1/status", "GET", token="doc-token-0123456789"))
    # Every kind of answer the document describes for ingest was really produced.
    assert sorted(set(seen)) == [200, 202, 400, 401, 404, 405, 409, 413, 415, 422]


@pytest.mark.parametrize(("path", "method"), sorted(documented_routes()))
def test_every_operation_documents_the_error_shape_for_its_4xx(path: str, method: str) -> None:
    responses = document()["paths"][path][method]["responses"]
    for status, response in responses.items():
        if status.startswith("4"):
            schema = json.dumps(response["content"]["application/json"]["schema"])
            assert "#/components/schemas/Error" in schema, (path, method, status)

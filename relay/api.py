"""The ingest HTTP API: thin aiohttp handlers over validation and the outbox.

Every error answers ``{"error": {"code", "message", "field"}}``; no input yields a 5xx.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import structlog
from aiohttp import web

from relay import openapi, origins
from relay.appkeys import DELIVERY_STATE, INGEST, METRICS, OUTBOX, StateProvider
from relay.errors import InvalidEvent, OutboxError, OutboxUnavailable
from relay.events import Event, parse_json, validate
from relay.metrics import Metrics
from relay.rejected import BATCH_REJECTS, DISCONNECTED, RAW_BODY
from relay.rejected import middleware as _rejections
from relay.snapshot import Live
from relay.store.contract import Added, Outbox

log = structlog.get_logger("relay.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_PUBLIC_PATHS = ("/healthz", "/readyz")  # probes; they show no event data
_ID = re.compile(r"[0-9]{1,18}")  # fits SQLite's 64-bit integer
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def make_app(
    outbox: Outbox, live: Live, delivery_state: StateProvider, metrics: Metrics
) -> web.Application:
    """The ingest app; ``delivery_state`` reports the breaker and per-server pauses.

    The operator routes (``relay.admin``) are added to it by the daemon.
    """
    app = web.Application(
        client_max_size=live.settings.max_body_bytes,
        middlewares=[_rejections, _errors, _cross_site, _auth],
    )
    app[OUTBOX] = outbox
    app[INGEST] = live
    app[DELIVERY_STATE] = delivery_state
    app[METRICS] = metrics
    app.router.add_post("/v1/events", post_event)
    app.router.add_post("/v1/events/batch", post_batch)
    app.router.add_get("/v1/events/{id}", get_event)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/openapi.json", openapi.serve)
    return app


def error_response(
    status: int, code: str, message: str, field: str | None = None, **extra: Any
) -> web.Response:
    body = {"error": {"code": code, "message": message, "field": field}, **extra}
    return web.json_response(body, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InvalidEvent as exc:
        return web.json_response(exc.as_json(), status=exc.status)
    except OutboxUnavailable as exc:
        response = error_response(503, "unavailable", str(exc))
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason
        if exc.status == 413:
            message = (
                f"the body is larger than {request.app[INGEST].settings.max_body_bytes} bytes; "
                "send fewer events per batch."
            )
        return error_response(exc.status, code, message)
    except OutboxError as exc:
        log.error("api.outbox_error", error=str(exc), path=request.path)
        response = error_response(503, "unavailable", str(exc))
        response.headers["Retry-After"] = "5"
        return response
    except ConnectionError:
        # The client hung up before its body arrived: nobody to answer, nothing stored.
        log.info("api.client_disconnected", path=request.path)
        return error_response(400, DISCONNECTED, "the client closed the connection.")
    except Exception:
        # A bug, not bad input: say so in JSON, and keep the daemon serving.
        log.exception("api.crashed", path=request.path)
        return error_response(
            500,
            "internal_error",
            "the relay failed on this request; it "
            "is logged. Retry later; if it persists, report the log line.",
        )


@web.middleware
async def _cross_site(request: web.Request, handler: Handler) -> web.StreamResponse:
    origins.check(request, request.app[INGEST].settings)
    return await handler(request)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[INGEST].settings.ingest_token
    if token is None:
        return await handler(request)
    # The web console checks the token itself: a browser sends a cookie, not a bearer header.
    if request.path not in _PUBLIC_PATHS and not origins.console_path(request.path):
        scheme, _, sent = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":  # a bare token is a client bug: say so, never accept it
            sent = ""
        # surrogateescape: header bytes that are not UTF-8 must compare unequal, not crash.
        if not hmac.compare_digest(
            sent.strip().encode("utf-8", "surrogateescape"), token.reveal().encode("utf-8")
        ):
            return error_response(
                401,
                "unauthorized",
                "missing or wrong bearer token; send "
                "Authorization: Bearer <MMOLOVE_RELAY_INGEST_TOKEN>.",
            )
    return await handler(request)


async def _read_json(request: web.Request) -> Any:
    # Content-Type was checked by relay.origins: only application/json gets here.
    request.app[INGEST].refuse_if_draining()
    raw = await request.read()
    request[RAW_BODY] = raw  # kept for the record of a rejection
    # Again: a body still arriving when the drain began must not be stored after it.
    request.app[INGEST].refuse_if_draining()
    return parse_json(raw)


def _validate(request: web.Request, data: Any, now: float) -> Event:
    settings = request.app[INGEST].settings
    return validate(
        data,
        server_ids=[s.server_id for s in settings.servers],
        allow_extra_fields=settings.allow_extra_fields,
        now=now,
    )


def _count_ingested(request: web.Request, stored: list[tuple[Event, Added]]) -> None:
    metrics = request.app[METRICS]
    for event, added in stored:
        if added.created:
            metrics.count_ingested(event.server_id, event.event)


def _conflict(added: Added) -> InvalidEvent:
    return InvalidEvent(
        409,
        "conflict",
        f"an event with this token, event and server_event_id "
        f"was already stored as #{added.id} with a different payload; give a "
        "new event a new server_event_id, or resend the original payload.",
        "server_event_id",
    )


async def post_event(request: web.Request) -> web.Response:
    now = time.time()
    event = _validate(request, await _read_json(request), now)
    outbox = request.app[OUTBOX]
    added = (await outbox.add([event], now))[0]
    _count_ingested(request, [(event, added)])
    if added.conflict:
        exc = _conflict(added)
        return web.json_response({**exc.as_json(), "id": added.id}, status=409)
    if not added.created:
        record = await outbox.get(added.id)
        existing = record.as_json() if record else {"id": added.id, "status": added.status}
        return web.json_response({**existing, "duplicate": True}, status=200)
    log.debug(
        "outbox.enqueued",
        outbox_id=added.id,
        event_type=event.event,
        server_event_id=event.server_event_id,
    )
    # The answer every good ingest gets, formatted directly: json.dumps costs more than it.
    return web.Response(
        body=b'{"id":%d,"status":"pending","duplicate":false}' % added.id,
        status=202,
        content_type="application/json",
        charset="utf-8",
    )


async def post_batch(request: web.Request) -> web.Response:
    """Store the valid items of an array in one transaction; answer per item."""
    now = time.time()
    items = await _read_json(request)
    limit = request.app[INGEST].settings.max_batch
    if not isinstance(items, list) or not items:
        raise InvalidEvent(422, "not_an_array", "a batch is a non-empty JSON array of events.")
    if len(items) > limit:
        raise InvalidEvent(
            413,
            "batch_too_large",
            f"the batch has {len(items)} events; the limit is {limit}. Split it.",
        )
    results: list[dict[str, Any]] = [{} for _ in items]
    valid: list[tuple[int, Event]] = []
    for index, item in enumerate(items):
        try:
            valid.append((index, _validate(request, item, now)))
        except InvalidEvent as exc:
            results[index] = {"index": index, "status": exc.status, **exc.as_json()}
    added = await request.app[OUTBOX].add([event for _, event in valid], now)
    _count_ingested(
        request, [(event, result) for (_, event), result in zip(valid, added, strict=True)]
    )
    for (index, _), result in zip(valid, added, strict=True):
        if result.conflict:
            results[index] = {
                "index": index,
                "status": 409,
                "id": result.id,
                **_conflict(result).as_json(),
            }
        else:
            results[index] = {
                "index": index,
                "status": 202 if result.created else 200,
                "id": result.id,
                "duplicate": not result.created,
            }
    request[BATCH_REJECTS] = [r for r in results if r["status"] >= 400]
    return web.json_response({"results": results})


async def get_event(request: web.Request) -> web.Response:
    text = request.match_info["id"]
    if not _ID.fullmatch(text):
        raise InvalidEvent(
            404,
            "not_found",
            f"{text!r} is not an outbox id; ids are numbers. "
            "Look up by ?server_event_id= or ?token= instead.",
        )
    outbox = request.app[OUTBOX]
    record = await outbox.get(int(text))
    if record is None:
        raise InvalidEvent(
            404,
            "not_found",
            f"no event #{text} in the outbox (delivered events "
            "are pruned after the retention period).",
        )
    attempts = await outbox.attempts(record.id)
    log_rows = [asdict(a) for a in attempts]
    return web.json_response({**record.as_json(), "delivery_log": log_rows})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})

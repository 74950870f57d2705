"""Rejected inputs: every 4xx ingest answers is logged, counted and kept (the newest N).

A middleware notes each rejection in memory and returns at once; a background task writes
what has gathered in one small transaction a few times a second, so a good ingest never
waits for a bad one to be recorded, and a client looping on bad input costs one bounded
table and one bounded queue.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from relay.errors import OutboxError
from relay.metrics import Metrics
from relay.store.contract_records import BODY_KEPT_BYTES, Records, Rejection

log = structlog.get_logger("relay.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

INGEST_PATHS = ("/v1/events", "/v1/events/batch")
# The label values of mmolove_relay_ingest_rejected_total: every code ingest answers with.
CODES = (
    "invalid_json",
    "unsupported_media_type",
    "body_too_large",
    "batch_too_large",
    "not_an_array",
    "not_an_object",
    "unknown_field",
    "missing_field",
    "invalid_field",
    "invalid_text",
    "repeated_field",
    "unknown_server",
    "conflict",
    "unauthorized",
    "cross_origin",
    "unknown_host",
    "unavailable",
    "other",
)
_FLUSH_EVERY_S = 0.25
_QUEUE_MAX = 5000  # unwritten rejections held at most; past it the oldest are only counted
DISCONNECTED = "client_disconnected"  # the client hung up before its body arrived
RAW_BODY = web.RequestKey("raw_body", bytes)
BATCH_REJECTS = web.RequestKey("batch_rejects", list)  # the 4xx items of a batch's answer


class Rejections:
    """Notes rejections (log line, counter, queue) and writes them in the background."""

    def __init__(self, records: Records, metrics: Metrics, *, keep: int) -> None:
        self._records = records
        self._metrics = metrics
        self._keep = keep
        self._queue: collections.deque[Rejection] = collections.deque(maxlen=_QUEUE_MAX)
        self._queued = asyncio.Event()
        for code in CODES:  # every series exists from the start, at 0
            metrics.rejected.labels(code)

    def note(self, rejection: Rejection) -> None:
        code = rejection.code if rejection.code in CODES else "other"
        self._metrics.rejected.labels(code).inc()
        log.warning(
            "ingest.rejected",
            http_status=rejection.http_status,
            code=rejection.code,
            field=rejection.field,
            server_event_id=rejection.server_event_id,
            token=rejection.token,
            peer=rejection.peer,
            message=rejection.message,
        )
        self._queue.append(rejection)
        self._queued.set()

    async def run(self) -> None:
        """Write queued rejections until cancelled; a failed write is logged, not retried."""
        while True:
            await self._queued.wait()
            await asyncio.sleep(_FLUSH_EVERY_S)  # gather a burst into one transaction
            await self.flush()

    async def flush(self) -> None:
        self._queued.clear()
        batch = list(self._queue)
        self._queue.clear()
        if not batch:
            return
        try:
            if not await self._records.add_rejections(batch, keep=self._keep):
                log.error("ingest.rejected_not_recorded", count=len(batch), error="unstorable")
        except OutboxError as exc:
            log.error("ingest.rejected_not_recorded", count=len(batch), error=str(exc))


REJECTIONS = web.AppKey("rejections", Rejections)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost on the ingest app: sees every answer, including the error middleware's."""
    response = await handler(request)
    if response.status < 400 and BATCH_REJECTS not in request:
        return response  # accepted whole: the common case costs two comparisons
    if request.method != "POST" or request.path not in INGEST_PATHS:
        return response
    rejections = request.app.get(REJECTIONS)
    if rejections is None:
        return response
    try:
        _note(request, response, rejections)
    except Exception:  # a bug here must cost the record, never the client's answer
        log.exception("ingest.rejected_not_noted", path=request.path)
    return response


def _note(request: web.Request, response: web.StreamResponse, rejections: Rejections) -> None:
    raw = request.get(RAW_BODY, b"")
    now = time.time()
    if 400 <= response.status < 500 and isinstance(response, web.Response):
        sent = _loads(raw)
        error = _loads(response.body if isinstance(response.body, bytes) else b"")
        if isinstance(error, dict) and error.get("error", {}).get("code") == DISCONNECTED:
            # Nobody was told anything: relay.api logged the one line; a flaky network must
            # fill neither this record nor the rejected-inputs alert.
            return
        rejections.note(_rejection(now, response.status, error, sent, raw, request.remote))
    items = request.get(BATCH_REJECTS, [])
    sent = _loads(raw) if items else None
    for item in items:
        one = sent[item["index"]] if isinstance(sent, list) else None
        try:
            body = json.dumps(one).encode()  # ASCII escapes: a lone surrogate stays storable
        except (ValueError, RecursionError):
            body = b""
        rejections.note(_rejection(now, item["status"], item, one, body, request.remote))


def _rejection(
    now: float, status: int, answer: Any, sent: Any, raw: bytes, peer: str | None
) -> Rejection:
    error = answer.get("error", {}) if isinstance(answer, dict) else {}
    fields = sent if isinstance(sent, dict) else {}

    def text(value: Any) -> str | None:
        # Whatever the client sent must be storable: a lone surrogate would fail the insert.
        if not isinstance(value, str):
            return None
        return value[:BODY_KEPT_BYTES].encode("utf-8", "replace").decode("utf-8")

    return Rejection(
        at=now,
        http_status=status,
        code=text(error.get("code")) or "other",
        message=text(error.get("message")) or "",
        field=text(error.get("field")),
        server_event_id=text(fields.get("server_event_id")),
        token=text(fields.get("token")),
        referee_identity=text(fields.get("referee_identity")),
        peer=peer,
        body=raw[:BODY_KEPT_BYTES],
    )


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # the body was rejected for being either
        return None

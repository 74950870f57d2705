"""Operator endpoints: status, readiness, metrics, and the retry and purge the CLI drives.

Retry and purge change the outbox, so they are taken only from this machine (a loopback
peer or the Unix socket), and with the bearer token when one is configured, like every
route. ``/healthz`` and ``/readyz`` are open for probes; they reveal no event data.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from relay import __version__, lookup
from relay.alerts.rules import RULES
from relay.alerts.targets import TARGETS
from relay.api import error_response
from relay.appkeys import DELIVERY_STATE, METRICS, OUTBOX
from relay.errors import InvalidEvent
from relay.metrics import CONTENT_TYPE
from relay.origins import local_peer
from relay.snapshot import HELD, PAUSED, ServerSnapshot
from relay.sources.state import SOURCES
from relay.store.contract import FINISHED, STATUSES, WAITING_FOR_REGISTERED, EventFilter, Outbox

MAX_CHUNK = 5000  # events one retry or purge call may touch: keeps each transaction short
STARTED = web.AppKey("started", float)


def add_routes(app: web.Application) -> None:
    app[STARTED] = time.time()
    app.router.add_get("/v1/events", list_events)
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/admin/retry", retry)
    app.router.add_post("/v1/admin/purge", purge)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


async def list_events(request: web.Request) -> web.Response:
    """Events matching the query's filters, newest first, with how many match in all."""
    query = dict(request.query)
    limit = _limit({"limit": int(_number(query.pop("limit", "50"), "limit"))}, default=50)
    where = _filter(query)
    outbox = request.app[OUTBOX]
    records = await outbox.select(where, limit)
    return web.json_response(
        {"events": [r.as_json() for r in records], "total": await outbox.count(where)}
    )


async def status(request: web.Request) -> web.Response:
    """What is pending and dead, per server, and whether delivery is paused or failing."""
    # The snapshot before the clock: a circuit that opens while the outbox is read would
    # otherwise reopen later than its cool-down from now (seen as 40.1 s of 40 under load).
    delivery = request.app[DELIVERY_STATE]()
    now = time.time()
    summary = await _summary(request, now)
    outbox = request.app[OUTBOX]
    counts = summary["counts"]
    # Events of a server the relay does not know (removed before a restart) are held too.
    servers = [
        *delivery.servers,
        *(ServerSnapshot.held(sid) for sid in counts if delivery.server(sid) is None),
    ]
    next_at = delivery.next_attempt_at(await outbox.next_due(delivery.sending))
    body = {
        "version": __version__,
        "uptime_s": round(now - request.app[STARTED], 1),
        "counts": _total(counts),
        "oldest_pending_age_s": summary["oldest_pending_age_s"],
        "next_attempt_in_s": _seconds_until(next_at, now),
        "in_flight": delivery.in_flight,
        "outbox_lost": outbox.lost,
        "circuit": delivery.circuit,
        "circuit_open_until": delivery.circuit_open_until,
        "circuit_reopens_in_s": _seconds_until(delivery.circuit_reopens_at, now),
        "draining": delivery.draining,
        "servers": [_server_json(s, counts.get(s.server_id, _zero()), now) for s in servers],
        "dead": await outbox.dead_by_reason(),
        "waiting_for_registered": await outbox.count(
            EventFilter(status="pending", outcome=WAITING_FOR_REGISTERED)
        ),
        "outbox": {"path": outbox.location, "bytes": summary["outbox_bytes"]},
        "rejected": await lookup.rejected_summary(outbox, now),
        "alerts": _alerts(request),
        "sources": [state.as_json() for state in request.app.get(SOURCES, [])],
    }
    return web.json_response(body)


async def retry(request: web.Request) -> web.Response:
    """Re-queue events by id, or a chunk matching a filter (the CLI walks it with after_id)."""
    if (refused := _refuse_remote(request)) is not None:
        return refused
    body = await _json_object(request)
    limit = _limit(body, default=500)
    outbox = request.app[OUTBOX]
    if "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list) or not all(_is_id(i) for i in ids) or not ids:
            raise InvalidEvent(422, "invalid_ids", "ids is a non-empty list of outbox ids.", "ids")
        if len(ids) > MAX_CHUNK:
            raise InvalidEvent(
                422, "too_many_ids", f"at most {MAX_CHUNK} ids per call; split the list.", "ids"
            )
        results = await outbox.retry(ids, time.time())
    else:
        where = _filter(body.get("filter"), required=("status",))
        results = await outbox.retry(where, time.time(), limit=limit)
    return web.json_response(
        {
            "results": [asdict(r) for r in results],
            # Dead events back in the queue, followers included; pending ones made due now.
            "requeued": sum((r.result == "requeued") + len(r.followers) for r in results),
            "due_now": sum(r.result == "due_now" for r in results),
            "last_id": max((r.id for r in results), default=None),
        }
    )


async def purge(request: web.Request) -> web.Response:
    """Delete a chunk of dead or delivered events finished before a time; how many went."""
    if (refused := _refuse_remote(request)) is not None:
        return refused
    body = await _json_object(request)
    status_ = body.get("status")
    before = body.get("before")
    if status_ not in FINISHED:
        raise InvalidEvent(422, "invalid_status", "purge takes status dead or delivered.", "status")
    if not isinstance(before, int | float) or isinstance(before, bool):
        raise InvalidEvent(422, "invalid_before", "before is a Unix time in seconds.", "before")
    purged = await request.app[OUTBOX].purge(status_, float(before), limit=_limit(body, 1000))
    return web.json_response({"purged": purged})


async def readyz(request: web.Request) -> web.Response:
    """Ready when events can be stored and every server can be delivered to.

    An open circuit (MMOLove failing) is reported but keeps the relay ready: absorbing an
    outage is its job. A paused server needs an operator, so it makes the relay not ready.
    """
    problems: list[str] = []
    outbox = request.app[OUTBOX]
    delivery = request.app[DELIVERY_STATE]()
    if delivery.draining:
        problems.append("shutting down")
    if (lost := await outbox.check_file()) is not None:
        problems.append(f"outbox file lost: {lost}; restart the relay")
    health = await outbox.health()
    problems += health.problems
    for server in delivery.servers:
        if server.state == PAUSED:
            problems.append(f"server {server.server_id} paused: {server.reason}")
    body = {
        "ready": not problems,
        "problems": problems,
        "disk_free_bytes": health.free_bytes,
        "circuit": delivery.circuit,
        "servers": {
            s.server_id: "paused" if s.state == PAUSED else "ok"
            for s in delivery.servers
            if s.state != HELD
        },
    }
    return web.json_response(body, status=503 if problems else 200)


async def metrics(request: web.Request) -> web.Response:
    summary = await _summary(request, time.time())
    delivery = request.app[DELIVERY_STATE]()
    request.app[METRICS].outbox_lost.set(1 if request.app[OUTBOX].lost else 0)
    text = request.app[METRICS].render(
        counts=summary["counts"],
        oldest_pending_age_s=summary["oldest_pending_age_s"],
        outbox_bytes=summary["outbox_bytes"],
        delivery=delivery,
    )
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE})


# -- helpers -------------------------------------------------------------------------------


async def _summary(request: web.Request, now: float) -> dict[str, Any]:
    outbox: Outbox = request.app[OUTBOX]
    oldest = await outbox.oldest_pending_created()
    return {
        "counts": await outbox.counts_by_server(),
        "oldest_pending_age_s": round(now - oldest, 1) if oldest is not None else None,
        "outbox_bytes": outbox.size_bytes(),
    }


def _alerts(request: web.Request) -> dict[str, Any]:
    """Which conditions are firing, and how each alert target last answered."""
    rules, targets = request.app.get(RULES), request.app.get(TARGETS)
    return {
        "firing": [
            # Queued, not sent: when each target took it is its last_ok_at.
            {"key": s.key, "since": s.since, "last_queued_at": s.last_sent, "summary": s.summary}
            for s in (rules.firing.values() if rules else ())
        ],
        "targets": [h.as_json() for h in targets.health] if targets else [],
    }


def _server_json(server: ServerSnapshot, counts: dict[str, int], now: float) -> dict[str, Any]:
    paused = server.state == PAUSED
    return {
        **asdict(server),
        "next_attempt_in_s": _seconds_until(server.next_attempt_at, now),
        # The names before the state field; kept for the scripts that read them.
        "configured": server.state != HELD,
        "paused": paused,
        "paused_reason": server.reason if paused else None,
        "next_probe_at": server.next_attempt_at if paused else None,
        "counts": counts,
    }


def _seconds_until(moment: float | None, now: float) -> float | None:
    return None if moment is None else round(max(0.0, moment - now), 1)


def _total(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    total = _zero()
    for by_status in counts.values():
        for status_, count in by_status.items():
            total[status_] += count
    return total


def _zero() -> dict[str, int]:
    return dict.fromkeys(STATUSES, 0)


def _refuse_remote(request: web.Request) -> web.Response | None:
    if local_peer(request):
        return None
    return error_response(
        403,
        "forbidden",
        "retry and purge are taken only from the relay's own machine; run "
        "`mmolove-relay retry` or `purge` there (or in the relay's container).",
    )


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidEvent(400, "invalid_json", f"the body is not JSON: {exc}.") from exc
    if not isinstance(body, dict):
        raise InvalidEvent(422, "not_an_object", "send a JSON object.")
    return body


def _limit(body: dict[str, Any], default: int) -> int:
    limit = body.get("limit", default)
    if not _is_id(limit) or not 1 <= limit <= MAX_CHUNK:
        raise InvalidEvent(422, "invalid_limit", f"limit is 1 to {MAX_CHUNK}.", "limit")
    return int(limit)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _filter(data: Any, *, required: tuple[str, ...] = ()) -> EventFilter:
    """An ``EventFilter`` from a JSON object or query string; unknown keys are refused."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidEvent(422, "invalid_filter", "filter is a JSON object.", "filter")
    unknown = set(data) - set(EventFilter.TEXT) - set(EventFilter.NUMBER)
    if unknown:
        raise InvalidEvent(
            422,
            "unknown_filter",
            f"unknown filter {sorted(unknown)[0]!r}; filters are "
            f"{', '.join(EventFilter.TEXT + EventFilter.NUMBER)}.",
            sorted(unknown)[0],
        )
    for name in required:
        if data.get(name) is None:
            raise InvalidEvent(422, "missing_filter", f"the filter needs {name}.", name)
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name in EventFilter.TEXT:
            if not isinstance(value, str):
                raise InvalidEvent(422, "invalid_filter", f"{name} is a string.", name)
            if name == "status" and value not in STATUSES:
                raise InvalidEvent(
                    422,
                    "invalid_filter",
                    f"status {value!r} is not one of {', '.join(STATUSES)}.",
                    name,
                )
            values[name] = value
        else:
            number = _number(value, name)
            if name.endswith("_id") and not _is_id(int(number)):
                # SQLite integers are 64-bit: a larger id would crash the query, not match.
                raise InvalidEvent(422, "invalid_filter", f"{name} is 0 to 2^63 - 1.", name)
            values[name] = int(number) if name.endswith("_id") else number
    return EventFilter(**values)


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")):  # NaN or infinite
        raise InvalidEvent(422, "invalid_filter", f"{name} is a number.", name)
    return number

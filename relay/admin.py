"""Operator endpoints: status, readiness, metrics, and the retry and purge the CLI drives.

Retry and purge change the outbox, so they are taken only from this machine (a loopback
peer or the Unix socket), and with the bearer token when one is configured, like every
route. ``/healthz`` and ``/readyz`` are open for probes; they reveal no event data.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import asdict
from typing import Any

from aiohttp import web

from relay import __version__
from relay.api import DELIVERY_STATE, INGEST, METRICS, OUTBOX, error_response
from relay.errors import InvalidEvent, OutboxError
from relay.metrics import CONTENT_TYPE
from relay.store.contract import STATUSES, EventFilter, Outbox

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
    now = time.time()
    summary = await _summary(request, now)
    outbox = request.app[OUTBOX]
    settings = request.app[INGEST].settings
    next_due = await outbox.next_due([s.server_id for s in settings.servers])
    delivery = request.app[DELIVERY_STATE]()
    counts = summary["counts"]
    configured = {s["server_id"] for s in delivery["servers"]}
    servers = [
        {**server, "counts": counts.get(server["server_id"], _zero())}
        for server in delivery["servers"]
    ] + [
        # Events of a server no longer configured wait until it is added back.
        {"server_id": server_id, "configured": False, "counts": by_status}
        for server_id, by_status in counts.items()
        if server_id not in configured
    ]
    body = {
        "version": __version__,
        "uptime_s": round(now - request.app[STARTED], 1),
        "counts": _total(counts),
        "oldest_pending_age_s": summary["oldest_pending_age_s"],
        "next_attempt_in_s": None if next_due is None else round(max(0.0, next_due - now), 1),
        "in_flight": delivery["in_flight"],
        "circuit": delivery["circuit"],
        "circuit_open_until": delivery["circuit_open_until"],
        "servers": servers,
        "dead": await outbox.dead_by_reason(),
        "outbox": {"path": outbox.location, "bytes": summary["outbox_bytes"]},
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
    if status_ not in ("dead", "delivered"):
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
    if request.app[INGEST].draining:
        problems.append("shutting down")
    try:
        await outbox.check_writable()
    except OutboxError as exc:
        problems.append(f"outbox not writable: {exc}")
    free = await outbox.disk_free_bytes()  # None: the database server minds its own disk
    needed = request.app[INGEST].settings.min_free_bytes
    if free is not None and free < needed:
        problems.append(f"disk nearly full: {free} bytes free, {needed} needed for ingest")
    delivery = request.app[DELIVERY_STATE]()
    for server in delivery["servers"]:
        if server["paused"]:
            problems.append(f"server {server['server_id']} paused: {server['paused_reason']}")
    body = {
        "ready": not problems,
        "problems": problems,
        "disk_free_bytes": free,
        "circuit": delivery["circuit"],
        "servers": {s["server_id"]: "paused" if s["paused"] else "ok" for s in delivery["servers"]},
    }
    return web.json_response(body, status=503 if problems else 200)


async def metrics(request: web.Request) -> web.Response:
    summary = await _summary(request, time.time())
    delivery = request.app[DELIVERY_STATE]()
    text = request.app[METRICS].render(
        counts=summary["counts"],
        oldest_pending_age_s=summary["oldest_pending_age_s"],
        outbox_bytes=summary["outbox_bytes"],
        circuit=delivery["circuit"],
        servers=delivery["servers"],
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


def _total(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    total = _zero()
    for by_status in counts.values():
        for status_, count in by_status.items():
            total[status_] += count
    return total


def _zero() -> dict[str, int]:
    return dict.fromkeys(STATUSES, 0)


def _refuse_remote(request: web.Request) -> web.Response | None:
    peer = request.remote
    if not peer:  # the Unix socket: its file permissions decide who gets here
        return None
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback:
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
            values[name] = value
        else:
            number = _number(value, name)
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

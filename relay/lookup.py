"""Operator routes for what the relay was told and what became of it.

``GET /v1/rejected`` lists rejected inputs; ``GET /v1/players/{referee_identity}`` tells
one player's referral. Both read only, so they also serve offline reads of the file.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from relay.appkeys import DELIVERY_STATE, OUTBOX
from relay.errors import InvalidEvent
from relay.player import story
from relay.store.contract import Outbox
from relay.store.contract_records import RejectedFilter

MAX_LIMIT = 1000


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/rejected", list_rejected)
    app.router.add_get("/v1/players/{referee_identity}", player)


async def list_rejected(request: web.Request) -> web.Response:
    """Rejected inputs, newest first: ``since`` (Unix time), ``code``, ``limit``."""
    query = request.query
    unknown = set(query) - {"since", "code", "limit"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidEvent(
            422, "unknown_filter", f"unknown filter {name!r}; use since, code, limit.", name
        )
    since = _number(query, "since")
    limit = int(_number(query, "limit") or 50)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidEvent(422, "invalid_limit", f"limit is 1 to {MAX_LIMIT}.", "limit")
    where = RejectedFilter(since=since, code=query.get("code"))
    rows = await request.app[OUTBOX].records.rejections(where, limit)
    return web.json_response({"rejected": [r.as_json() for r in rows]})


async def player(request: web.Request) -> web.Response:
    """The story of the player's latest referral, ending in one verdict."""
    referee = request.match_info["referee_identity"]
    view = request.app[DELIVERY_STATE]()
    told = await story(
        request.app[OUTBOX], view, referee, server_id=request.query.get("server_id") or None
    )
    return web.json_response(told.as_json())


async def rejected_summary(outbox: Outbox, now: float) -> dict[str, Any]:
    """For ``status``: how many inputs were rejected in the last hour, and the latest."""
    latest = await outbox.records.rejections(RejectedFilter(), 1)
    return {
        "last_hour": await outbox.records.count_rejections(now - 3600),
        "latest": latest[0].as_json() if latest else None,
    }


def _number(query: Any, name: str) -> float | None:
    if name not in query:
        return None
    try:
        value = float(query[name])
    except ValueError:
        value = float("nan")
    if value != value:
        raise InvalidEvent(422, "invalid_filter", f"{name} is a number.", name)
    return value

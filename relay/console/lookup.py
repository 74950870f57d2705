"""The console's pages for what the relay was told and what became of it: rejected inputs,
and one player's referral told as a story with its verdict (the same as ``/v1/players``)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from relay.appkeys import OUTBOX
from relay.console import overview
from relay.console.views import ID, PAGE, render, utc_time, with_query
from relay.player import story
from relay.rejected import CODES
from relay.store.contract_records import RejectedFilter


async def rejected(request: web.Request) -> web.Response:
    """Rejected inputs, newest first, by code and time, paged by id cursor."""
    query = request.query
    where, error = _rejected_filter(query)
    rows = [] if error else await request.config_dict[OUTBOX].records.rejections(where, PAGE)
    return render(
        request,
        "rejected.html",
        status=400 if error else 200,
        rows=[(r, r.body.decode("utf-8", "replace")) for r in rows],
        error=error,
        query=query,
        codes=CODES,
        next_query=with_query(query, before=rows[-1].id) if len(rows) == PAGE else None,
    )


async def players(request: web.Request) -> web.Response:
    """One player's latest referral: every event, the rejected inputs naming it, the verdict."""
    player = request.query.get("q", "").strip()
    server_id = request.query.get("server_id") or None
    told = None
    if player:
        told = await story(
            request.config_dict[OUTBOX],
            overview.delivery_view(request),
            player,
            server_id=server_id,
        )
    return render(
        request,
        "players.html",
        player=player,
        story=told,
        servers=[s.server_id for s in overview.settings(request).servers],
        server_id=server_id,
    )


def _rejected_filter(query: Mapping[str, str]) -> tuple[RejectedFilter, str | None]:
    """The filters from the query string; an error message instead if one is wrong."""
    code = query.get("code") or None
    if code is not None and code not in CODES:
        return RejectedFilter(), f"code is one of {', '.join(CODES)}."
    text = query.get("from", "")
    since = utc_time(text) if text else None
    if text and since is None:
        return RejectedFilter(), "from is a time like 2026-01-31T18:00 (UTC)."
    before = query.get("before", "")
    if before and not ID.fullmatch(before):
        return RejectedFilter(), "before is a record id."
    return RejectedFilter(since=since, code=code, before_id=int(before) if before else None), None

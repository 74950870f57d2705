"""The console's pages: thin handlers that read the store and render a template."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from relay.appkeys import OUTBOX
from relay.config.report import describe
from relay.console import chart, overview, quickstart, security
from relay.console.jobs import JOBS
from relay.console.templates import templates
from relay.player import waits_for
from relay.proof import Proof
from relay.store.contract import STATUSES, EventFilter, EventRecord

PAGE = 50  # rows per page of the delivery log
SCAN = 100_000  # ids one page of the log looks through: bounds its cost at any outbox size
EVENTS = ("registered", "qualified", "reversed")
ID = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class Row:
    """One line of the delivery log."""

    id: int
    created_at: float
    event: str
    token: str
    player: str | None
    server_id: str
    server_event_id: str
    status: str
    outcome: str | None
    state: str | None
    snippet: str

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    template = templates().get_template(name)
    html = template.render(
        access=security.access(request), path=request.path, status=status, **context
    )
    return web.Response(text=html, status=status, content_type="text/html")


async def overview_page(
    request: web.Request, *, proofs: list[Proof] | None = None, alert_sent: bool = False
) -> web.Response:
    """The overview; after "Send test event", with MMOLove's answers in place."""
    outbox = request.config_dict[OUTBOX]
    now = time.time()
    since = (now // 3600 - 23) * 3600  # 24 whole hours, the current one last
    hours = await outbox.hourly(since, 24)
    rejected = await outbox.records.rejections_per_hour(since, 24)
    return render(
        request,
        "overview.html",
        overview=await overview.overview(request),
        chart=chart.draw(hours, rejected),
        alerts=overview.firing_alerts(request),
        dead=await outbox.dead_by_reason(),
        now=now,
        steps=await quickstart.getting_started(request),
        proofs=proofs,
        alert_sent=alert_sent,
    )


async def send_test_event(request: web.Request) -> web.Response:
    """Prove every server's secret to MMOLove and show its answers on the overview.

    The answers are rendered in this POST's response, not kept for a redirect: they are
    this operator's, need no store or expiry, and a reload that sends again is harmless.
    """
    form = await request.post()
    if (refused := security.refuse_action(request, _text(form.get("csrf")))) is not None:
        return render(request, "error.html", status=403, message=refused)
    servers = overview.settings(request).servers
    return await overview_page(request, proofs=await quickstart.send_test_events(request, servers))


async def send_test_alert(request: web.Request) -> web.Response:
    """Queue a test alert for every target; the checklist ticks once one has taken it."""
    form = await request.post()
    if (refused := security.refuse_action(request, _text(form.get("csrf")))) is not None:
        return render(request, "error.html", status=403, message=refused)
    if not quickstart.send_test_alert(request):
        return render(request, "error.html", status=409, message=quickstart.NO_ALERTS)
    return await overview_page(request, alert_sent=True)


async def events(request: web.Request) -> web.Response:
    """The delivery log: newest first, filtered, searched, paged by id cursor."""
    query = request.query
    outbox = request.config_dict[OUTBOX]
    where, older_than, error = await _log_filter(request)
    search = query.get("q", "").strip()
    rows: list[Row] = []
    next_cursor = scanned_from = None
    is_player = False
    if error is None and search:
        # A token or server_event_id, or a player: every event of the referrals whose
        # registered names them (both through indexes).
        found = {r.id: r for r in await outbox.search(search, PAGE)}
        of_player = await outbox.select(EventFilter(player=search), PAGE)
        found.update((r.id, r) for r in of_player)
        is_player = bool(of_player)
        rows = [_row(r) for r in sorted(found.values(), key=lambda r: -r.id)[:PAGE]]
    elif error is None:
        page = await outbox.log_page(where, older_than=older_than, scan=SCAN, limit=PAGE)
        rows = [_row(r) for r in page.records]
        next_cursor, scanned_from = page.older_than, page.scanned_from
    live = with_query(
        {k: v for k, v in query.items() if k in ("status", "event", "server_id", "outcome")}
    )
    return render(
        request,
        "events.html",
        status=400 if error else 200,
        rows=rows,
        error=error,
        query=query,
        search=search,
        is_player=is_player,
        next_query=with_query(query, before=next_cursor) if next_cursor else None,
        scanned_from=scanned_from,
        newest_id=rows[0].id if rows else 0,
        live=None if search or "before" in query else f"{security.PREFIX}/events.json{live}",
        statuses=STATUSES,
        event_types=EVENTS,
        servers=[s.server_id for s in overview.settings(request).servers],
    )


async def events_json(request: web.Request) -> web.Response:
    """Rows newer than ``after``: what the log's script polls to show new events."""
    where, _, error = await _log_filter(request)
    after = request.query.get("after", "0")
    if error is not None or not ID.fullmatch(after):
        return web.json_response({"error": error or "after is an outbox id."}, status=400)
    newer = EventFilter(**{**_fields(where), "after_id": int(after)})
    page = await request.config_dict[OUTBOX].log_page(newer, older_than=None, scan=SCAN, limit=PAGE)
    return web.json_response({"rows": [_row(r).as_json() for r in page.records]})


async def event(request: web.Request) -> web.Response:
    record = await _record(request)
    outbox = request.config_dict[OUTBOX]
    try:
        body = json.dumps(json.loads(record.body), indent=2, ensure_ascii=False)
    except ValueError:
        body = record.body.decode("utf-8", "replace")
    return render(
        request,
        "event.html",
        record=record,
        body=body,
        attempts=await outbox.attempts(record.id),
        retried=request.query.get("retried"),
        waits_for=await waits_for(outbox, overview.delivery_view(request), record, time.time()),
        now=time.time(),
    )


async def event_json(request: web.Request) -> web.Response:
    """The event's status, polled by its page to reload when it changes."""
    record = await _record(request)
    return web.json_response({"id": record.id, "status": record.status})


async def retry_event(request: web.Request) -> web.Response:
    form = await request.post()
    if (refused := security.refuse_action(request, _text(form.get("csrf")))) is not None:
        return render(request, "error.html", status=403, message=refused)
    record = await _record(request)
    results = await request.config_dict[OUTBOX].retry([record.id], time.time())
    outcome = results[0].result if results else "not_found"
    raise web.HTTPSeeOther(f"{security.PREFIX}/events/{record.id}?retried={outcome}")


async def dead(request: web.Request) -> web.Response:
    jobs = request.config_dict[JOBS].jobs
    return render(
        request,
        "dead.html",
        reasons=await request.config_dict[OUTBOX].dead_by_reason(),
        jobs=jobs,
    )


async def retry_reason(request: web.Request) -> web.Response:
    form = await request.post()
    if (refused := security.refuse_action(request, _text(form.get("csrf")))) is not None:
        return render(request, "error.html", status=403, message=refused)
    server_id, reason = _text(form.get("server_id")), _text(form.get("reason"))
    if not server_id or not reason:
        return render(request, "error.html", status=400, message="pick a reason to retry.")
    await request.config_dict[JOBS].start(server_id, reason)
    raise web.HTTPSeeOther(f"{security.PREFIX}/dead")


async def dead_progress(request: web.Request) -> web.Response:
    jobs = request.config_dict[JOBS].jobs.values()
    return web.json_response(
        {
            "jobs": [
                {
                    "server_id": j.server_id,
                    "reason": j.reason,
                    "total": j.total,
                    "requeued": j.requeued,
                    "followers": j.followers,
                    "done": j.done,
                    "error": j.error,
                }
                for j in jobs
            ]
        }
    )


async def config(request: web.Request) -> web.Response:
    settings = describe(overview.settings(request))
    return render(request, "config.html", settings=settings)


# -- helpers -------------------------------------------------------------------------------


async def _record(request: web.Request) -> EventRecord:
    text = request.match_info["id"]
    record = await request.config_dict[OUTBOX].get(int(text))
    if record is None:
        raise _Missing(
            f"no event #{text} in the outbox; delivered events are pruned after the "
            "retention period. Search the delivery log by token or player instead."
        )
    return record


class _Missing(LookupError):
    """What the page asked for is not there; the message says what to do instead."""


@web.middleware
async def missing(request: web.Request, handler: security.Handler) -> web.StreamResponse:
    """A missing event answers 404 with a page a person can read, not an API error."""
    try:
        return await handler(request)
    except _Missing as exc:
        return render(request, "error.html", status=404, message=str(exc))


async def _log_filter(request: web.Request) -> tuple[EventFilter, int | None, str | None]:
    """The log's filters from the query string; an error message instead if one is wrong."""
    query = request.query
    values: dict[str, Any] = {}
    for name, allowed in (
        ("status", STATUSES),
        ("event", EVENTS),
        ("server_id", None),
        ("outcome", None),
    ):
        value = query.get(name, "")
        if value:
            if allowed is not None and value not in allowed:
                return EventFilter(), None, f"{name} is one of {', '.join(allowed)}."
            values[name] = value
    older_than = None
    if before := query.get("before", ""):
        if not ID.fullmatch(before):
            return EventFilter(), None, "before is an outbox id."
        older_than = int(before)
    times: dict[str, float] = {}
    for name in ("from", "to"):
        if text := query.get(name, ""):
            if (at := utc_time(text)) is None:
                return EventFilter(), None, f"{name} is a time like 2026-01-31T18:00 (UTC)."
            times[name] = at
    if times:
        # Ids grow with ingest time, so a time range is an id range.
        found = await request.config_dict[OUTBOX].first_ids_at(list(times.values()))
        ids = dict(zip(times, found, strict=True))
        if "from" in ids:
            values["after_id"] = ids["from"] - 1
        if "to" in ids:
            older_than = ids["to"] if older_than is None else min(older_than, ids["to"])
    return EventFilter(**values), older_than, None


def _fields(where: EventFilter) -> dict[str, Any]:
    return {name: getattr(where, name) for name in where.__slots__}


def _row(record: EventRecord) -> Row:
    snippet = record.body.decode("utf-8", "replace")
    return Row(
        record.id,
        record.created_at,
        record.event,
        record.token,
        record.referee_identity,
        record.server_id,
        record.server_event_id,
        record.status,
        record.outcome,
        record.state,
        snippet[:120] + ("…" if len(snippet) > 120 else ""),
    )


def utc_time(text: str) -> float | None:
    """A form's time (``2026-01-31T18:00``, read as UTC) as Unix time; None if it is not one."""
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def with_query(query: Any, **changes: Any) -> str:
    params = {k: v for k, v in query.items() if v}
    params.update({k: str(v) for k, v in changes.items()})
    return "?" + urlencode(params)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None

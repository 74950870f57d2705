"""The web console under ``/ui/``: the delivery log, dead letters, rejected inputs, the
player view and settings in a browser.

Server-rendered HTML (Jinja2, autoescaped), one stylesheet and one small script, all shipped
in this package; it reads the same store and delivery snapshot as the admin API.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from relay.appkeys import OUTBOX
from relay.console import login, lookup, security, views
from relay.console.jobs import JOBS, RetryJobs

_HERE = Path(__file__).parent


def add_console(app: web.Application) -> None:
    """Mount the console on the daemon's app, under ``/ui/``."""
    console = web.Application(middlewares=[security.guard, views.missing])
    console[security.CSRF_SECRET] = security.new_secret()
    console[security.SESSION_KEY] = security.SessionKey(app[OUTBOX].records)
    console[login.THROTTLE] = login.Throttle()
    console[JOBS] = RetryJobs(app[OUTBOX])
    console.on_response_prepare.append(security.add_headers)
    console.on_cleanup.append(_close_jobs)
    r = console.router
    r.add_get("/", views.overview_page)
    r.add_post("/test-event", views.send_test_event)
    r.add_post("/test-alert", views.send_test_alert)
    r.add_get("/events", views.events)
    r.add_get("/events.json", views.events_json)
    r.add_get(r"/events/{id:\d{1,18}}", views.event)
    r.add_get(r"/events/{id:\d{1,18}}.json", views.event_json)
    r.add_post(r"/events/{id:\d{1,18}}/retry", views.retry_event)
    r.add_get("/dead", views.dead)
    r.add_post("/dead/retry", views.retry_reason)
    r.add_get("/dead/progress.json", views.dead_progress)
    r.add_get("/rejected", lookup.rejected)
    r.add_get("/players", lookup.players)
    r.add_get("/config", views.config)
    r.add_get("/login", login.login_form)
    r.add_post("/login", login.login)
    r.add_post("/logout", login.logout)
    r.add_static("/static", _HERE / "static")
    # Before the sub-app: it would answer a bare /ui with its own 404.
    app.router.add_get(security.PREFIX, _to_console)
    app.add_subapp(security.PREFIX, console)


async def _to_console(request: web.Request) -> web.Response:
    """``/ui`` as an operator types it: the console is at ``/ui/``."""
    query = f"?{request.query_string}" if request.query_string else ""
    raise web.HTTPPermanentRedirect(f"{security.PREFIX}/{query}")


async def _close_jobs(app: web.Application) -> None:
    await app[JOBS].close()

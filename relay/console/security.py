"""Who may see the console and who may act in it, and the headers every page carries.

Read pages are open to this machine (a loopback peer or the Unix socket, reached under a
loopback host name); anyone else trades the ingest token for a session cookie at the login
form. Actions are taken only from this machine, with the page's CSRF token and a matching
Origin.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from relay.admin import local_peer
from relay.console.overview import settings

COOKIE = "relay_console"
PREFIX = "/ui"
_OPEN_PATHS = (f"{PREFIX}/login", f"{PREFIX}/static/console.css")
# No inline script or style anywhere: the one script and the one stylesheet are our files.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # with no-referrer, Chromium sends Origin: null
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Access:
    """What this request may do: ``can_act`` only from this machine."""

    can_act: bool
    csrf: str


CSRF_SECRET = web.AppKey("console_csrf_secret", str)  # per process: a restart renews it


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def this_machine(request: web.Request) -> bool:
    """A local peer that also named a loopback host: a page on another site that resolves
    its own name to 127.0.0.1 (DNS rebinding) arrives under that name and is not trusted."""
    if not local_peer(request):
        return False
    host = _hostname(request.host or "")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(host: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8787`` gives ``::1``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def session_value(token: str) -> str:
    """The cookie for a token: derived from it, so the cookie never holds the token itself."""
    return hmac.new(token.encode(), b"mmolove-relay console session", hashlib.sha256).hexdigest()


def logged_in(request: web.Request) -> bool:
    token = settings(request).ingest_token
    if token is None:
        return False
    sent = request.cookies.get(COOKIE, "")
    return hmac.compare_digest(sent.encode(), session_value(token.reveal()).encode())


def csrf_token(request: web.Request) -> str:
    return hmac.new(
        request.config_dict[CSRF_SECRET].encode(), b"console actions", hashlib.sha256
    ).hexdigest()


def refuse_action(request: web.Request, form_csrf: str | None) -> str | None:
    """Why a POST that changes the outbox is refused, or None if it may go ahead."""
    if not this_machine(request):
        return (
            "actions are taken only on the relay's own machine; open the console there "
            "(ssh -L 8787:127.0.0.1:8787 host) or use `mmolove-relay retry`."
        )
    origin = request.headers.get("Origin")
    if origin != f"{request.scheme}://{request.host}":
        return "this form was not sent from the console's own page; open the page and try again."
    if not form_csrf or not hmac.compare_digest(form_csrf.encode(), csrf_token(request).encode()):
        return "the form's security token is missing or stale; reload the page and try again."
    return None


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Let this machine and logged-in browsers in, send others to the login form."""
    if request.path not in _OPEN_PATHS and not this_machine(request) and not logged_in(request):
        if request.method == "GET" and not request.path.endswith(".json"):
            raise web.HTTPSeeOther(f"{PREFIX}/login")
        raise web.HTTPUnauthorized(text="log in to the console first.")
    return await handler(request)


def access(request: web.Request) -> Access:
    return Access(can_act=this_machine(request), csrf=csrf_token(request))


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)

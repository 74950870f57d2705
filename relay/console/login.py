"""The console's login: trading the ingest token for a session cookie, and the per-address
limit on wrong tokens that keeps a client off the machine from guessing it.

Every wrong token is logged (``console.login_failed``, with the client's address, never what
it sent) and every attempt counted in ``mmolove_relay_console_logins_total{result}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from relay.appkeys import METRICS
from relay.console import security, views
from relay.console.overview import settings

log = structlog.get_logger("relay.console")

# Issue 24: the sixth wrong token from one address within a minute gets 429. An operator
# who mistypes gets five tries; a guesser gets five a minute, then ever longer lockouts.
FAILURES_ALLOWED = 5
WINDOW_S = 60.0
LOCK_S = 60.0  # the first lockout; it doubles with each one that follows ...
LOCK_CAP_S = 3600.0  # ... up to an hour, and is forgotten after an hour without one
# The table of addresses is bounded: an attacker with many addresses pushes out the least
# recently seen, never grows memory (a full table took 4 MB, measured with tracemalloc).
TRACKED_ADDRESSES = 10_000


@dataclass(slots=True)
class _Tries:
    failures: list[float] = field(default_factory=list)  # wrong tokens within WINDOW_S
    lockouts: int = 0
    locked_until: float = 0.0


class Throttle:
    """Wrong tokens per client address (IPv6 by /64: one host holds a whole /64)."""

    def __init__(self) -> None:
        self._capacity = TRACKED_ADDRESSES
        self._tries: OrderedDict[str, _Tries] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tries)

    def wait_s(self, address: str, now: float) -> float:
        """Seconds this address must wait before its token is checked again; 0 if none."""
        tries = self._tries.get(_client(address))
        return max(0.0, tries.locked_until - now) if tries else 0.0

    def failed(self, address: str, now: float) -> float:
        """Record a wrong token; the lockout it starts in seconds, or 0."""
        key = _client(address)
        tries = self._tries.pop(key, None) or _Tries()
        self._tries[key] = tries  # the most recently seen is the last to be forgotten
        while len(self._tries) > self._capacity:
            self._tries.popitem(last=False)
        if tries.lockouts and now - tries.locked_until > LOCK_CAP_S:
            tries.lockouts = 0
        tries.failures = [t for t in tries.failures if now - t < WINDOW_S] + [now]
        if len(tries.failures) < FAILURES_ALLOWED:
            return 0.0
        lock_s = min(LOCK_S * 2.0**tries.lockouts, LOCK_CAP_S)
        tries.lockouts += 1
        tries.locked_until = now + lock_s
        tries.failures.clear()
        return lock_s

    def succeeded(self, address: str) -> None:
        self._tries.pop(_client(address), None)


def _client(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # the Unix socket's empty peer
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


THROTTLE = web.AppKey("console_login_throttle", Throttle)


async def login_form(request: web.Request) -> web.Response:
    return views.render(request, "login.html", error=None)


async def login(request: web.Request) -> web.Response:
    """Trade the ingest token for a session cookie the page's scripts cannot read."""
    form = await request.post()
    sent = form.get("token")
    token = settings(request).ingest_token
    peer = request.remote or ""
    scheme = "https" if security.over_tls(request) else request.scheme
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{scheme}://{request.host}":
        return _refused(request, "cross_origin", 403, "log in from the console's own page.")
    if token is None:
        return _refused(
            request,
            "no_token",
            401,
            "this relay has no ingest token, so the console is open only on its own "
            "machine; use ssh -L 8787:127.0.0.1:8787 host.",
        )
    throttle = request.config_dict[THROTTLE]
    now = time.monotonic()
    # A locked-out address is refused before its token is compared: the right token must
    # not get an answer either, or the lockout would still tell a guesser when it hit.
    if wait_s := throttle.wait_s(peer, now):
        refused = _refused(
            request,
            "rate_limited",
            429,
            f"too many wrong tokens from your address; try again in {math.ceil(wait_s)} s.",
        )
        refused.headers["Retry-After"] = str(math.ceil(wait_s))
        return refused
    if not isinstance(sent, str) or not hmac.compare_digest(
        sent.encode("utf-8", "surrogateescape"), token.reveal().encode()
    ):
        lock_s = throttle.failed(peer, now)
        log.warning("console.login_failed", peer=peer, locked_for_s=lock_s or None)
        return _refused(
            request,
            "wrong_token",
            401,
            "that token is wrong; use the relay's MMOLOVE_RELAY_INGEST_TOKEN.",
        )
    throttle.succeeded(peer)
    request.config_dict[METRICS].console_logins.labels("ok").inc()
    key = await request.config_dict[security.SESSION_KEY].get()
    response = web.HTTPSeeOther(f"{security.PREFIX}/")
    response.set_cookie(
        security.COOKIE,
        security.session_cookie(key, token.reveal(), time.time()),
        path=security.PREFIX,
        max_age=security.SESSION_S,
        httponly=True,
        samesite="Strict",
        secure=security.over_tls(request) or None,
    )
    raise response


def _refused(request: web.Request, result: str, status: int, error: str) -> web.Response:
    request.config_dict[METRICS].console_logins.labels(result).inc()
    return views.render(request, "login.html", status=status, error=error)


async def logout(request: web.Request) -> web.Response:
    response = web.HTTPSeeOther(f"{security.PREFIX}/login")
    response.del_cookie(security.COOKIE, path=security.PREFIX)
    raise response

"""Who may see the console and who may act in it, and the headers every page carries.

Read pages are open to this machine (a loopback peer or the Unix socket, reached under a
loopback host name); anyone else trades the ingest token for a session cookie at the login
form (``relay.console.login``). Actions are taken only from this machine, with the page's
CSRF token and a matching Origin.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from relay.console.overview import settings
from relay.origins import CONSOLE_PREFIX, hostname, local_peer, loopback_name
from relay.store.contract_records import Records

COOKIE = "relay_console"
PREFIX = CONSOLE_PREFIX
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
    return loopback_name(hostname(request.host or ""))


# A working day: a cookie that leaks (a shared screen, a copied profile) is dead by the next.
SESSION_S = 8 * 3600
# The outbox keeps small state as named floats (the alert marks): the key is 5 of them, each a
# random integer a float holds exactly (52 bits), 260 bits in all.
_KEY_MARKS = tuple(f"console_session_key_{n}" for n in range(5))
# How often a cookie that does not verify may make the key be read again: only a replica that
# raced another one to create it holds a stale key, and guesses must not become reads.
_RELOAD_S = 30.0


class SessionKey:
    """The per-installation secret that signs session cookies. It is kept in the outbox's own
    store, so it survives a restart and every replica of a PostgreSQL fleet shares it; a new
    outbox (a new installation) gets a new one, and with it every cookie dies."""

    def __init__(self, records: Records) -> None:
        self._records = records
        self._key: bytes | None = None
        self._read_at = 0.0
        self._first_read = asyncio.Lock()  # two first requests must not both write a key

    async def get(self) -> bytes:
        async with self._first_read:
            if self._key is None:
                await self._read(create=True)
        assert self._key is not None
        return self._key

    async def reread(self) -> bool:
        """Read the key again (at most every _RELOAD_S); True if it changed."""
        if self._key is None or time.monotonic() - self._read_at < _RELOAD_S:
            return False
        before = self._key
        await self._read(create=False)
        return self._key != before

    async def _read(self, *, create: bool) -> None:
        parts = [await self._records.mark(name) for name in _KEY_MARKS]
        if None in parts and create:
            # Two replicas may both write here; the one that reads a key another replaced
            # rereads it when that replica's cookies do not verify.
            for name in _KEY_MARKS:
                await self._records.set_mark(name, float(secrets.randbits(52)))
            parts = [await self._records.mark(name) for name in _KEY_MARKS]
        self._key = b"".join(int(part or 0).to_bytes(7, "big") for part in parts)
        self._read_at = time.monotonic()


SESSION_KEY = web.AppKey("console_session_key", SessionKey)


def session_cookie(key: bytes, token: str, now: float) -> str:
    """A new session: its expiry, a nonce (each login's cookie differs) and their MAC."""
    expires = int(now) + SESSION_S
    nonce = secrets.token_urlsafe(12)
    return f"{expires}.{nonce}.{_mac(key, token, expires, nonce)}"


def session_valid(key: bytes, token: str, cookie: str, now: float) -> bool:
    """Whether a cookie was made with this key for this token and has not expired: a new
    token or a new key ends every session."""
    expires, _, rest = cookie.partition(".")
    nonce, _, mac = rest.partition(".")
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
        return False
    if int(expires) <= now:
        return False
    # surrogateescape: a cookie's bytes that are not UTF-8 must compare unequal, not crash.
    sent = mac.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(sent, _mac(key, token, int(expires), nonce).encode())


def _mac(key: bytes, token: str, expires: int, nonce: str) -> str:
    # The token's hash, not the token: the MAC input need not hold the secret itself.
    token_hash = hashlib.sha256(token.encode()).hexdigest()
    message = f"{expires}.{nonce}.{token_hash}".encode("utf-8", "surrogateescape")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def over_tls(request: web.Request) -> bool:
    """Whether the browser reached the console over TLS. The relay speaks plain HTTP, so TLS
    means a reverse proxy; its ``X-Forwarded-Proto`` is believed only from this machine,
    where anyone else could not have set it."""
    if request.secure:
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return forwarded == "https" and local_peer(request)


async def logged_in(request: web.Request) -> bool:
    token = settings(request).ingest_token
    sent = request.cookies.get(COOKIE)
    if token is None or not sent:
        return False
    session_key = request.config_dict[SESSION_KEY]
    now = time.time()
    if session_valid(await session_key.get(), token.reveal(), sent, now):
        return True
    return await session_key.reread() and session_valid(
        await session_key.get(), token.reveal(), sent, now
    )


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
    if (
        request.path not in _OPEN_PATHS
        and not this_machine(request)
        and not await logged_in(request)
    ):
        if request.method == "GET" and not request.path.endswith(".json"):
            raise web.HTTPSeeOther(f"{PREFIX}/login")
        raise web.HTTPUnauthorized(text="log in to the console first.")
    return await handler(request)


def access(request: web.Request) -> Access:
    return Access(can_act=this_machine(request), csrf=csrf_token(request))


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)

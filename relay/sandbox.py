"""A local stand-in for MMOLove's ``POST /api/referral/events``, with faults switchable at run time.

The test suite uses it as the real upstream over loopback; the CLI serves it for demos.

Over STYLE.md's 400 lines on purpose: it is one stand-in for one API, read against
mmolove-api.md from top to bottom (the signature, the replay window, idempotency, the state
machine, and the faults that bend each answer); split, each half would lean on the other's
private types.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import secrets
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from email.utils import formatdate
from typing import Any, TypeGuard

from aiohttp import hdrs, web

from relay.config.values import base_url
from relay.demo import DEMO_SECRET as DEMO_SECRET
from relay.demo import DEMO_SERVER_ID as DEMO_SERVER_ID
from relay.demo import EVENT_PATH as EVENT_PATH
from relay.signing import HEADER, ParsedSignature, parse_header, verify

WINDOW_S = 300
EVENTS = ("registered", "qualified", "reversed")

# At cleanup aiohttp waits up to this long for in-flight handlers, then again after cancelling
# them; a hung handler notices shutdown within one poll, so neither wait is normally reached.
_SHUTDOWN_TIMEOUT_S = 0.5
_HANG_POLL_S = 0.02

# (current state, event) -> next state; "none" is a token without a referral yet.
# `reversed` passes validation but MMOLove does not act on it, so it keeps the state.
_TRANSITIONS: dict[tuple[str, str], str] = {
    ("none", "registered"): "registered",
    ("registered", "registered"): "registered",
    ("registered", "qualified"): "qualified",
    ("qualified", "qualified"): "qualified",
    ("registered", "reversed"): "registered",
    ("qualified", "reversed"): "qualified",
}

_RECORD_FIELDS = ("server_id", "token", "event", "server_event_id")

# The `impostor` fault: 2xx answers that are not MMOLove speaking (a captive portal, a CDN
# maintenance page, a cut answer), as (status, content type, body).
IMPOSTORS: dict[str, tuple[int, str, bytes]] = {
    "html": (200, "text/html", b"<html><body><h1>Sign in to the guest Wi-Fi</h1></body></html>"),
    "empty": (200, "application/json", b""),
    "ok_false": (200, "application/json", b'{"ok":false}'),
    "empty_object": (200, "application/json", b"{}"),
    "cut": (200, "application/json", b'{"ok":tr'),
    "201": (201, "application/json", b'{"ok":true}'),
    "202": (202, "application/json", b'{"ok":true}'),
    "204": (204, "application/json", b""),
}
_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class Faults:
    """How the sandbox misbehaves; the defaults are a healthy upstream."""

    error_rate: float = 0.0
    error_status: int = 500
    latency_ms: float = 0
    throttle_next: int = 0
    retry_after_s: int = 1
    outage: bool = False
    hang: bool = False
    reset: bool = False
    slow_body_ms: float = 0
    clock_offset_s: float = 0
    redirect_to: str | None = None
    impostor: str | None = None  # a key of IMPOSTORS: answer that instead of MMOLove
    unknown_tokens: set[str] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["unknown_tokens"] = sorted(self.unknown_tokens)
        return data


# Annotations are strings (postponed evaluation); the HTTP merge checks JSON values by them.
_WANTED = {"float": "a number", "int": "an integer", "bool": "a boolean"}
_WANTED |= {"str | None": "a string or null", "set[str]": "a list of strings"}
_FAULT_KINDS = {f.name: (str(f.type), _WANTED[str(f.type)]) for f in fields(Faults)}


@dataclass(frozen=True, slots=True)
class RunningSandbox:
    """A sandbox listening on a real socket."""

    sandbox: Sandbox
    url: str
    base_url: str


class _Refusal(Exception):
    """An error answer decided deep in a check; the handler turns it into a JSON response."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


@dataclass(frozen=True, slots=True)
class _Event:
    event: str
    token: str
    server_id: str
    server_event_id: str
    referee_identity: str | None
    test: bool

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.token, self.event, self.server_event_id)


@dataclass(slots=True)
class _Referral:
    referral_id: str
    state: str
    referee_identity: str


@dataclass(slots=True)
class Send:
    """One POST to the event endpoint, in arrival order: the request log.

    ``repeat`` marks a send of an event MMOLove had already accepted when its body arrived,
    however it was then answered: the duplicate sends a relay should keep near zero.
    """

    key: tuple[str, str, str] | None  # (token, event, server_event_id); None if unreadable
    repeat: bool
    status: int | None = None  # None: the connection was dropped unanswered


@dataclass(slots=True)
class _Ledger:
    """Everything the sandbox remembers; a reset replaces it whole."""

    requests: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    accepted: list[dict[str, str]] = field(default_factory=list)
    duplicates: int = 0
    test_events: int = 0
    sends: list[Send] = field(default_factory=list)
    effects: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # by _Event.key
    referrals: dict[tuple[str, str], _Referral] = field(default_factory=dict)
    anchors: dict[tuple[str, str], str] = field(default_factory=dict)


_CLOSING = web.AppKey("sandbox_closing", asyncio.Event)


class Sandbox:
    """MMOLove's ingest endpoint as the contract describes it, plus records for tests."""

    def __init__(
        self,
        servers: Mapping[str, str],
        faults: Faults | None = None,
        kids: Mapping[str, str] | None = None,
    ) -> None:
        self._servers = dict(servers)
        # A server's current key id: a header naming another kid signs with a key MMOLove
        # no longer (or never) had, so it is refused like a wrong secret. No kid is the current.
        self.kids = dict(kids or {})
        self.faults = faults if faults is not None else Faults()
        self._ledger = _Ledger()

    def now(self) -> float:
        """The sandbox's clock: real time shifted by ``clock_offset_s``."""
        return time.time() + self.faults.clock_offset_s

    def app(self) -> web.Application:
        app = web.Application()
        app[_CLOSING] = asyncio.Event()
        app.router.add_post(EVENT_PATH, self._on_event)
        app.router.add_post("/_sandbox/faults", self._on_faults)
        app.router.add_post("/_sandbox/reset", self._on_reset)
        app.router.add_get("/_sandbox/state", self._on_state)
        app.on_response_prepare.append(self._stamp_date)
        app.on_shutdown.append(_release_hung)
        return app

    def snapshot(self) -> dict[str, Any]:
        ledger = self._ledger
        return {
            "requests": ledger.requests,
            "by_status": dict(ledger.by_status),
            "dropped": ledger.dropped,
            "accepted": [dict(record) for record in ledger.accepted],
            "duplicates": ledger.duplicates,
            "test_events": ledger.test_events,
            "duplicate_sends": sum(send.repeat for send in ledger.sends),
            "referrals": {
                f"{server_id}/{token}": asdict(referral)
                for (server_id, token), referral in ledger.referrals.items()
            },
            "faults": self.faults.as_json(),
        }

    def request_log(self) -> list[Send]:
        """Every event POST so far, in arrival order."""
        return list(self._ledger.sends)

    def reset(self) -> None:
        """Forget all state and clear faults in place, so callers holding ``faults`` see it."""
        healthy = Faults()
        for f in fields(Faults):
            setattr(self.faults, f.name, getattr(healthy, f.name))
        self._ledger = _Ledger()

    async def _on_event(self, request: web.Request) -> web.StreamResponse:
        self._ledger.requests += 1
        try:
            # Read before any fault is applied, so every send is logged with its key.
            body: bytes | None = await request.read()
        except ConnectionResetError:
            body = None
        key = _key_of(body)
        send = Send(key, repeat=key is not None and self._ledger.effects[key] > 0)
        self._ledger.sends.append(send)
        response = await self._respond(request, body)
        if response is None:
            self._ledger.dropped += 1
            return _abort(request)
        send.status = response.status
        self._ledger.by_status[str(response.status)] += 1
        if self.faults.slow_body_ms > 0:
            return await _trickle(request, response, self.faults.slow_body_ms / 1000)
        return response

    async def _respond(self, request: web.Request, body: bytes | None) -> web.Response | None:
        """The answer to an event POST, or None when the connection must die unanswered."""
        faults = self.faults
        if faults.hang:
            await _until_gone(request)
            return None
        if faults.reset or body is None:
            return None
        answer = self._fault_answer()
        if answer is None:
            try:
                answer = self._ingest(body, request.headers.get(HEADER))
            except _Refusal as refusal:
                answer = _json({"error": refusal.error}, status=refusal.status)
        if faults.latency_ms > 0:
            # The effect is already applied; only the answer is slow. A client that gives up
            # now must resend, and the resend must come back as a duplicate.
            await asyncio.sleep(faults.latency_ms / 1000)
        return answer

    def _fault_answer(self) -> web.Response | None:
        faults = self.faults
        if faults.outage:
            return _json({"error": "outage"}, status=503)
        if faults.impostor in IMPOSTORS:
            status, content_type, body = IMPOSTORS[faults.impostor]
            return web.Response(status=status, body=body or None, content_type=content_type)
        if faults.redirect_to:
            return _json({"error": "moved"}, status=307, headers={"Location": faults.redirect_to})
        if faults.throttle_next > 0:
            faults.throttle_next -= 1
            retry_after = {"Retry-After": str(faults.retry_after_s)}
            return _json({"error": "throttled"}, status=429, headers=retry_after)
        if random.random() < faults.error_rate:
            return _json({"error": "injected failure"}, status=faults.error_status)
        return None

    def _ingest(self, body: bytes, header: str | None) -> web.Response:
        signature = self._signature(header)
        data = _load_object(body)
        # The secret depends on server_id, so this one field is read before the MAC is checked.
        server_id = _required_string(data, "server_id")
        secret = self._servers.get(server_id)
        if secret is None:
            raise _Refusal(404, "unknown server")
        if not verify(body, secret, signature):
            raise _Refusal(401, "bad_signature")
        if signature.kid is not None and signature.kid != self.kids.get(server_id, signature.kid):
            raise _Refusal(401, "bad_signature")
        event = _parse_event(data, server_id)
        ledger = self._ledger
        if event.test:
            ledger.test_events += 1
            return _json({"ok": True, "test": True})
        if event.token in self.faults.unknown_tokens:
            raise _Refusal(404, "unknown token")
        if ledger.effects[event.key]:
            ledger.duplicates += 1
            return _json({"ok": True, "duplicate": True})
        outcome = self._apply(event)
        self._record(event, "ignored" if "ignored" in outcome else "accepted")
        return _json(outcome)

    def _signature(self, header: str | None) -> ParsedSignature:
        if header is None:
            raise _Refusal(400, f"missing {HEADER} header")
        try:
            signature = parse_header(header)
        except ValueError as exc:
            raise _Refusal(400, f"malformed {HEADER} header: {exc}") from exc
        if abs(self.now() - signature.t) > WINDOW_S:
            raise _Refusal(401, "bad_signature")
        return signature

    def _apply(self, event: _Event) -> dict[str, Any]:
        ledger = self._ledger
        if event.referee_identity is not None:
            anchor = (event.server_id, event.referee_identity)
            owner = ledger.anchors.get(anchor, event.token)
            if owner != event.token:
                return {"ok": True, "ignored": "first_touch_conflict"}
        referral = ledger.referrals.get((event.server_id, event.token))
        current = referral.state if referral is not None else "none"
        target = _TRANSITIONS.get((current, event.event))
        if target is None:
            raise _Refusal(422, f"illegal transition from {current} on {event.event}")
        if referral is None:
            assert event.referee_identity is not None  # only `registered` leaves "none"
            referral = _Referral(f"ref_{secrets.token_hex(6)}", target, event.referee_identity)
            ledger.referrals[(event.server_id, event.token)] = referral
            ledger.anchors[(event.server_id, event.referee_identity)] = event.token
        referral.state = target
        return {"ok": True, "referral_id": referral.referral_id, "state": referral.state}

    def _record(self, event: _Event, outcome: str) -> None:
        ledger = self._ledger
        ledger.effects[event.key] += 1
        record = {name: getattr(event, name) for name in _RECORD_FIELDS}
        ledger.accepted.append(record | {"outcome": outcome})

    async def _on_faults(self, request: web.Request) -> web.Response:
        try:
            data = _load_object(await request.read())
            updates = {name: _fault_value(name, value) for name, value in data.items()}
        except _Refusal as refusal:
            return _json({"error": refusal.error}, status=refusal.status)
        for name, value in updates.items():
            setattr(self.faults, name, value)
        return _json({"ok": True, "faults": self.faults.as_json()})

    async def _on_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json({"ok": True})

    async def _on_state(self, request: web.Request) -> web.Response:
        return _json(self.snapshot())

    async def _stamp_date(self, request: web.Request, response: web.StreamResponse) -> None:
        # Clients compute clock skew from Date, so it must come from the shifted clock.
        response.headers[hdrs.DATE] = formatdate(self.now(), usegmt=True)


@asynccontextmanager
async def running_sandbox(
    servers: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    faults: Faults | None = None,
    ssl_context: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
    kids: Mapping[str, str] | None = None,
) -> AsyncIterator[RunningSandbox]:
    """Serve a fresh sandbox on ``host:port`` (0 picks a free port) for the block's duration.

    With ``ssl_context`` it speaks HTTPS, e.g. with a self-signed certificate. With ``sock``
    (bound, e.g. in another network namespace) it serves there instead of ``host:port``.
    """
    sandbox = Sandbox(servers, faults, kids)
    runner = web.AppRunner(sandbox.app(), shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site: web.BaseSite = (
            web.SockSite(runner, sock, ssl_context=ssl_context)
            if sock is not None
            else web.TCPSite(runner, host, port, ssl_context=ssl_context)
        )
        await site.start()
        scheme = "http" if ssl_context is None else "https"
        host, port = runner.addresses[0][:2]
        url = base_url(host, port, scheme)
        yield RunningSandbox(sandbox, url + EVENT_PATH, url)
    finally:
        await runner.cleanup()


async def serve_sandbox(
    servers: Mapping[str, str],
    *,
    host: str,
    port: int,
    faults: Faults,
    shutdown: asyncio.Event,
    on_ready: Callable[[str], None] | None = None,
    kids: Mapping[str, str] | None = None,
) -> None:
    """Serve until ``shutdown`` is set; ``on_ready`` gets the event URL once listening."""
    async with running_sandbox(servers, host=host, port=port, faults=faults, kids=kids) as running:
        if on_ready is not None:
            on_ready(running.url)
        await shutdown.wait()


def _json(
    payload: dict[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(payload, status=status, headers=headers, dumps=_dumps)


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError as exc:  # covers JSONDecodeError and UnicodeDecodeError
        raise _Refusal(400, "body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise _Refusal(400, "body must be a JSON object")
    return data


def _key_of(body: bytes | None) -> tuple[str, str, str] | None:
    """The dedup key of a non-test event body, read leniently; None if it has none."""
    try:
        data = _load_object(body or b"")
    except _Refusal:
        return None
    parts = (data.get("token"), data.get("event"), data.get("server_event_id"))
    if data.get("test") is True or not all(isinstance(part, str) for part in parts):
        return None
    token, event, server_event_id = (str(part) for part in parts)
    return (token.strip(), event, server_event_id.strip())


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON (and so MMOLove) does not.
    raise ValueError(f"{name} is not JSON")


def _required_string(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _Refusal(400, f"{name} is required and must be a non-empty string")
    return value.strip()


def _parse_event(data: dict[str, Any], server_id: str) -> _Event:
    event = data.get("event")
    if not isinstance(event, str) or event not in EVENTS:
        raise _Refusal(400, f"event must be one of {', '.join(EVENTS)}")
    token = _required_string(data, "token")
    server_event_id = _required_string(data, "server_event_id")
    # Ignored on later events, so only `registered` validates it.
    referee = _required_string(data, "referee_identity") if event == "registered" else None
    if "ts" in data and not _is_number(data["ts"]):
        raise _Refusal(400, "ts must be a number of Unix seconds")
    test = data.get("test", False)
    if not isinstance(test, bool):
        raise _Refusal(400, "test must be a boolean")
    return _Event(event, token, server_id, server_event_id, referee, test)


def _is_number(value: object) -> TypeGuard[int | float]:
    # Python's bool is an int, but a JSON boolean is no number.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fault_value(name: str, value: object) -> object:
    """A JSON value converted for the ``Faults`` field ``name``; refused if it does not fit."""
    if name not in _FAULT_KINDS:
        raise _Refusal(400, f"unknown fault field {name!r}")
    kind, wanted = _FAULT_KINDS[name]
    if kind == "float" and _is_number(value):
        return float(value)
    if kind == "int" and _is_number(value) and isinstance(value, int):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str | None" and (value is None or isinstance(value, str)):
        return value
    if kind == "set[str]" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return set(value)
    raise _Refusal(400, f"fault field {name!r} must be {wanted}")


async def _release_hung(app: web.Application) -> None:
    app[_CLOSING].set()


async def _until_gone(request: web.Request) -> None:
    # aiohttp does not cancel handlers when the client leaves (handler_cancellation is off by
    # default), so a hung request polls for the disconnect or the app's shutdown.
    closing = request.app[_CLOSING]
    while not closing.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(_HANG_POLL_S)


def _abort(request: web.Request) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.abort()
    # aiohttp's write to the aborted transport fails with ConnectionError, which it treats as
    # a client disconnect: nothing is sent and no traceback is logged.
    return web.Response()


async def _trickle(
    request: web.Request, response: web.Response, seconds: float
) -> web.StreamResponse:
    """Send the answer's headers now and its body a byte at a time over ``seconds``."""
    body = response.body if isinstance(response.body, bytes) else b""
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(body)
    step_s = seconds / max(1, len(body))
    try:
        await stream.prepare(request)
        for i in range(len(body)):
            await asyncio.sleep(step_s)
            await stream.write(body[i : i + 1])
        await stream.write_eof()
    except ConnectionError:
        pass  # the client gave up mid-body, as a client with a timeout does
    return stream

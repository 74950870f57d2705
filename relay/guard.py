"""Ingest against hostile clients: file descriptors, connections, slow and large bodies.

An attack run showed what a client can do through the HTTP port alone: 1,100 idle or
slowloris connections used up the 1,024 descriptors the relay was started with, so every
normal POST failed; 1,000 connections each sending just under 1 MiB and then stalling took
the relay to 1.86 GiB. The defences, each bounded by a setting of ``[ingest]``:

- the soft descriptor limit is raised to the hard one at start-up;
- at most ``max_connections`` connections are served; one more is answered 503 and closed;
- a connection that sends no complete request head within ``header_timeout_s`` (an idle
  keep-alive one, or a slowloris one) is closed;
- a body must arrive within ``body_timeout_s`` (408), and at most
  ``max_body_bytes_in_flight`` bytes of bodies are read at once (503 beyond).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from relay.api import error_response
from relay.config.settings import Settings

log = structlog.get_logger("relay.guard")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Descriptors kept for everything but ingest connections: the outbox and its WAL, the
# upstream connection pool, logs, the listening socket.
FD_RESERVE = 128
REFUSED_LINGER_S = 1.0
RECEIVE_BUFFER_BYTES = 32 * 1024  # the kernel doubles it for its bookkeeping
RETRY_AFTER_S = 1
# After a body this large, hand freed heap memory back to the system once nothing is in
# flight: glibc keeps it otherwise, and a burst of large bodies would stay resident.
TRIM_AFTER_BYTES = 256 * 1024
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None)


@dataclass(frozen=True, slots=True)
class FdLimit:
    """The open-file limit in force, and what raising it did (logged once the relay is up)."""

    soft: int
    hard: int
    raised_from: int | None = None
    error: str | None = None


def raise_fd_limit() -> FdLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit.

    Most systems start services with a soft limit of 1,024 and a far higher hard one. A
    sandbox that forbids ``setrlimit`` (systemd's ``~@resources``) keeps the limit it set
    with ``LimitNOFILE=``; that is reported, not fatal.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or soft == resource.RLIM_INFINITY:
        return FdLimit(soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        return FdLimit(soft, hard, error=str(exc))
    return FdLimit(hard, hard, raised_from=soft)


def connection_cap(settings: Settings, fd_limit: int) -> int:
    """``max_connections``, lowered so that the cap is reached before the descriptors run out
    (the daemon logs it, at warning level when lowered: raise LimitNOFILE or ``ulimit -n``)."""
    if fd_limit == resource.RLIM_INFINITY:
        return settings.max_connections
    return min(settings.max_connections, max(1, fd_limit - FD_RESERVE))


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose server caps connections and answers bad HTTP in JSON."""

    def __init__(self, app: web.Application, *, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections

    async def _make_server(self) -> web.Server:
        # BaseRunner's hook for building the server: the app's own one, re-made as ours with
        # the same handler settings (aiohttp keeps them in ``_kwargs``).
        made = await super()._make_server()
        return _CappedServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            max_connections=self._max_connections,
            **made._kwargs,
        )


class _CappedServer(web.Server):
    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections

    def __call__(self) -> Any:
        if len(self._connections) >= self.max_connections:
            return _Refuse(self.max_connections)
        return _JsonErrors(self, loop=self._loop, **self._kwargs)


class _JsonErrors(RequestHandler):
    """aiohttp's connection handler, answering HTTP it cannot parse in the JSON error shape,
    with a small receive buffer.

    Malformed requests never reach the app's middlewares; aiohttp answers them here, by
    default in plain text after logging a traceback at error level.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # One read takes what the kernel buffered, up to 256 KiB, before aiohttp can pause
        # the socket; with 1,000 connections sending bodies that was 250 MiB waiting for an
        # answer. A fixed buffer bounds each read (and still moves a 1 MiB body in well
        # under body_timeout_s on any LAN).
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        super().connection_made(transport)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of an answer went out already: aiohttp's own rule, the connection is broken.
            raise ConnectionError("the answer was partly sent; the connection is dropped")
        if status >= 500:
            log.error("api.request_failed", status=status, error=repr(exc))
            code, text = "internal_error", "the relay failed on this request; retry later."
        else:
            # Bad input from a client: one line, no traceback (the parser's message says
            # what was wrong, cut short: it may quote what the client sent).
            reason = (message or str(exc) or "bad request").split("\n", 1)[0][:200]
            log.info("api.malformed_request", status=status, reason=reason)
            code, text = "malformed_request", f"the request is not valid HTTP: {reason}."
        response = error_response(status, code, text)
        response.force_close()
        return response


class _Refuse(asyncio.Protocol):
    """One connection over the cap: answer 503, read and drop what comes, close soon."""

    def __init__(self, cap: int) -> None:
        self.cap = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # a stream socket's, uvloop's or not
        body = json.dumps(
            {
                "error": {
                    "code": "too_many_connections",
                    "message": f"the relay serves at most {self.cap} connections at once; "
                    "close idle ones and send again in a second.",
                    "field": None,
                }
            }
        ).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        transport.write(head + body)
        # Half-close so the answer arrives before the close; a reset would drop it.
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.close)
        log.warning("api.connection_refused", cap=self.cap)

    def data_received(self, data: bytes) -> None:
        """Read and drop: unread data at close would reset the connection."""


def body_guard(settings: Settings) -> Any:
    """Middleware: read each request body within ``body_timeout_s``, within a shared budget.

    The body is read here, before the handler, so its bytes are counted while they wait in
    memory; the handler's own ``read()`` then returns the same bytes.
    """
    budget = settings.max_body_bytes_in_flight
    in_flight = 0

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        if not request.body_exists:
            return await handler(request)
        size = min(request.content_length or settings.max_body_bytes, settings.max_body_bytes)
        if in_flight + size > budget:
            log.warning("api.body_budget_full", in_flight=in_flight, budget=budget)
            response = error_response(
                503,
                "overloaded",
                "the relay is reading too many request bodies at once; send again in a second.",
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            response.force_close()
            return response
        in_flight += size
        try:
            try:
                if request.content.is_eof():
                    await request.read()  # all there already (the usual small event): no wait
                else:
                    async with asyncio.timeout(settings.body_timeout_s):
                        await request.read()
            except TimeoutError:
                log.info("api.body_timeout", path=request.path, timeout_s=settings.body_timeout_s)
                response = error_response(
                    408,
                    "body_timeout",
                    f"the request body did not arrive within {settings.body_timeout_s} s; "
                    "send it again.",
                )
                response.force_close()
                return response
            return await handler(request)
        finally:
            in_flight -= size
            if in_flight == 0 and size >= TRIM_AFTER_BYTES:
                _release_freed_memory()

    return guard


def _release_freed_memory() -> None:
    trim = getattr(_libc, "malloc_trim", None)  # glibc only; musl returns memory itself
    if trim is not None:
        trim(0)

"""The composition root: opens the outbox, wires ingest and delivery, and closes in order.

``run(settings, shutdown=...)`` is the daemon; the CLI adds signals, tests drive it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, fields, replace

import structlog
from aiohttp import web

from relay import __version__, admin, guard, lookup
from relay.alerts.rules import RULES, Rules
from relay.alerts.targets import TARGETS, Targets
from relay.api import make_app
from relay.config.report import describe
from relay.config.settings import Settings
from relay.config.values import host_port, mask_url
from relay.console import add_console
from relay.dispatcher import Dispatcher
from relay.errors import ConfigError, OutboxDown
from relay.fleet import FleetSync
from relay.metrics import Metrics
from relay.rejected import REJECTIONS, Rejections
from relay.sender import Sender
from relay.snapshot import Live
from relay.sources.state import SOURCES, SourceState
from relay.store.backends import open_outbox
from relay.store.contract import Outbox

log = structlog.get_logger("relay.daemon")
HOUSEKEEPING_EVERY_S = 60.0
# How soon a deleted or replaced outbox file is noticed when no ingest checks it first.
FILE_CHECK_EVERY_S = 2.0
INGEST_GRACE_S = 1.0
UNIX_SOCKET_MODE = 0o660
# What SIGHUP applies; every other setting needs a restart, and a reload that changes one
# says so in its log line.
RELOADABLE = ("servers", "allow_extra_fields", "max_batch", "notes")


@dataclass
class RunningRelay:
    """A handle on a started relay, given to ``on_ready``."""

    url: str  # base URL of ingest, e.g. http://127.0.0.1:8787 (or unix:/path)
    live: Live
    dispatcher: Dispatcher
    outbox: Outbox
    _app: web.Application = field(repr=False)
    _dispatch_task: asyncio.Task[None] = field(repr=False)

    @property
    def settings(self) -> Settings:
        return self.live.settings

    @property
    def dispatching(self) -> bool:
        """Whether the dispatcher still runs: what the systemd watchdog vouches for."""
        return not self._dispatch_task.done()

    def reload(self, settings: Settings) -> None:
        """Apply new servers (secrets, kids) and ingest rules now; name what needs a restart."""
        needs_restart = [
            f.name
            for f in fields(Settings)
            if f.name not in RELOADABLE
            and getattr(settings, f.name) != getattr(self.settings, f.name)
        ]
        before = {s.server_id for s in self.settings.servers}
        self.live.settings = replace(
            self.settings, **{name: getattr(settings, name) for name in RELOADABLE}
        )
        self.dispatcher.reload(self.settings.servers)
        log.info(
            "relay.reloaded",
            servers=[s.server_id for s in self.settings.servers],
            # Their events are held, not sent, until they are added back.
            removed=sorted(before - {s.server_id for s in settings.servers}) or None,
            needs_restart=needs_restart or None,
        )
        _log_notes(settings)


async def run(
    settings: Settings,
    *,
    shutdown: asyncio.Event,
    on_ready: Callable[[RunningRelay], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
) -> None:
    """Serve until ``shutdown`` is set, then stop ingest, drain deliveries and close."""
    started = time.monotonic()
    fd_limit = guard.raise_fd_limit()
    max_connections = guard.connection_cap(settings, fd_limit.soft)
    async with AsyncExitStack() as stack:
        outbox = await open_outbox(settings)
        stack.push_async_callback(outbox.close)
        requeued = await outbox.requeue_in_flight(time.time())
        if requeued:
            log.warning("outbox.recovered_in_flight", events=requeued)

        sender = Sender(
            settings.endpoint,
            concurrency=settings.concurrency,
            connect_timeout_s=settings.connect_timeout_s,
            send_timeout_s=settings.send_timeout_s,
            ca_file=settings.ca_file,
        )
        stack.push_async_callback(sender.close)
        metrics = Metrics()
        live = Live(settings)
        dispatcher = Dispatcher(outbox, sender, live, metrics=metrics)
        stop_dispatch = asyncio.Event()
        dispatch_task = asyncio.create_task(dispatcher.run(stop_dispatch), name="dispatcher")
        stack.push_async_callback(_finish, dispatch_task, stop_dispatch)

        def dispatcher_done(task: asyncio.Task[None]) -> None:
            # Ingest without delivery would pile up 202s that nothing sends: stop loudly
            # instead, so systemd or the orchestrator restarts the relay.
            if not task.cancelled() and task.exception() is not None:
                log.critical("dispatcher.crashed", error=repr(task.exception()))
                shutdown.set()

        dispatch_task.add_done_callback(dispatcher_done)
        fleet = asyncio.create_task(FleetSync(outbox, dispatcher).run(), name="fleet-sync")
        stack.push_async_callback(_cancel, fleet)
        chores = asyncio.create_task(_housekeeping(outbox, settings), name="housekeeping")
        stack.push_async_callback(_cancel, chores)
        watch = asyncio.create_task(_watch_file(outbox), name="outbox-watch")
        stack.push_async_callback(_cancel, watch)

        app = make_app(outbox, live, dispatcher.snapshot, metrics)
        admin.add_routes(app)
        app.middlewares.append(guard.body_guard(settings))
        lookup.add_routes(app)
        rejections = Rejections(outbox.records, metrics, keep=settings.rejected_keep)
        app[REJECTIONS] = rejections
        recorder = asyncio.create_task(rejections.run(), name="rejections")
        # Cancelled before the outbox closes; what it still holds is written on the way out.
        stack.push_async_callback(rejections.flush)
        stack.push_async_callback(_cancel, recorder)
        app[SOURCES] = states = _watch_sources(settings, outbox, metrics, rejections, stack)
        if settings.alerts:
            # Their own tasks and HTTP client: a slow or failing target never touches delivery.
            app[TARGETS] = Targets(settings.alerts, metrics)
            app[RULES] = Rules(outbox, dispatcher.snapshot, live, app[TARGETS].send, sources=states)
            for name, job in (("alert-targets", app[TARGETS].run), ("alert-rules", app[RULES].run)):
                stack.push_async_callback(_cancel, asyncio.create_task(job(), name=name))
        add_console(app)
        # Ingest handlers wait for one commit, so a short grace is enough for them; a client
        # still sending its body then is dropped unanswered and retries, nothing acknowledged.
        runner = guard.GuardedRunner(
            app,
            access_log=None,
            shutdown_timeout=min(INGEST_GRACE_S, settings.drain_timeout_s),
            max_connections=max_connections,
            # aiohttp closes a connection still waiting for a complete request head when
            # this runs out, counted from its opening or its last answer: slowloris included.
            keepalive_timeout=settings.header_timeout_s,
            # What a connection may buffer before its body is read: 1,000 attackers' worth
            # stays small (aiohttp pauses the socket at twice this).
            read_bufsize=16 * 1024,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site: web.BaseSite
        if settings.listen.path is not None:
            site = web.UnixSite(runner, str(settings.listen.path))
        else:
            site = web.TCPSite(runner, settings.listen.host, settings.listen.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {settings.listen}: {exc.strerror}; pick another address "
                "with MMOLOVE_RELAY_LISTEN."
            ) from exc
        if settings.listen.path is not None:
            # The owner and its group may connect (put the game server in that group), others
            # not. Before this chmod the umask applies, which denies others with any sane one.
            settings.listen.path.chmod(UNIX_SOCKET_MODE)
        url = _bound_url(runner, settings)
        relay = RunningRelay(
            url=url,
            live=live,
            dispatcher=dispatcher,
            outbox=outbox,
            _app=app,
            _dispatch_task=dispatch_task,
        )
        log.info(
            "relay.ready",
            version=__version__,
            listen=url,
            outbox=outbox.location,
            endpoint=mask_url(settings.endpoint),
            servers=[s.server_id for s in settings.servers],
            startup_ms=round((time.monotonic() - started) * 1000, 1),
        )
        # The settings in force, secrets masked: what an operator checks first.
        log.info("relay.settings", **describe(settings))
        log.log(
            # A lowered cap or a limit that could not be raised: the operator should know.
            logging.WARNING
            if fd_limit.error or max_connections < settings.max_connections
            else logging.INFO,
            "relay.fd_limit",
            **asdict(fd_limit),
            max_connections=max_connections,
        )
        _log_notes(settings)
        if on_ready is not None:
            on_ready(relay)

        await shutdown.wait()
        # Stop taking events first: a late POST gets 503 + Retry-After, never a silent drop.
        log.info("relay.stopping")
        if on_stopping is not None:
            on_stopping()
        live.draining = True
        # No new claims; in-flight attempts drain within their budget while the listener
        # still answers, so a client sees 503 + Retry-After rather than a refused connection.
        await _finish(dispatch_task, stop_dispatch)
        # The exit stack now unwinds in reverse: listener, housekeeping, dispatcher (done),
        # HTTP client, outbox.
    log.info("relay.stopped")


def _log_notes(settings: Settings) -> None:
    """The configuration's warnings (unknown variables, short secrets, trims), one line each."""
    for note in settings.notes:
        log.log(logging.getLevelName(note.level.upper()), note.event, message=note.message)


async def _finish(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    await task


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _watch_sources(
    settings: Settings,
    outbox: Outbox,
    metrics: Metrics,
    rejections: Rejections,
    stack: AsyncExitStack,
) -> list[SourceState]:
    """Each game-database source its own task and connection: a slow or failing database
    waits alone, and ingest and delivery never wait for a poll."""
    if not settings.game_sources:
        return []
    # Imported here: a relay with no source never loads the database drivers (0.04 s a start).
    from relay.sources.watch import Watcher

    watchers = [
        Watcher(
            source,
            outbox,
            metrics,
            note=rejections.note,
            server_ids=[s.server_id for s in settings.servers],
        )
        for source in settings.game_sources
    ]
    for watcher in watchers:
        task = asyncio.create_task(watcher.run(), name=f"source-{watcher.config.name}")
        stack.push_async_callback(_cancel, task)
    return [watcher.state for watcher in watchers]


async def _housekeeping(outbox: Outbox, settings: Settings) -> None:
    """Prune what retention allows, once a minute."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_EVERY_S)
        now = time.time()
        try:
            events, attempts = await outbox.prune(
                now - settings.retention_s, now - settings.ledger_retention_s
            )
        except Exception as exc:  # the next round may succeed; never kill the daemon
            if not isinstance(exc, OutboxDown):  # logged once by the outbox
                log.error("outbox.housekeeping_failed", error=str(exc))
            continue
        if events or attempts:
            log.info(
                "outbox.pruned",
                events=events,
                attempts=attempts,
            )


async def _watch_file(outbox: Outbox) -> None:
    """Check the outbox is still the file at its path (``Outbox.check_file`` logs a loss)."""
    while True:
        if await outbox.check_file() is not None:
            return  # lost for good: nothing more to notice
        await asyncio.sleep(FILE_CHECK_EVERY_S)


def _bound_url(runner: web.AppRunner, settings: Settings) -> str:
    if settings.listen.path is not None:
        return f"unix:{settings.listen.path}"
    host, port = runner.addresses[0][:2]
    return f"http://{host_port(host, port)}"  # the bound address, wildcard included

"""The composition root: opens the outbox, wires ingest and delivery, and closes in order.

``run(settings, shutdown=...)`` is the daemon; the CLI adds signals, tests drive it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, fields, replace

import structlog
from aiohttp import web

from relay import __version__, admin
from relay.api import INGEST, make_app
from relay.config import Settings, describe
from relay.dispatcher import Dispatcher
from relay.fleet import FleetSync
from relay.metrics import Metrics
from relay.sender import Sender
from relay.store.backends import open_outbox
from relay.store.contract import Outbox

log = structlog.get_logger("relay.daemon")
HOUSEKEEPING_EVERY_S = 60.0
INGEST_GRACE_S = 1.0
UNIX_SOCKET_MODE = 0o660
# What SIGHUP applies; every other setting needs a restart, and a reload that changes one
# says so in its log line.
RELOADABLE = ("servers", "allow_extra_fields", "max_batch")


@dataclass
class RunningRelay:
    """A handle on a started relay, given to ``on_ready``."""

    url: str  # base URL of ingest, e.g. http://127.0.0.1:8787 (or unix:/path)
    settings: Settings
    dispatcher: Dispatcher
    outbox: Outbox
    _app: web.Application = field(repr=False)
    _dispatch_task: asyncio.Task[None] = field(repr=False)

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
        self.settings = replace(
            self.settings, **{name: getattr(settings, name) for name in RELOADABLE}
        )
        self._app[INGEST].settings = self.settings
        self.dispatcher.reload(self.settings.servers)
        log.info(
            "relay.reloaded",
            servers=[s.server_id for s in self.settings.servers],
            needs_restart=needs_restart or None,
        )


async def run(
    settings: Settings,
    *,
    shutdown: asyncio.Event,
    on_ready: Callable[[RunningRelay], None] | None = None,
    on_stopping: Callable[[], None] | None = None,
) -> None:
    """Serve until ``shutdown`` is set, then stop ingest, drain deliveries and close."""
    started = time.monotonic()
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
        dispatcher = Dispatcher(outbox, sender, settings, metrics=metrics)
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

        app = make_app(outbox, settings, dispatcher.snapshot, metrics)
        admin.add_routes(app)
        # Ingest handlers wait for one commit, so a short grace is enough for them; a client
        # still sending its body then is dropped unanswered and retries, nothing acknowledged.
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=min(INGEST_GRACE_S, settings.drain_timeout_s)
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site: web.BaseSite
        if settings.listen.path is not None:
            site = web.UnixSite(runner, str(settings.listen.path))
        else:
            site = web.TCPSite(runner, settings.listen.host, settings.listen.port)
        await site.start()
        if settings.listen.path is not None:
            # The owner and its group may connect (put the game server in that group), others
            # not. Before this chmod the umask applies, which denies others with any sane one.
            settings.listen.path.chmod(UNIX_SOCKET_MODE)
        url = _bound_url(runner, settings)
        relay = RunningRelay(
            url=url,
            settings=settings,
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
            endpoint=settings.endpoint,
            servers=[s.server_id for s in settings.servers],
            startup_ms=round((time.monotonic() - started) * 1000, 1),
        )
        # The settings in force, secrets masked: what an operator checks first.
        log.info("relay.settings", **describe(settings))
        if on_ready is not None:
            on_ready(relay)

        await shutdown.wait()
        # Stop taking events first: a late POST gets 503 + Retry-After, never a silent drop.
        log.info("relay.stopping")
        if on_stopping is not None:
            on_stopping()
        app[INGEST].draining = True
        stop_dispatch.set()  # no new claims; in-flight attempts drain alongside the listener
        # The exit stack now unwinds in reverse: listener, housekeeping, dispatcher (drain
        # within its budget), HTTP client, outbox.
    log.info("relay.stopped")


async def _finish(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    await task


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _housekeeping(outbox: Outbox, settings: Settings) -> None:
    """Prune what retention allows, once a minute."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_EVERY_S)
        now = time.time()
        try:
            events, attempts = await outbox.prune(now - settings.retention_s)
        except Exception as exc:  # the next round may succeed; never kill the daemon
            log.error("outbox.housekeeping_failed", error=str(exc))
            continue
        if events or attempts:
            log.info(
                "outbox.pruned",
                events=events,
                attempts=attempts,
            )


def _bound_url(runner: web.AppRunner, settings: Settings) -> str:
    if settings.listen.path is not None:
        return f"unix:{settings.listen.path}"
    host, port = runner.addresses[0][:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"

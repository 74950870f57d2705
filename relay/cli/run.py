"""The commands that run something: the daemon (``serve``), the sandbox and the demo.

The only module that installs signal handlers and configures logging.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
import uvloop

from relay import logs
from relay.cli.client import EXIT_OK, EXIT_REFUSED, Environ, http_json
from relay.config.loading import load_settings
from relay.config.settings import Settings
from relay.config.values import Listen, Secret, ServerConfig, mask_url, parse_listen
from relay.daemon import RunningRelay, run
from relay.errors import ConfigError
from relay.notify import Notifier
from relay.sandbox import DEMO_SECRET, DEMO_SERVER_ID, Faults, running_sandbox, serve_sandbox
from relay.store.contract import FINISHED

log = structlog.get_logger("relay.cli")


# -- serve ---------------------------------------------------------------------------------


def serve(args: argparse.Namespace, environ: Environ) -> int:
    settings = load_settings(environ, args.config)
    logs.configure(settings.log_format)
    _redact(settings)
    # The outbox's writer thread hands the GIL back at every SQLite step and must take it
    # again from a busy event loop; by default it waits up to 5 ms for that. 1 ms measured
    # about 5 % more ingest per second and no more CPU per event (0.3 ms cost more CPU).
    sys.setswitchinterval(0.001)
    # uvloop: its transports cost less per request than asyncio's, which ingest feels.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve_until_signalled(settings, args.config, environ))
    return EXIT_OK


async def _serve_until_signalled(settings: Settings, config: Path | None, environ: Environ) -> None:
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    handles: list[RunningRelay] = []
    systemd = Notifier.from_environ(environ, pid=os.getpid())

    starting = asyncio.current_task()

    def stop(name: str) -> None:
        if shutdown.is_set():
            log.warning("relay.forced_exit", signal=name)
            os._exit(1)  # a second signal: the operator wants out now; the outbox is durable
        log.info("relay.signal", signal=name)
        shutdown.set()
        if not handles and starting is not None:
            # Still starting: nothing is taken yet, so stop now rather than after a start-up
            # that may wait seconds (a locked outbox, an unreachable database).
            starting.cancel()

    def reload() -> None:
        try:
            settings = load_settings(environ, config)
        except ConfigError as exc:
            log.error("relay.reload_failed", error=str(exc))
            return
        _redact(settings)
        for relay in handles:
            relay.reload(settings)

    def ready(relay: RunningRelay) -> None:
        handles.append(relay)
        systemd.notify("READY=1", f"STATUS=ingest on {relay.url}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        async with systemd.watchdog(alive=lambda: all(r.dispatching for r in handles)):
            await run(
                settings,
                shutdown=shutdown,
                on_ready=ready,
                on_stopping=lambda: systemd.notify("STOPPING=1"),
            )
    except asyncio.CancelledError:
        if handles or not shutdown.is_set() or starting is None:
            raise
        starting.uncancel()
        log.info("relay.stopped", before_ready=True)
    finally:
        # The loop's handlers only set a flag it no longer reads: whatever still runs after
        # this (a thread that keeps the process alive) must die of the next SIGTERM.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _redact(settings: Settings) -> None:
    logs.redact(s.secret.reveal() for s in settings.servers)
    if settings.ingest_token is not None:
        logs.redact([settings.ingest_token.reveal()])
    # An alert URL holds its target's token.
    logs.redact(a.url.reveal() for a in settings.alerts)
    logs.redact(a.secret.reveal() for a in settings.alerts if a.secret is not None)


def migrate_outbox(args: argparse.Namespace, environ: Environ) -> int:
    # Imported here: serve on a SQLite file never loads asyncpg (0.04 s of every start).
    from relay.store.migrate_outbox import copy_outbox

    settings = load_settings(environ, args.config, require_servers=False)
    if not args.to.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"--to {mask_url(args.to)!r} is not a postgresql:// URL.")
    source = args.source or settings.db_path
    password = settings.db_password.reveal() if settings.db_password else None
    done = asyncio.run(
        copy_outbox(source, args.to, where=mask_url(args.to), password=password, progress=print)
    )
    print(
        f"copied {done.copied} events, {done.attempts} attempts and {done.records} ledger "
        f"entries and rejected inputs from {source} to "
        f"{mask_url(args.to)}; {done.already_there} were there already. Point "
        "MMOLOVE_RELAY_DB at the URL and start the relays."
    )
    return EXIT_OK


# -- sandbox -------------------------------------------------------------------------------


def sandbox(args: argparse.Namespace, environ: Environ) -> int:
    servers = dict(_pair("--server", text) for text in args.server) or {DEMO_SERVER_ID: DEMO_SECRET}
    kids = dict(_pair("--kid", text) for text in args.kid)
    listen = _listen_arg(args.listen)
    faults = Faults(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        error_status=args.error_status,
        clock_offset_s=args.clock_offset_s,
    )
    logs.configure(None)

    async def serve() -> None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, shutdown.set)

        def ready(url: str) -> None:
            print(
                f"sandbox listening: {url} (servers: {', '.join(servers)}; faults: POST "
                f"{url.rsplit('/api/', 1)[0]}/_sandbox/faults)",
                flush=True,
            )

        await serve_sandbox(
            servers,
            host=listen.host,
            port=listen.port,
            faults=faults,
            kids=kids,
            shutdown=shutdown,
            on_ready=ready,
        )

    asyncio.run(serve())
    return EXIT_OK


def _pair(flag: str, text: str) -> tuple[str, str]:
    """``--server ID=SECRET`` or ``--kid ID=KID``: the server id and its value."""
    server_id, sep, value = text.partition("=")
    if not sep or not server_id or not value:
        what = "SECRET" if flag == "--server" else "KID"
        raise ConfigError(f"{flag} {text!r} is not ID={what}.")
    return server_id, value


def _listen_arg(text: str) -> Listen:
    listen = parse_listen(text)
    if listen.path is not None:
        raise ConfigError("the sandbox listens on host:port only.")
    return listen


# -- demo ----------------------------------------------------------------------------------


def demo(args: argparse.Namespace, environ: Environ) -> int:
    logs.configure("console", level="warning")
    return asyncio.run(_run_demo(args.timeout_s))


async def _run_demo(timeout_s: float) -> int:
    """Sandbox + relay on a temporary outbox; three events in, wait until all three land."""
    async with running_sandbox({DEMO_SERVER_ID: DEMO_SECRET}) as sandbox:
        with tempfile.TemporaryDirectory(prefix="mmolove-relay-demo-") as tmp:
            settings = Settings(
                servers=(ServerConfig(DEMO_SERVER_ID, Secret(DEMO_SECRET)),),
                endpoint=sandbox.url,
                listen=Listen("127.0.0.1", 0),
                db_path=Path(tmp) / "outbox.db",
                backoff_base_s=0.2,
                backoff_cap_s=2.0,
            )
            shutdown = asyncio.Event()
            ready: asyncio.Future[RunningRelay] = asyncio.get_running_loop().create_future()
            relay_task = asyncio.create_task(
                run(settings, shutdown=shutdown, on_ready=ready.set_result), name="demo-relay"
            )
            try:
                relay = await asyncio.wait_for(ready, timeout=10)
                print(f"sandbox (MMOLove stand-in): {sandbox.url}")
                print(f"relay ingest:               {relay.url}   outbox: {settings.db_path}\n")
                landed = await _demo_events(relay.url, timeout_s)
            finally:
                shutdown.set()
                await relay_task
            accepted = sandbox.sandbox.snapshot()
    tests = accepted.get("test_events", 0)
    print(
        f"\nsandbox recorded {len(accepted['accepted'])} accepted events and {tests} "
        "verified test event."
    )
    if landed:
        print(
            "All three events landed. Next: point MMOLOVE_ENDPOINT at MMOLove and run "
            "`mmolove-relay serve`."
        )
        return EXIT_OK
    print("Not every event landed in time; see the delivery log above.", file=sys.stderr)
    return EXIT_REFUSED


async def _demo_events(base_url: str, timeout_s: float) -> bool:
    now = int(time.time())
    player = f"player-{now % 100000}"
    events: list[dict[str, Any]] = [
        {
            "event": "registered",
            "token": f"mmref-demo-{now}",
            "referee_identity": player,
            "server_event_id": f"reg-{player}",
        },
        {"event": "qualified", "token": f"mmref-demo-{now}", "server_event_id": f"qual-{player}"},
        {
            "event": "registered",
            "token": f"mmref-demo-test-{now}",
            "referee_identity": player,
            "server_event_id": f"test-{player}",
            "test": True,
        },
    ]
    ids = []
    for body in events:
        status, answer = await asyncio.to_thread(http_json, "POST", f"{base_url}/v1/events", body)
        label = str(body["event"]) + (" (test)" if body.get("test") else "")
        print(
            f"POST /v1/events {label:<18} -> {status} outbox #{answer.get('id')} "
            f"{answer.get('status', answer.get('error'))}"
        )
        ids.append(answer.get("id"))
    print("\n  #  event       status     outcome    HTTP  attempts  referral / state")
    pending = {i for i in ids if i is not None}
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for event_id in sorted(pending):
            _, record = await asyncio.to_thread(
                http_json, "GET", f"{base_url}/v1/events/{event_id}"
            )
            if record.get("status") in FINISHED:
                pending.discard(event_id)
                print(
                    f"{event_id:>3}  {record['event']:<10}  {record['status']:<9}  "
                    f"{record.get('outcome') or '':<9}  {record.get('last_http_status') or '':<4}"
                    f"  {record['attempts']:>8}  {record.get('referral_id') or '-'} / "
                    f"{record.get('state') or '-'}"
                )
        await asyncio.sleep(0.05)
    return not pending and len(ids) == len(events) and all(i is not None for i in ids)

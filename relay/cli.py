"""The ``mmolove-relay`` command: the daemon, the sandbox, the demo and the operator tools.

The only module that reads ``os.environ``, installs signal handlers and configures logging.
Exit codes: 0 done, 1 the relay or MMOLove refused, 2 usage, 3 configuration or start-up
failure, 4 the relay is unreachable or unavailable (try again later).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import uvloop

from relay import __version__, logs, ops
from relay.config import (
    Listen,
    Secret,
    ServerConfig,
    Settings,
    load_settings,
    masked_url,
    parse_listen,
)
from relay.daemon import RunningRelay, run
from relay.errors import ConfigError, OutboxError
from relay.notify import Notifier
from relay.ops import EXIT_CONFIG, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, http_json
from relay.sandbox import DEMO_SECRET, DEMO_SERVER_ID, Faults, running_sandbox, serve_sandbox
from relay.store.copy import copy_outbox

log = structlog.get_logger("relay.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.handler(args)
    except ops.CommandFailed as exc:
        print(f"mmolove-relay: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(f"mmolove-relay: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OutboxError as exc:
        print(f"mmolove-relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmolove-relay",
        description="A local, durable, signing relay for MMOLove referral events.",
        epilog="Exit codes: 0 ok, 1 refused, 2 usage, 3 configuration/start-up, 4 unavailable.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML config file (default: $MMOLOVE_RELAY_CONFIG; environment variables override it)",
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the relay daemon")
    serve.set_defaults(handler=_serve)

    sandbox = sub.add_parser(
        "sandbox",
        help="run a local MMOLove stand-in that verifies "
        "signatures, idempotency and the state machine",
    )
    sandbox.add_argument(
        "--listen", default="127.0.0.1:8788", help="host:port (default %(default)s)"
    )
    sandbox.add_argument(
        "--server",
        action="append",
        metavar="ID=SECRET",
        default=[],
        help=f"a server and its secret (default {DEMO_SERVER_ID}=<demo secret>)",
    )
    sandbox.add_argument("--latency-ms", type=float, default=0.0)
    sandbox.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of requests answered --error-status"
    )
    sandbox.add_argument("--error-status", type=int, default=500)
    sandbox.add_argument("--clock-offset-s", type=float, default=0.0)
    sandbox.set_defaults(handler=_sandbox)

    demo = sub.add_parser(
        "demo",
        help="start a sandbox and a relay, send a registered, a "
        "qualified and a test event, and show them land",
    )
    demo.add_argument("--timeout-s", type=float, default=20.0)
    demo.set_defaults(handler=_demo)

    move = sub.add_parser(
        "migrate-outbox",
        help="copy a SQLite outbox (every event, its state and delivery log) into PostgreSQL; "
        "stop the relay first, and run again safely if interrupted",
    )
    move.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host/db")
    move.add_argument(
        "--from", dest="source", type=Path, help="the SQLite file (default: the configured outbox)"
    )
    move.set_defaults(handler=_migrate_outbox)

    ops.add_commands(sub, os.environ)
    return parser


def _migrate_outbox(args: argparse.Namespace) -> int:
    settings = load_settings(os.environ, args.config, require_servers=False)
    if not args.to.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"--to {masked_url(args.to)!r} is not a postgresql:// URL.")
    source = args.source or settings.db_path
    password = settings.db_password.reveal() if settings.db_password else None
    done = asyncio.run(
        copy_outbox(source, args.to, where=masked_url(args.to), password=password, progress=print)
    )
    print(
        f"copied {done.copied} events and {done.attempts} attempts from {source} to "
        f"{masked_url(args.to)}; {done.already_there} were there already. Point "
        "MMOLOVE_RELAY_DB at the URL and start the relays."
    )
    return EXIT_OK


# -- serve ---------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(os.environ, args.config)
    logs.configure(settings.log_format)
    _redact(settings)
    try:
        # uvloop: its transports cost less per request than asyncio's, which ingest feels.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve_until_signalled(settings, args.config))
    except OSError as exc:
        print(
            f"mmolove-relay: cannot listen on {settings.listen}: {exc.strerror}; pick another "
            "address with MMOLOVE_RELAY_LISTEN.",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return EXIT_OK


async def _serve_until_signalled(settings: Settings, config: Path | None) -> None:
    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    handles: list[RunningRelay] = []
    systemd = Notifier.from_environ(os.environ, pid=os.getpid())

    def stop(name: str) -> None:
        if shutdown.is_set():
            log.warning("relay.forced_exit", signal=name)
            os._exit(1)  # a second signal: the operator wants out now; the outbox is durable
        log.info("relay.signal", signal=name)
        shutdown.set()

    def reload() -> None:
        try:
            settings = load_settings(os.environ, config)
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
    async with systemd.watchdog(alive=lambda: all(r.dispatching for r in handles)):
        await run(
            settings,
            shutdown=shutdown,
            on_ready=ready,
            on_stopping=lambda: systemd.notify("STOPPING=1"),
        )


def _redact(settings: Settings) -> None:
    logs.redact(s.secret.reveal() for s in settings.servers)
    if settings.ingest_token is not None:
        logs.redact([settings.ingest_token.reveal()])


# -- sandbox -------------------------------------------------------------------------------


def _sandbox(args: argparse.Namespace) -> int:
    servers = dict(_server_arg(text) for text in args.server) or {DEMO_SERVER_ID: DEMO_SECRET}
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
            shutdown=shutdown,
            on_ready=ready,
        )

    asyncio.run(serve())
    return EXIT_OK


def _server_arg(text: str) -> tuple[str, str]:
    server_id, sep, secret = text.partition("=")
    if not sep or not server_id or not secret:
        raise ConfigError(f"--server {text!r} is not ID=SECRET.")
    return server_id, secret


def _listen_arg(text: str) -> Listen:
    listen = parse_listen(text)
    if listen.path is not None:
        raise ConfigError("the sandbox listens on host:port only.")
    return listen


# -- demo ----------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
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
            if record.get("status") in ("delivered", "dead"):
                pending.discard(event_id)
                print(
                    f"{event_id:>3}  {record['event']:<10}  {record['status']:<9}  "
                    f"{record.get('outcome') or '':<9}  {record.get('last_http_status') or '':<4}"
                    f"  {record['attempts']:>8}  {record.get('referral_id') or '-'} / "
                    f"{record.get('state') or '-'}"
                )
        await asyncio.sleep(0.05)
    return not pending and len(ids) == len(events) and all(i is not None for i in ids)


if __name__ == "__main__":
    sys.exit(main())

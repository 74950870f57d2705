"""The ``mmolove-relay`` command line: every subcommand's arguments and help, and ``main``,
which runs one and turns its errors into a message and an exit code (``relay.cli.client``).

The only place that reads ``os.environ``; the handlers are given it.

Kept light: ``--help`` and the read commands import neither the daemon, the sandbox nor
aiohttp. The commands of ``relay.cli.run`` need those, so that module is imported only when
one of its commands runs (``_later``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from relay import __version__
from relay.cli import checks, commands, install_options, tables
from relay.cli.client import (
    EXIT_BROKEN_PIPE,
    EXIT_CONFIG,
    EXIT_USAGE,
    CommandFailed,
    Environ,
)
from relay.config.keys import VARIABLES
from relay.demo import DEMO_SECRET, DEMO_SERVER_ID, EVENT_PATH
from relay.errors import ConfigError, OutboxError
from relay.store.contract import STATUSES

Handler = Callable[[argparse.Namespace, Environ], int]
EVENTS = ["registered", "qualified", "reversed"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        with tables.printable_stdout():
            code: int = args.handler(args, os.environ)
        sys.stdout.flush()  # here, so a closed pipe is met below rather than at exit
    except BrokenPipeError:
        # The reader went away (`status | head`): stop quietly, as a pipeline expects.
        # Python would flush stdout again at exit and complain; point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except CommandFailed as exc:  # may quote the daemon's answer, and so a client's input
        print(f"mmolove-relay: {tables.printable(str(exc))}", file=sys.stderr)
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


def _later(module: str, name: str) -> Handler:
    """The handler ``relay.cli.<module>.<name>``, its module imported when the command runs."""

    def handler(args: argparse.Namespace, environ: Environ) -> int:
        run: Handler = getattr(importlib.import_module(f"relay.cli.{module}"), name)
        return run(args, environ)

    return handler


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmolove-relay",
        description="A local, durable, signing relay for MMOLove referral events.",
        epilog="Exit codes: 0 ok, 1 refused, 2 usage, 3 configuration/start-up, 4 unavailable.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _config_option(parser, default=None)
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(name: str, help_: str, handler: Handler, **kwargs: Any) -> argparse.ArgumentParser:
        """A subcommand with its help as description, and --config after it too."""
        child: argparse.ArgumentParser = sub.add_parser(
            name, help=help_, description=kwargs.pop("description", help_), **kwargs
        )
        child.set_defaults(handler=handler)
        # SUPPRESS: given before the subcommand, --config is not reset by the default here.
        _config_option(child, default=argparse.SUPPRESS)
        return child

    _run_commands(command)
    _reader_commands(command, sub)
    _writer_commands(command)
    _check_commands(command)
    install_options.add(command, sub_config=_config_option, usage=_usage, later=_later)
    return parser


def _config_option(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        help="TOML config file (default: $MMOLOVE_RELAY_CONFIG; environment variables override it)",
    )


def _run_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    indent = " " * 6
    fill = textwrap.TextWrapper(
        88, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    ).fill
    variables = "\n".join(
        "".join(f"  {name}\n" for name in names) + fill(f"{what}; default {default}")
        for names, (what, default) in VARIABLES.items()
    )
    command(
        "serve",
        "run the relay daemon",
        _later("run", "serve"),
        description="Run the relay: take events on the ingest API, store them durably and "
        "deliver them to MMOLove, signed. SIGHUP reloads servers and secrets; SIGTERM drains.",
        epilog=f"environment (over the config file, over the defaults):\n{variables}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    sandbox = command(
        "sandbox",
        "run a local MMOLove stand-in that verifies signatures, idempotency and the state machine",
        _later("run", "sandbox"),
        epilog=f"With no --server it knows one server, {DEMO_SERVER_ID}, whose secret is the "
        f"public demo secret {DEMO_SECRET}. Point a relay at it with:\n"
        f"  MMOLOVE_ENDPOINT=http://127.0.0.1:8788{EVENT_PATH} "
        f"MMOLOVE_SERVER_ID={DEMO_SERVER_ID} MMOLOVE_SECRET={DEMO_SECRET} mmolove-relay serve",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sandbox.add_argument(
        "--listen", default="127.0.0.1:8788", help="host:port (default %(default)s)"
    )
    sandbox.add_argument(
        "--server",
        action="append",
        metavar="ID=SECRET",
        default=[],
        help=f"a server and its secret (default {DEMO_SERVER_ID}={DEMO_SECRET})",
    )
    sandbox.add_argument(
        "--kid",
        action="append",
        metavar="ID=KID",
        default=[],
        help="the server's current key id: a signature naming another kid is refused (401)",
    )
    sandbox.add_argument("--latency-ms", type=float, default=0.0)
    sandbox.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of requests answered --error-status"
    )
    sandbox.add_argument("--error-status", type=int, default=500)
    sandbox.add_argument("--clock-offset-s", type=float, default=0.0)

    demo = command(
        "demo",
        "start a sandbox and a relay, send a registered, a qualified and a test event, "
        "and show them land",
        _later("run", "demo"),
    )
    demo.add_argument("--timeout-s", type=float, default=20.0)

    move = command(
        "migrate-outbox",
        "copy a SQLite outbox (every event, its state and delivery log, the ledger and the "
        "rejected inputs) into PostgreSQL; stop the relay first, and run again safely if "
        "interrupted",
        _later("run", "migrate_outbox"),
    )
    move.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host/db")
    move.add_argument(
        "--from", dest="source", type=Path, help="the SQLite file (default: the configured outbox)"
    )


def _reader_commands(command: Callable[..., argparse.ArgumentParser], sub: Any) -> None:
    status = command("status", "what is pending, dead and paused, per server", commands.status)
    _daemon_options(status)
    _db_option(status)

    events: argparse.ArgumentParser = command(
        "events", "list events or show one with its delivery log", lambda a, e: _usage(events)
    )
    events_sub = events.add_subparsers(metavar="list|show")
    listing = events_sub.add_parser(
        "list",
        help="events matching filters, newest first",
        description="events matching filters, newest first",
    )
    listing.set_defaults(handler=commands.events_list)
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--event", choices=EVENTS)
    listing.add_argument("--token")
    listing.add_argument("--server-id")
    listing.add_argument("--server-event-id")
    listing.add_argument("--reason", help="why dead events died, e.g. not_found (see status)")
    listing.add_argument("--since", type=_duration, help="ingested within, e.g. 30m, 2h, 7d")
    listing.add_argument("--limit", type=int, default=50, help="at most (default %(default)s)")
    listing.add_argument("--player", help="the referral whose registered names this player")
    _daemon_options(listing)
    _db_option(listing)
    what = "one event, every attempt and MMOLove's answers"
    show = events_sub.add_parser("show", help=what, description=what)
    show.set_defaults(handler=commands.events_show)
    show.add_argument("id", type=int)
    _daemon_options(show)
    _db_option(show)
    for child in (listing, show):
        _config_option(child, default=argparse.SUPPRESS)

    player = command(
        "player",
        "did this player's referral count, and if not, why: every event, and the fix",
        commands.player,
    )
    player.add_argument("account_id", metavar="ACCOUNT_ID", help="the referee_identity sent")
    player.add_argument("--server-id", help="only this server's referral")
    _daemon_options(player)
    _db_option(player)

    what = "the game databases the relay watches: last poll, cursor, counts, last error"
    watched: argparse.ArgumentParser = command(
        "sources", what, _later("sources", "sources"), description=what
    )
    _daemon_options(watched)
    watched_sub = watched.add_subparsers(metavar="try")
    what = "run a source's query once, read-only, and print the events it would store"
    trying = watched_sub.add_parser("try", help=what, description=what)
    trying.set_defaults(handler=_later("sources", "try_source"))
    trying.add_argument("name", metavar="NAME", help="the source's name in [[sources]]")
    trying.add_argument("--json", action="store_true", help="print JSON for scripts")
    _config_option(trying, default=argparse.SUPPRESS)

    rejected = command("rejected", "inputs ingest refused (4xx), newest first", commands.rejected)
    rejected.add_argument("--since", type=_duration, help="within, e.g. 30m, 2h, 7d")
    rejected.add_argument("--code", help="only this error code, e.g. missing_field")
    rejected.add_argument("--limit", type=int, default=50, help="at most (default %(default)s)")
    _daemon_options(rejected)
    _db_option(rejected)


def _writer_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    send = command("send", "enqueue one event in the running relay", commands.send)
    send.add_argument("event", choices=EVENTS)
    send.add_argument("--token", required=True, help="the mmref token")
    send.add_argument("--server-event-id", required=True, help="your idempotency key")
    send.add_argument("--referee", help="referee_identity (required for registered)")
    send.add_argument("--server-id", help="needed when the relay serves several servers")
    send.add_argument("--ts", type=float, help="event time in Unix seconds (default now)")
    send.add_argument("--test", action="store_true", help="a dry run MMOLove verifies only")
    send.add_argument(
        "--wait-s",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep retrying this long while the relay is unreachable or "
        "answers 503 (default: try once)",
    )
    _daemon_options(send, json_flag=False)

    retry = command(
        "retry",
        "re-queue dead events (and the events held back behind them) to be sent now",
        commands.retry,
    )
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="outbox ids")
    retry.add_argument("--dead", action="store_true", help="every dead event (see --reason)")
    retry.add_argument("--reason", help="with --dead: only those that died for this reason")
    retry.add_argument("--server-id", help="with --dead: only this server's")
    _bulk_options(retry)

    purge = command(
        "purge", "delete dead or delivered events older than a given age", commands.purge
    )
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--dead", action="store_true")
    which.add_argument("--delivered", action="store_true")
    purge.add_argument(
        "--older-than", type=_duration, required=True, help="finished before, e.g. 30d, 12h"
    )
    _bulk_options(purge)


def _check_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    test = command(
        "test",
        "send a signed test event straight to MMOLove: proves the secret, header and clock",
        checks.test,
    )
    test.add_argument("--server-id", help="which configured server (default: each)")
    test.add_argument("--json", action="store_true", help="print JSON for scripts")

    check = command(
        "check-config",
        "validate the configuration and print it, secrets masked, with where each value came from",
        checks.check_config,
    )
    check.add_argument("--json", action="store_true", help="print JSON for scripts")
    check.add_argument(
        "--all",
        action="store_true",
        help="print every setting, not only those set somewhere other than their defaults",
    )
    check.add_argument(
        "--example",
        action="store_true",
        help="print an example config file with every key and its default, and exit",
    )

    sign = command(
        "sign",
        "print the signature header for the body on stdin (debug an integration)",
        checks.sign,
    )
    sign.add_argument("--server-id", help="which configured server's secret")
    sign.add_argument("--ts", type=int, help="signing time t in Unix seconds (default now)")
    sign.add_argument("--json", action="store_true", help="print JSON for scripts")

    alert_test = command(
        "alert-test", "send a test message to every alert target", checks.alert_test
    )
    alert_test.add_argument("--json", action="store_true", help="print JSON for scripts")

    doctor = command(
        "doctor",
        "check everything an operator can get wrong, in order, and name the fix for each; "
        "works with the daemon down; exit 1 when any check fails",
        _later("doctor", "doctor"),
    )
    doctor.add_argument(
        "--send-alert", action="store_true", help="send a test message to every alert target"
    )
    _daemon_options(doctor)


def _daemon_options(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--url", help="relay base URL (default from the listen setting)")


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        type=Path,
        metavar="PATH",
        help="read this outbox file read-only instead of asking the daemon (default: ask the "
        "daemon, and read the configured file when it does not answer)",
    )


def _bulk_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument(
        "--chunk",
        type=int,
        default=500,
        help="events per transaction, so ingest is never held up (default %(default)s)",
    )
    _daemon_options(parser)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(s|m|min|h|d)?")
_UNIT_S = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """``90``, ``45s``, ``30m``, ``2h`` or ``7d`` in seconds, for argparse."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; write e.g. 45s, 30m, 2h, 7d")
    return float(match[1]) * _UNIT_S[match[2]]

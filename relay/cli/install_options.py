"""The arguments of the commands that install the relay: ``setup`` and ``secret set``.

Kept beside the parser rather than in it: the secret is read from a file, stdin or a
hidden prompt, never from argv, and every option that carries it says so.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.config.values import ALERT_KINDS


def add(
    command: Callable[..., argparse.ArgumentParser],
    *,
    sub_config: Callable[..., None],
    usage: Callable[[argparse.ArgumentParser], int],
    later: Callable[[str, str], Any],
) -> None:
    """Add ``setup`` and ``secret set`` through the parser's own ``command`` helper; their
    handlers are imported when they run."""
    setup = command(
        "setup",
        "install, start and verify the relay as a systemd service in one command (as root)",
        later("setup", "setup"),
        description="Prove the signing secret with a signed test event, then install it "
        "(root-only), the unit and a drop-in with the server id; enable and start the service, "
        "wait for it to be ready and send a test event through it. Run again, it changes only "
        "what differs. Without systemd as PID 1 (or with --no-service) it writes a "
        "configuration file and prints the serve command and a container line instead.",
    )
    setup.add_argument("--server-id", help="the server id in MMOLove's dashboard (else asked)")
    secret_file_option(setup, "the signing secret")
    setup.add_argument("--kid", help="the secret's key id, if the dashboard shows one")
    setup.add_argument("--endpoint", help="MMOLove's event URL (default: MMOLove's own)")
    setup.add_argument("--listen", help="ingest host:port, on loopback (default 127.0.0.1:8787)")
    setup.add_argument("--alert-url", metavar="URL", help="where alerts go (kept root-only)")
    setup.add_argument(
        "--alert-kind", choices=ALERT_KINDS, default="webhook", help="default %(default)s"
    )
    setup.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    setup.add_argument(
        "--no-service",
        action="store_true",
        help="write a configuration file (into --dir) instead of installing a service",
    )
    setup.add_argument(
        "--dir", type=Path, help="with --no-service: where to write (default ./mmolove-relay)"
    )
    wait_option(setup, "for readiness and the test event")

    secret: argparse.ArgumentParser = command(
        "secret", "replace the signing secret, proven first", lambda a, e: usage(secret)
    )
    secret_sub = secret.add_subparsers(metavar="set")
    what = (
        "prove a new signing secret with a test event, write it (keeping the old one as "
        ".previous), apply it (a restart under systemd credentials, else a reload) and wait "
        "until a server it paused sends again"
    )
    secret_set = secret_sub.add_parser("set", help=what, description=what)
    secret_set.set_defaults(handler=later("secret", "secret_set"))
    sub_config(secret_set, default=argparse.SUPPRESS)
    secret_set.add_argument("--server-id", help="which configured server (default: the one)")
    secret_file_option(secret_set, "the new secret", default="-")
    wait_option(secret_set, "for the paused server to send again")


def secret_file_option(
    parser: argparse.ArgumentParser, what: str, default: str | None = None
) -> None:
    asked = "stdin" if default == "-" else "a hidden prompt"
    parser.add_argument(
        "--secret-file",
        metavar="PATH",
        default=default,
        help=f"read {what} from this file, or - for stdin (default: {asked}); never argv",
    )


def wait_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--wait-s", type=float, default=60.0, metavar="SECONDS", help=f"how long to wait {what}"
    )

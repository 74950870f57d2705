"""``mmolove-relay setup``: from an installed package to a running, verified service.

Where systemd is PID 1 (as root): prove the secret with a signed test event to MMOLove, and
stop with the fix and nothing changed if MMOLove refuses it; then put the secret, the unit
and its drop-in in place (``relay.install`` says where, and why there), enable and start the
service, wait for it to be ready, post a test event through it and show it land. Run again,
it compares each file and the service's state first and changes only what differs; what
is not given again (server id, endpoint, listen, secret) is taken from what is installed.

Elsewhere (a container, a laptop, or ``--no-service``) it writes a configuration file and a
0600 secret file into a directory and prints the ``serve`` command and a container line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from relay.cli import tables
from relay.cli.client import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, CommandFailed, Environ, http_json
from relay.cli.secret import prove_or_stop, read_secret
from relay.config.secrets import read_secret_file
from relay.config.settings import Settings
from relay.config.values import (
    DEFAULT_ENDPOINT,
    Listen,
    Secret,
    ServerConfig,
    base_url,
    parse_endpoint,
    parse_listen,
)
from relay.errors import ConfigError
from relay.install import (
    ALERT_URL_FILE,
    DROPIN_FILE,
    SECRET_FILE,
    SERVICE,
    UNIT_FILE,
    Change,
    SetupError,
    Wanted,
    dropin_text,
    entry_point,
    systemctl,
    systemd_is_init,
    unit_state,
    unit_text,
)

TEST_TOKEN = "relay-setup-test"  # noqa: S105 - the test event's token, not a secret
SERVICE_KEYS = {
    "server_id": "MMOLOVE_SERVER_ID",
    "kid": "MMOLOVE_KID",
    "endpoint": "MMOLOVE_ENDPOINT",
    "listen": "MMOLOVE_RELAY_LISTEN",
    "alert_kind": "MMOLOVE_RELAY_ALERT_KIND",
}


def setup(args: argparse.Namespace, environ: Environ) -> int:
    try:
        if args.no_service or not systemd_is_init():
            return _config_only(args)
        return _service(args)
    except SetupError as exc:
        raise CommandFailed(EXIT_REFUSED, str(exc)) from exc
    except ConfigError as exc:  # a bad flag value: the caller's to fix
        raise CommandFailed(EXIT_USAGE, str(exc)) from exc


# -- as a systemd service ------------------------------------------------------------------


def _service(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SetupError(
            "setup installs a system service and needs root: run it with sudo, or pass "
            "--no-service to write a configuration file instead."
        )
    installed = _installed_choices()
    chosen = {
        key: getattr(args, key) or installed.get(key)
        for key in ("server_id", "kid", "endpoint", "listen")
    }
    server_id = chosen["server_id"] or _ask("server id (MMOLove dashboard)")
    alert_kind = args.alert_kind if args.alert_url else installed.get("alert_kind")
    listen = _listen(chosen["listen"])
    secret = _secret(args, SECRET_FILE)
    server = ServerConfig(server_id, secret, kid=chosen["kid"])
    endpoint = parse_endpoint(chosen["endpoint"]) if chosen["endpoint"] else DEFAULT_ENDPOINT
    prove_or_stop(Settings(endpoint=endpoint, servers=(server,)), server)

    wanted = [
        Wanted(SECRET_FILE, secret.reveal() + "\n", 0o600, secret=True),
        Wanted(UNIT_FILE, unit_text(entry_point()), 0o644),
        Wanted(
            DROPIN_FILE,
            dropin_text(
                server_id,
                kid=chosen["kid"],
                endpoint=chosen["endpoint"],
                listen=chosen["listen"],
                alert_kind=alert_kind,
            ),
            0o644,
        ),
    ]
    if args.alert_url:
        wanted.append(Wanted(ALERT_URL_FILE, args.alert_url + "\n", 0o600, secret=True))
    changes = {w.path: w.state() for w in wanted}
    enabled, active = unit_state()
    if any(c != "unchanged" for c in changes.values()) or enabled != "enabled":
        tables.confirm(args, f"install and start {SERVICE} as server {server.server_id}")
    for w in wanted:
        _said(w.place(), str(w.path))
    if changes[UNIT_FILE] != "unchanged" or changes[DROPIN_FILE] != "unchanged":
        systemctl("daemon-reload")
    if enabled != "enabled":
        systemctl("enable", SERVICE)
        print(f"  enabled    {SERVICE}")
    else:
        print(f"  unchanged  {SERVICE} is enabled")
    if active != "active":
        systemctl("start", SERVICE)
        print(f"  started    {SERVICE}")
    elif any(c != "unchanged" for c in changes.values()):
        # The secret is a credential, copied in only when the service starts.
        systemctl("restart", SERVICE)
        print(f"  restarted  {SERVICE} (its files changed)")
    else:
        print(f"  unchanged  {SERVICE} is running")
    relay = base_url(listen.host, listen.port)
    _ready(relay, args.wait_s)
    _test_event(relay, args.wait_s)
    _next_steps(relay)
    return EXIT_OK


def _installed_choices() -> dict[str, str]:
    """What the installed drop-in holds, by option name; empty when none is installed."""
    try:
        text = DROPIN_FILE.read_text()
    except FileNotFoundError:
        return {}
    given = dict(re.findall(r"^Environment=(\w+)=(.*)$", text, re.MULTILINE))
    return {key: given[name] for key, name in SERVICE_KEYS.items() if name in given}


def _secret(args: argparse.Namespace, installed: Path) -> Secret:
    """The secret given, else the one in place (a second run keeps it), else asked for."""
    if args.secret_file is None and installed.exists():
        return read_secret_file(installed, what="installed secret")
    return read_secret(args.secret_file)


def _ask(what: str) -> str:
    if not sys.stdin.isatty():
        raise CommandFailed(EXIT_USAGE, f"no terminal to ask for the {what}: pass --server-id.")
    try:
        answer = input(f"{what}: ").strip()
    except EOFError:
        answer = ""
    if not answer:
        raise CommandFailed(EXIT_USAGE, f"the {what} is required.")
    return answer


def _listen(text: str | None) -> Listen:
    listen = parse_listen(text or "127.0.0.1:8787", "--listen")
    if listen.path is not None or not listen.is_loopback:
        raise CommandFailed(
            EXIT_USAGE,
            f"--listen {text}: setup listens on loopback only; off loopback the relay needs an "
            "ingest token, which systemd/INSTALL.md shows how to add.",
        )
    return listen


def _said(change: Change, what: str) -> None:
    print(f"  {change:<10} {what}")


def _ready(relay: str, wait_s: float) -> None:
    """systemctl start returns after READY=1; a paused server or a full disk is not ready."""
    deadline = time.monotonic() + wait_s
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            code, answer = http_json("GET", f"{relay}/readyz")
        except OSError:
            code = 0
        if code == 200:
            print(f"ready: {relay}/readyz")
            return
        time.sleep(0.2)
    problems = "; ".join(answer.get("problems", [])) or "no answer"
    raise SetupError(
        f"the service is not ready after {wait_s:.0f} s ({problems}): see "
        f"systemctl status {SERVICE} and journalctl -u {SERVICE}."
    )


def _test_event(relay: str, wait_s: float) -> None:
    """A test event posted to the running service, followed until MMOLove answered it."""
    body = {
        "event": "registered",
        "token": TEST_TOKEN,
        "referee_identity": TEST_TOKEN,
        "server_event_id": f"relay-setup-{time.time_ns()}",
        "test": True,
    }
    code, answer = http_json("POST", f"{relay}/v1/events", body)
    if code >= 300:
        raise SetupError(f"the service refused the test event: {code} {answer.get('error')}")
    event_id = answer["id"]
    print(f"test event: POST {relay}/v1/events -> outbox #{event_id}")
    deadline = time.monotonic() + wait_s
    record: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, record = http_json("GET", f"{relay}/v1/events/{event_id}")
        if record.get("status") in ("delivered", "dead"):
            break
        time.sleep(0.2)
    if record.get("status") != "delivered" or record.get("outcome") != "test":
        raise SetupError(
            f"the test event #{event_id} did not land ({record.get('status')}, "
            f"{record.get('outcome')}): mmolove-relay events show {event_id} has MMOLove's "
            "answer."
        )
    print(
        f"landed: #{event_id} delivered, MMOLove answered {record.get('last_http_status')} "
        "and verified the signature."
    )


def _next_steps(relay: str) -> None:
    print(
        f"\nnext:\n"
        f"  console:   {relay}/ui/ (on this machine)\n"
        f"  your game server posts each event, e.g.\n"
        f"    curl -sS -X POST {relay}/v1/events -H 'Content-Type: application/json' \\\n"
        '      -d \'{"event": "registered", "token": "<mmref token>", '
        '"referee_identity": "<account id>", "server_event_id": "<unique id>"}\'\n'
        "  check it all: mmolove-relay doctor; logs: journalctl -u mmolove-relay"
    )


# -- a configuration file, where there is no systemd to run it -----------------------------


def _config_only(args: argparse.Namespace) -> int:
    directory = (args.dir or Path("mmolove-relay")).absolute()
    if not args.server_id:
        args.server_id = _ask("server id (MMOLove dashboard)")
    secret = _secret(args, directory / "secret")
    listen = _listen(args.listen)
    server = ServerConfig(args.server_id, secret, kid=args.kid)
    endpoint = parse_endpoint(args.endpoint) if args.endpoint else DEFAULT_ENDPOINT
    prove_or_stop(Settings(endpoint=endpoint, servers=(server,)), server)
    config = directory / "relay.toml"
    wanted = [
        Wanted(directory / "secret", secret.reveal() + "\n", 0o600, secret=True),
        Wanted(config, _toml(directory, args, listen), 0o600),
    ]
    if args.alert_url:
        wanted.append(Wanted(directory / "alert-url", args.alert_url + "\n", 0o600, secret=True))
    why = "no systemd runs this machine" if not systemd_is_init() else "--no-service"
    print(f"({why}: writing a configuration file instead of installing a service)")
    for w in wanted:
        _said(w.place(), str(w.path))
    (directory / "data").mkdir(mode=0o700, exist_ok=True)
    print(f"\nrun it:\n  {SERVICE} --config {config} serve")
    endpoint_env = f" -e MMOLOVE_ENDPOINT={args.endpoint}" if args.endpoint else ""
    print(
        "or in a container (the image built from the Dockerfile, as this user):\n"
        f"  docker run -d --name {SERVICE} --network host --user {os.getuid()}:{os.getgid()} "
        f"-v {directory}/secret:/run/secrets/mmolove-secret:ro -v {directory}/data:/data "
        f"-e MMOLOVE_SERVER_ID={args.server_id} -e MMOLOVE_RELAY_LISTEN={listen}{endpoint_env} "
        f"{SERVICE}"
    )
    return EXIT_OK


def _toml(directory: Path, args: argparse.Namespace, listen: Listen) -> str:
    lines = ["# Written by `mmolove-relay setup --no-service`; run it again to change it."]
    if args.endpoint:
        lines.append(f"endpoint = {_quoted(args.endpoint)}")
    lines += [
        "",
        "[[servers]]",
        f"id = {_quoted(args.server_id)}",
        f"secret_file = {_quoted(str(directory / 'secret'))}",
    ]
    if args.kid:
        lines.append(f"kid = {_quoted(args.kid)}")
    lines += [
        "",
        "[ingest]",
        f"listen = {_quoted(str(listen))}",
        "",
        "[outbox]",
        f"path = {_quoted(str(directory / 'data' / 'outbox.db'))}",
    ]
    if args.alert_url:
        lines += [
            "",
            "[[alerts]]",
            f"kind = {_quoted(args.alert_kind)}",
            f"url_file = {_quoted(str(directory / 'alert-url'))}",
        ]
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    """A TOML basic string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

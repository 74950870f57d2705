"""``mmolove-relay secret set``: MMOLove's "Rotate secret" as one command, and what ``setup``
shares with it: reading a secret without it touching argv, and proving it with a signed test
event before anything is written.

The new secret is proven first; only then is it written (atomically, 0600, the old one kept
as ``<file>.previous`` for a rollback) and applied: a restart where the service gets it as a
systemd credential (copied only when the service starts), else a reload (SIGHUP re-reads a
secret file). Last, the daemon's ``/v1/status`` must show the server unpaused and its held
events delivered, within ``--wait-s``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from relay.cli.client import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, CommandFailed, Environ, http_json
from relay.config.loading import load_settings
from relay.config.secrets import clean_secret
from relay.config.settings import Settings
from relay.config.values import Secret, ServerConfig, base_url, mask_url
from relay.credentials import read_small_text
from relay.install import (
    SECRET_FILE,
    SERVICE,
    SetupError,
    systemctl,
    systemd_is_init,
    write_atomically,
)
from relay.install import service_environment as unit_environment


def read_secret(source: str | None, *, what: str = "signing secret") -> Secret:
    """The secret from a file, stdin (``-``) or a hidden prompt; never from argv."""
    if source == "-":
        raw = sys.stdin.read(8192)
    elif source is not None:
        raw = read_small_text(Path(source), what=f"{what} file")
    elif sys.stdin.isatty():
        try:
            raw = getpass.getpass(f"{what} (from MMOLove's dashboard, not shown): ")
        except EOFError:
            raw = ""  # Ctrl-D: refused below as empty
    else:
        raise CommandFailed(
            EXIT_USAGE,
            f"no terminal to ask for the {what}: pass --secret-file PATH, or --secret-file - "
            "and the secret on stdin.",
        )
    value = clean_secret(raw, what=what)
    if not value:
        raise CommandFailed(EXIT_USAGE, f"the {what} is empty; give the secret itself.")
    return Secret(value)


def prove_or_stop(settings: Settings, server: ServerConfig) -> None:
    """A signed test event straight to MMOLove; a failure ends the command with its fix."""
    import asyncio

    from relay.proof import prove

    [proof] = asyncio.run(prove(settings, [server]))
    where = mask_url(settings.endpoint)
    if not proof.ok:
        raise CommandFailed(
            EXIT_REFUSED,
            f"the secret could not be proven: server {server.server_id} -> {where}: "
            f"{proof.message}\n  fix: {proof.fix}\nnothing was changed.",
        )
    print(f"proven: server {server.server_id} -> {where}: {proof.message}")


@dataclass(frozen=True, slots=True)
class Installed:
    """Where the running relay takes its settings and its secret from."""

    settings: Settings
    server: ServerConfig
    secret_file: Path
    by_credential: bool  # systemd copies it in at start: applying it needs a restart


def secret_set(args: argparse.Namespace, environ: Environ) -> int:
    try:
        return _secret_set(args, environ)
    except SetupError as exc:
        raise CommandFailed(EXIT_REFUSED, str(exc)) from exc


def _secret_set(args: argparse.Namespace, environ: Environ) -> int:
    installed = _installed(args, environ)
    server, path = installed.server, installed.secret_file
    new = read_secret(args.secret_file, what=f"new secret of server {server.server_id}")
    before = _status(installed.settings, server.server_id)
    prove_or_stop(installed.settings, replace(server, secret=new))
    write_atomically(path, new.reveal() + "\n", 0o600, keep_previous=True)
    print(f"written: {path} (0600); the previous secret is kept in {path}.previous")
    if installed.by_credential:
        print(f"applying: systemctl restart {SERVICE} (a credential is copied in at start)")
        systemctl("restart", SERVICE)
    elif systemd_is_init() and _active():
        print(f"applying: systemctl reload {SERVICE} (the relay re-reads its secret file)")
        systemctl("reload", SERVICE)
    else:
        print(
            "apply it: send the relay SIGHUP (kill -HUP <its pid>), or restart its container; "
            "it re-reads the secret file."
        )
        return EXIT_OK
    return _confirm_resumed(installed.settings, server.server_id, before, args.wait_s)


def _installed(args: argparse.Namespace, environ: Environ) -> Installed:
    """The configuration the running relay has: the installed unit's, under systemd."""
    environment = dict(environ)
    by_credential = False
    if args.config is None and systemd_is_init() and _loaded():
        environment = unit_environment()
        if "MMOLOVE_SECRET_FILE" not in environment and "MMOLOVE_SECRET" not in environment:
            environment["MMOLOVE_SECRET_FILE"] = str(SECRET_FILE)
            by_credential = True
    settings = load_settings(environment, args.config)
    servers = [s for s in settings.servers if args.server_id in (None, s.server_id)]
    if len(servers) != 1:
        names = ", ".join(s.server_id for s in settings.servers)
        raise CommandFailed(EXIT_USAGE, f"pick one server with --server-id (configured: {names}).")
    [server] = servers
    if server.secret_file is None:
        raise CommandFailed(
            EXIT_USAGE,
            f"the secret of server {server.server_id} is given inline ({server.secret_from}), "
            "not in a file: move it to a file (secret_file or MMOLOVE_SECRET_FILE) so it can "
            "be replaced, or change it where it is set.",
        )
    return Installed(settings, server, server.secret_file, by_credential)


def _loaded() -> bool:
    shown = systemctl("show", "--value", "-p", "LoadState", SERVICE, check=False)
    return shown.stdout.strip() == "loaded"


def _active() -> bool:
    return systemctl("is-active", SERVICE, check=False).stdout.strip() == "active"


def _status(settings: Settings, server_id: str) -> dict[str, Any] | None:
    """The server's entry in the daemon's /v1/status; None when the daemon does not answer."""
    url = base_url(settings.listen.host, settings.listen.port) + "/v1/status"
    token = settings.ingest_token.reveal() if settings.ingest_token else None
    try:
        code, answer = http_json("GET", url, None, token)
    except OSError:
        return None
    if code != 200:
        return None
    return next((s for s in answer.get("servers", []) if s["server_id"] == server_id), None)


def _confirm_resumed(
    settings: Settings, server_id: str, before: dict[str, Any] | None, wait_s: float
) -> int:
    """Wait until the daemon sends for the server again and has delivered what it held."""
    held = before["counts"]["pending"] + before["counts"]["in_flight"] if before else 0
    delivered_before = before["counts"]["delivered"] if before else 0
    if before and before["paused"]:
        print(f"server {server_id} was paused ({before['paused_reason']}), {held} events held")
    deadline = time.monotonic() + wait_s
    now: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        now = _status(settings, server_id)
        if now and not now["paused"]:
            counts = now["counts"]
            moved = counts["delivered"] - delivered_before
            # Done when what was held has gone out, or nothing is left (new events may come).
            if moved >= held or counts["pending"] + counts["in_flight"] == 0:
                print(f"resumed: server {server_id} is sending; {moved} held events delivered.")
                return EXIT_OK
        time.sleep(0.5)
    state = "not answering" if now is None else ("still paused" if now["paused"] else "sending")
    pending = now["counts"]["pending"] if now else "?"
    raise CommandFailed(
        EXIT_REFUSED,
        f"the secret is in place, but after {wait_s:.0f} s the relay is {state} with {pending} "
        f"events pending for {server_id}: see `mmolove-relay status` and "
        f"journalctl -u {SERVICE}; to roll back, secret set from the .previous file.",
    )

"""The commands that need only the configuration: ``check-config``, ``sign``, ``test``
(a signed test event straight to MMOLove, proving the secret, header and clock) and
``alert-test`` (a test message to every alert target).

The last two import the sender or the alert targets, and with them aiohttp, when they run:
``check-config`` and ``sign`` stay as quick to start as the rest of the command line.
"""

from __future__ import annotations

import argparse
import sys
import time

from relay.cli.client import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, CommandFailed, Environ
from relay.cli.tables import print_json
from relay.config.example import example
from relay.config.loading import DEFAULT, load, load_settings
from relay.config.report import describe
from relay.config.settings import Settings
from relay.config.values import ServerConfig, mask_url
from relay.signing import HEADER, signature_header


def check_config(args: argparse.Namespace, environ: Environ) -> int:
    if args.example:
        print(example(), end="")
        return EXIT_OK
    loaded = load(environ, args.config)
    settings, source = loaded.settings, loaded.sources
    described = describe(settings)
    if args.json:
        print_json({**described, "sources": source})
        return EXIT_OK
    # Shown even at their defaults: where events go, where they come in, where they are kept.
    always = {"endpoint", "listen", "db_path" if settings.db_url is None else "db_url"}
    hidden = 0
    print("the configuration is valid; in force (environment over file over defaults):")
    for name, where in source.items():
        value = described[name]
        if where == DEFAULT and name not in always and not args.all:
            hidden += 1
        elif name == "servers":
            print(f"  servers = {', '.join(s['id'] for s in value)}   [{where}]")
            for server in value:
                kid = f", kid {server['kid']}" if server["kid"] else ""
                path = f" ({server['secret_file']})" if server["secret_file"] else ""
                print(
                    f"  server {server['id']}: secret *** from {server['secret_from']}{path}{kid}"
                )
        elif name == "game_sources":
            print(f"  game_sources = {', '.join(s['name'] for s in value)}   [{where}]")
            for s in value:
                what = s["produces"] + (f" ({s['milestone']})" if s["milestone"] else "")
                print(f"  source {s['name']}: {what} from {s['url']} every {s['interval_s']:g} s")
        elif name == "alerts":
            labels = ", ".join(f"{a['kind']} {a['name'] or a['url']}" for a in value)
            print(f"  alerts = {labels or 'none'}   [{where}]")
        else:
            print(f"  {name} = {_shown(value)}   [{where}]")
    if hidden:
        print(f"  ({hidden} more at their defaults; --all prints every setting)")
    for note in settings.notes:
        print(f"note: {note.message}")
    if not settings.listen.is_loopback:
        print("ingest is not on loopback: clients must send the bearer token")
    return EXIT_OK


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()  # as the file writes it
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def sign(args: argparse.Namespace, environ: Environ) -> int:
    settings = load_settings(environ, args.config)
    server = _server(settings, args.server_id)
    body = sys.stdin.buffer.read()
    t = args.ts if args.ts is not None else int(time.time())
    header = signature_header(body, server.secret.reveal(), t, server.kid)
    if args.json:
        print_json({"header": HEADER, "value": header, "t": t, "body_bytes": len(body)})
    else:
        print(f"{HEADER}: {header}")
    if body.endswith(b"\n"):
        print(
            "note: the body ends with a newline, and the signature covers it; send exactly "
            "these bytes (echo -n, or printf) or sign what you send.",
            file=sys.stderr,
        )
    return EXIT_OK


def test(args: argparse.Namespace, environ: Environ) -> int:
    import asyncio

    from relay.proof import prove

    settings = load_settings(environ, args.config)
    servers = [_server(settings, args.server_id)] if args.server_id else settings.servers
    proofs = asyncio.run(prove(settings, servers))
    if args.json:
        results = [
            {**p.as_json(), "message": _with_skew(p.message, p.clock_skew_s)} for p in proofs
        ]
        print_json({"endpoint": mask_url(settings.endpoint), "servers": results})
    else:
        for p in proofs:
            line = _with_skew(p.message, p.clock_skew_s)
            print(f"server {p.server_id} -> {mask_url(settings.endpoint)}: {line}")
            if p.fix:
                print(f"  fix: {p.fix}")
    return EXIT_OK if all(p.ok for p in proofs) else EXIT_REFUSED


def _with_skew(message: str, skew: float | None) -> str:
    return message if skew is None else f"{message} (MMOLove's clock is {skew:+.1f} s from ours)"


def _server(settings: Settings, server_id: str | None) -> ServerConfig:
    if server_id is None:
        if len(settings.servers) > 1:
            names = ", ".join(s.server_id for s in settings.servers)
            raise CommandFailed(
                EXIT_USAGE, f"several servers are configured ({names}); pick one with --server-id."
            )
        return settings.servers[0]
    for server in settings.servers:
        if server.server_id == server_id:
            return server
    raise CommandFailed(EXIT_USAGE, f"no server {server_id!r} in the configuration.")


def alert_test(args: argparse.Namespace, environ: Environ) -> int:
    import asyncio

    from relay.alerts.targets import send_test

    settings = load_settings(environ, args.config, require_servers=False)
    if not settings.alerts:
        print(
            "no alert target is configured; add [[alerts]] to the config file or set "
            "MMOLOVE_RELAY_ALERT_URL (and MMOLOVE_RELAY_ALERT_KIND)."
        )
        return EXIT_REFUSED
    results = asyncio.run(send_test(settings.alerts))
    if args.json:
        print_json({"targets": [r.as_json() for r in results]})
    else:
        for r in results:
            print(f"{r.target}: {'ok' if r.ok else 'FAILED'}: {r.detail}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_REFUSED

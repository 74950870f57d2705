"""The operator commands that answer "did it count?": ``player``, ``rejected``, ``alert-test``.

``player`` and ``rejected`` read like ``status``: from the daemon, or from the outbox file
(``--db``, or when the daemon does not answer); ``alert-test`` needs only the configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from relay.alerts.targets import send_test
from relay.config import load_settings
from relay.ops import (
    EXIT_OK,
    EXIT_REFUSED,
    Environ,
    _Daemon,
    _daemon_options,
    _duration,
    _print_json,
    _query,
    _table,
    _when,
    db_option,
)


def add_commands(sub: Any, environ: Environ) -> None:
    def command(name: str, help_: str, handler: Callable[..., int]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
        parser.set_defaults(handler=lambda args: handler(args, environ))
        return parser

    player = command(
        "player",
        "did this player's referral count, and if not, why: every event, and the fix",
        _player,
    )
    player.add_argument("account_id", metavar="ACCOUNT_ID", help="the referee_identity sent")
    player.add_argument("--server-id", help="only this server's referral")
    _daemon_options(player)
    db_option(player)

    rejected = command("rejected", "inputs ingest refused (4xx), newest first", _rejected)
    rejected.add_argument("--since", type=_duration, help="within, e.g. 30m, 2h, 7d")
    rejected.add_argument("--code", help="only this error code, e.g. missing_field")
    rejected.add_argument("--limit", type=int, default=50, help="at most (default %(default)s)")
    _daemon_options(rejected)
    db_option(rejected)

    test = command("alert-test", "send a test message to every alert target", _alert_test)
    test.add_argument("--json", action="store_true", help="print JSON for scripts")


def _player(args: argparse.Namespace, environ: Environ) -> int:
    path = "/v1/players/" + urllib.parse.quote(args.account_id, safe="")
    if args.server_id:
        path += "?" + _query({"server_id": args.server_id})
    story = _Daemon(args, environ).call("GET", path)
    if args.json:
        _print_json(story)
        return EXIT_OK
    where = f" on server {story['server_id']}" if story["server_id"] else ""
    print(f"player {story['referee_identity']}{where}, referral token {story['token'] or '-'}")
    rows = []
    for e in story["events"]:
        if e["status"] == "dead":
            why = e["error"] or "-"
        elif e["note"]:
            why = e["note"]
        else:
            why = "from the ledger (body pruned)" if e["source"] == "ledger" else "-"
        rows.append(
            [
                e["id"],
                e["event"] + (" (test)" if e["test"] else ""),
                e["server_event_id"],
                e["status"],
                e["outcome"] or "-",
                e["attempts"],
                f"{e['referral_id'] or '-'} / {e['state'] or '-'}",
                why,
            ]
        )
    if rows:
        print()
        headers = ["ID", "EVENT", "SERVER EVENT ID", "STATUS", "OUTCOME", "TRIES"]
        _table([*headers, "REFERRAL / STATE", "NEXT ATTEMPT OR WHY"], rows)
    if story["rejected"]:
        print("\nrejected inputs naming this player or token")
        _rejected_table(story["rejected"])
    if story["other_tokens"]:
        print(f"\nother referrals naming this player: {', '.join(story['other_tokens'])}")
    verdict = story["verdict"]
    print(f"\n{verdict['sentence']}")
    if verdict["fix"]:
        print(f"fix: {verdict['fix']}")
    return EXIT_OK


def _rejected(args: argparse.Namespace, environ: Environ) -> int:
    query = {
        "since": time.time() - args.since if args.since is not None else None,
        "code": args.code,
        "limit": args.limit,
    }
    data = _Daemon(args, environ).call("GET", "/v1/rejected?" + _query(query))
    if args.json:
        _print_json(data)
        return EXIT_OK
    _rejected_table(data["rejected"])
    print(f"{len(data['rejected'])} shown, newest first")
    return EXIT_OK


def _rejected_table(rows: list[dict[str, Any]]) -> None:
    _table(
        ["AT", "HTTP", "CODE", "FIELD", "SERVER EVENT ID", "TOKEN", "PEER", "MESSAGE"],
        [
            [
                _when(r["at"]),
                r["http_status"],
                r["code"],
                r["field"] or "-",
                r["server_event_id"] or "-",
                r["token"] or "-",
                r["peer"] or "-",
                r["message"],
            ]
            for r in rows
        ],
    )


def _alert_test(args: argparse.Namespace, environ: Environ) -> int:
    settings = load_settings(environ, args.config, require_servers=False)
    if not settings.alerts:
        print(
            "no alert target is configured; add [[alerts]] to the config file or set "
            "MMOLOVE_RELAY_ALERT_URL (and MMOLOVE_RELAY_ALERT_KIND)."
        )
        return EXIT_REFUSED
    results = asyncio.run(send_test(settings.alerts))
    if args.json:
        _print_json({"targets": [r.as_json() for r in results]})
    else:
        for r in results:
            print(f"{r.target}: {'ok' if r.ok else 'FAILED'}: {r.detail}")
    return EXIT_OK if all(r.ok for r in results) else EXIT_REFUSED

"""``mmolove-relay sources``: each game database the relay watches, as the daemon sees it,
and ``sources try NAME``: one read-only poll, printing the events it would store.

Kept light for ``--help``: the drivers and the store are imported when ``try`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from relay.cli import tables
from relay.cli.client import EXIT_CONFIG, EXIT_OK, CommandFailed, DaemonClient, Environ
from relay.config.loading import load_settings
from relay.config.settings import Settings

if TYPE_CHECKING:
    from relay.store.contract import Outbox


def sources(args: argparse.Namespace, environ: Environ) -> int:
    data = DaemonClient(args, environ).call("GET", "/v1/status")
    listed = data.get("sources") or []
    if args.json:
        tables.print_json(listed)
        return EXIT_OK
    if not listed:
        print("no sources: add [[sources]] to the configuration (see docs/sources.md)")
        return EXIT_OK
    table(listed)
    return EXIT_OK


def table(listed: Sequence[Mapping[str, Any]]) -> None:
    """The sources of a status answer, one line each; the failing ones' errors below."""
    tables.table(
        ["SOURCE", "PRODUCES", "STATE", "LAST POLL", "CURSOR", "ROWS", "STORED", "WATCHED"],
        [
            [
                s["name"],
                s["produces"] + (f" ({s['milestone']})" if s.get("milestone") else ""),
                s["state"].upper() if s["state"] == "failing" else s["state"],
                _ago(s["last_poll"]),
                s["cursor"] if s["cursor"] is not None else "-",
                s["rows_read"],
                s["events_stored"],
                s["players_watched"] if s["players_watched"] is not None else "-",
            ]
            for s in listed
        ],
    )
    for s in listed:
        if s.get("last_error"):
            since = "failing" if s["state"] == "failing" else "last error"
            print(f"\n{s['name']} ({since}): {s['last_error']}")


def _ago(timestamp: float | None) -> str:
    return "-" if timestamp is None else f"{tables.age(time.time() - timestamp)} ago"


def try_source(args: argparse.Namespace, environ: Environ) -> int:
    settings = load_settings(environ, args.config, require_servers=False)
    config = next((s for s in settings.game_sources if s.name == args.name), None)
    if config is None:
        names = ", ".join(s.name for s in settings.game_sources) or "none configured"
        raise CommandFailed(
            EXIT_CONFIG, f"no source named {args.name!r} in [[sources]] (sources: {names})."
        )
    return asyncio.run(_try(settings, config.name, as_json=args.json))


class _NoOutbox:
    """Before serve first made the outbox: no cursor stored yet, nobody registered."""

    async def source_cursor(self, source: str) -> str | None:
        return None

    async def watched_players(self, server_id: str, since: float) -> list[tuple[str, str]]:
        return []

    async def close(self) -> None:
        return None


async def _try(settings: Settings, name: str, *, as_json: bool) -> int:
    from relay.errors import SourceError
    from relay.sources.watch import try_once
    from relay.store.backends import open_reader

    config = next(s for s in settings.game_sources if s.name == name)
    outbox = await open_reader(settings) or cast("Outbox", _NoOutbox())
    try:
        watcher, found = await try_once(config, outbox, [s.server_id for s in settings.servers])
    except SourceError as exc:
        raise CommandFailed(EXIT_CONFIG, str(exc)) from exc
    finally:
        await outbox.close()
    events = [json.loads(ev.body) for ev in found.events]
    rejected = [r.as_json() for r in found.rejected]
    if as_json:
        tables.print_json(
            {
                "source": name,
                "rows": found.rows,
                "cursor": found.cursor,
                "events": events,
                "rejected": rejected,
            }
        )
        return EXIT_OK
    state = watcher.state
    read = f"read {found.rows} row(s)"
    if config.produces == "registered":
        read += f" after cursor {state.cursor}; the next poll starts after {found.cursor}"
    else:
        read += f" about {state.players_watched} watched player(s)"
    print(f"source {name} ({config.masked_url}): {read}. Nothing was stored.")
    for event in events:
        print(json.dumps(event, ensure_ascii=False))
    if rejected:
        print(f"\n{len(rejected)} row(s) would be rejected:")
        for r in rejected:
            print(f"  {r['code']}: {r['message']}")
    return EXIT_OK

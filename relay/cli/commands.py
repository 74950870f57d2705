"""The operator commands that talk to the running relay: readers (status, events, player,
rejected) and writers (send, retry, purge). A retry takes effect at once: it wakes the
dispatcher. The readers also answer from the outbox file (``--db``, or when the daemon does
not answer).

Every command prints a table for people and JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from relay.cli import client, sources, tables
from relay.cli.client import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandFailed,
    DaemonClient,
    Environ,
)
from relay.snapshot import CIRCUIT_OPEN, HELD, PAUSED, ServerSnapshot

# -- readers -------------------------------------------------------------------------------


def status(args: argparse.Namespace, environ: Environ) -> int:
    data = DaemonClient(args, environ).call("GET", "/v1/status")
    if args.json:
        tables.print_json(data)
        return EXIT_OK
    outbox = data["outbox"]
    print(
        f"relay {data['version']}, up {tables.age(data['uptime_s'])}; outbox {outbox['path']} "
        f"({tables.size(outbox['bytes'])})"
    )
    if data.get("outbox_lost"):
        print(f"OUTBOX FILE LOST: {data['outbox_lost']}; ingest is refused: restart the relay")
    now = time.time()
    circuit = data["circuit"]
    if data.get("circuit_reopens_in_s") is not None:
        circuit += f" (probe in {tables.age(data['circuit_reopens_in_s'])})"
    print(
        f"circuit to MMOLove: {circuit}   in flight: {data['in_flight']}   "
        f"oldest pending: {tables.age(data['oldest_pending_age_s'])}   "
        f"next attempt in: {tables.age(data['next_attempt_in_s'])}"
    )
    print()
    servers = [(_snapshot(server), server["counts"]) for server in data["servers"]]
    tables.table(
        ["SERVER", "STATE", "PENDING", "IN FLIGHT", "DELIVERED", "DEAD", "LAST ERROR"],
        [
            [
                server.server_id,
                _STATES.get(server.state, server.state),
                counts["pending"],
                counts["in_flight"],
                counts["delivered"],
                counts["dead"],
                _last_error(server, now),
            ]
            for server, counts in servers
        ],
    )
    for server, _ in servers:
        if server.state in (PAUSED, HELD):
            print(f"\n{server.server_id} is {server.state}: {server.reason}")
            if server.next_attempt_at is not None:
                print(f"  next probe in {tables.age(server.next_attempt_at - now)}")
    if data.get("waiting_for_registered"):
        print(
            f"\n{data['waiting_for_registered']} qualified or reversed events arrived before "
            "their registered and wait for it (mmolove-relay events list --status pending "
            "--reason waiting_for_registered)"
        )
    if data["dead"]:
        print("\ndead events by reason (replay: mmolove-relay retry --dead --reason REASON)")
        tables.table(
            ["SERVER", "REASON", "COUNT", "LATEST", "LATEST ERROR"],
            [
                [d["server_id"], d["reason"], d["count"], f"#{d['latest_id']}", d["latest_error"]]
                for d in data["dead"]
            ],
        )
    _status_visibility(data)
    return EXIT_OK


def _status_visibility(data: Mapping[str, Any]) -> None:
    """Rejected inputs and alerts; absent from a daemon that predates them."""
    rejected = data.get("rejected") or {}
    if rejected.get("last_hour"):
        latest = rejected["latest"]
        print(
            f"\n{rejected['last_hour']} input(s) rejected in the last hour; latest "
            f"{tables.when(latest['at'])}: {latest['http_status']} {latest['code']}: "
            f"{latest['message']} (see: mmolove-relay rejected)"
        )
    if data.get("sources"):
        print("\nsources (mmolove-relay sources)")
        sources.table(data["sources"])
    alerts = data.get("alerts") or {}
    for firing in alerts.get("firing", []):
        print(f"\nALERT {firing['key']} since {tables.when(firing['since'])}")
    if alerts.get("targets"):
        print("\nalert targets")
        tables.table(
            ["TARGET", "STATE", "LAST ATTEMPT", "LAST OK", "LAST ERROR"],
            [
                [
                    t["target"],
                    t.get("state", "-"),  # a daemon before the state tells ok only
                    _ago(t.get("last_attempt_at")),
                    _ago(t.get("last_ok_at")),
                    t["last_error"] or "-",
                ]
                for t in alerts["targets"]
            ],
        )


def _ago(timestamp: float | None) -> str:
    return "-" if timestamp is None else f"{tables.age(time.time() - timestamp)} ago"


# How each delivery state reads in the table: the ones needing attention in capitals.
_STATES = {PAUSED: "PAUSED", HELD: "HELD", CIRCUIT_OPEN: "CIRCUIT OPEN"}


def _snapshot(server: Mapping[str, Any]) -> ServerSnapshot:
    """A server of the status answer as the typed snapshot the daemon made it from."""
    return ServerSnapshot(**{f.name: server[f.name] for f in fields(ServerSnapshot)})


def _last_error(server: ServerSnapshot, now: float) -> str:
    if not server.last_error or server.last_error_at is None:
        return "-"
    return f"{tables.age(now - server.last_error_at)} ago: {server.last_error}"


def events_list(args: argparse.Namespace, environ: Environ) -> int:
    params = {
        "status": args.status,
        "event": args.event,
        "token": args.token,
        "server_id": args.server_id,
        "server_event_id": args.server_event_id,
        "outcome": args.reason,
        "player": args.player,
        "since": time.time() - args.since if args.since is not None else None,
        "limit": args.limit,
    }
    data = DaemonClient(args, environ).call("GET", "/v1/events?" + client.query(params))
    if args.json:
        tables.print_json(data)
        return EXIT_OK
    now = time.time()
    tables.table(
        ["ID", "AGE", "SERVER", "EVENT", "TOKEN", "SERVER EVENT ID", "STATUS", "TRIES", "OUTCOME"],
        [
            [
                e["id"],
                tables.age(now - e["created_at"]),
                e["server_id"],
                e["event"] + (" (test)" if e["test"] else ""),
                e["token"],
                e["server_event_id"],
                e["status"],
                e["attempts"],
                e["outcome"] or "-",
            ]
            for e in data["events"]
        ],
    )
    print(f"{len(data['events'])} of {data['total']} shown, newest first")
    return EXIT_OK


def events_show(args: argparse.Namespace, environ: Environ) -> int:
    e = DaemonClient(args, environ).call("GET", f"/v1/events/{args.id}")
    if args.json:
        tables.print_json(e)
        return EXIT_OK
    fields = [
        ("event", e["event"] + (" (test)" if e["test"] else "")),
        ("server", e["server_id"]),
        ("token", e["token"]),
        ("server_event_id", e["server_event_id"]),
        ("status", e["status"] + (f" ({e['outcome']})" if e["outcome"] else "")),
        ("attempts", e["attempts"]),
        ("ingested", tables.when(e["created_at"])),
        ("replayed", tables.when(e["replayed_at"])),
        ("next attempt", tables.when(e["next_attempt_at"])),
        ("finished", tables.when(e["finished_at"])),
        ("referral", f"{e['referral_id'] or '-'} (state {e['state'] or '-'})"),
        ("last error", e["last_error"] or "-"),
        ("MMOLove said", f"{e['last_http_status'] or '-'} {e['response'] or ''}".strip()),
        ("body", e["body"]),
    ]
    print(f"event #{e['id']}")
    for name, value in fields:
        print(f"  {name + ':':<17}{value}")
    print("\ndelivery log, newest first")
    tables.table(
        ["STARTED", "TOOK", "HTTP", "OUTCOME", "MMOLOVE'S ANSWER OR THE ERROR"],
        [
            [
                tables.when(a["started_at"]),
                f"{a['duration_ms']:.0f} ms",
                a["http_status"] or "-",
                a["outcome"],
                a["detail"] or "-",
            ]
            for a in e["delivery_log"]
        ],
    )
    if e["status"] == "dead":
        print(f"\nonce the cause is fixed: mmolove-relay retry {e['id']}")
    return EXIT_OK


def player(args: argparse.Namespace, environ: Environ) -> int:
    path = "/v1/players/" + urllib.parse.quote(args.account_id, safe="")
    if args.server_id:
        path += "?" + client.query({"server_id": args.server_id})
    story = DaemonClient(args, environ).call("GET", path)
    if args.json:
        tables.print_json(story)
        return EXIT_OK
    where = f" on server {story['server_id']}" if story["server_id"] else ""
    print(f"player {story['referee_identity']}{where}, referral token {story['token'] or '-'}")
    rows = [
        [
            e["id"],
            e["event"]
            + (" (test)" if e["test"] else "")
            + (f" (source {e['reported_by']})" if e.get("reported_by") else ""),
            e["server_event_id"],
            e["status"],
            e["outcome"] or "-",
            e["attempts"],
            f"{e['referral_id'] or '-'} / {e['state'] or '-'}",
            _why(e),
        ]
        for e in story["events"]
    ]
    if rows:
        print()
        headers = ["ID", "EVENT", "SERVER EVENT ID", "STATUS", "OUTCOME", "TRIES"]
        tables.table([*headers, "REFERRAL / STATE", "NEXT ATTEMPT OR WHY"], rows)
    if story["rejected"]:
        print("\nrejected inputs naming this player or token")
        tables.rejected(story["rejected"])
    if story["other_tokens"]:
        print(f"\nother referrals naming this player: {', '.join(story['other_tokens'])}")
    verdict = story["verdict"]
    print(f"\n{verdict['sentence']}")
    if verdict["fix"]:
        print(f"fix: {verdict['fix']}")
    return EXIT_OK


def _why(e: Mapping[str, Any]) -> str:
    if e["status"] == "dead":
        return str(e["error"] or "-")
    if e["note"]:
        return str(e["note"])
    return "from the ledger (body pruned)" if e["source"] == "ledger" else "-"


def rejected(args: argparse.Namespace, environ: Environ) -> int:
    params = {
        "since": time.time() - args.since if args.since is not None else None,
        "code": args.code,
        "limit": args.limit,
    }
    data = DaemonClient(args, environ).call("GET", "/v1/rejected?" + client.query(params))
    if args.json:
        tables.print_json(data)
        return EXIT_OK
    tables.rejected(data["rejected"])
    print(f"{len(data['rejected'])} shown, newest first")
    return EXIT_OK


# -- writers -------------------------------------------------------------------------------


def send(args: argparse.Namespace, environ: Environ) -> int:
    body: dict[str, Any] = {
        "event": args.event,
        "token": args.token,
        "server_event_id": args.server_event_id,
    }
    for key, value in (
        ("referee_identity", args.referee),
        ("server_id", args.server_id),
        ("ts", args.ts),
    ):
        if value is not None:
            body[key] = value
    if args.test:
        body["test"] = True
    answer = DaemonClient(args, environ).call("POST", "/v1/events", body, wait_s=args.wait_s)
    tables.print_json(answer)
    return EXIT_OK


def retry(args: argparse.Namespace, environ: Environ) -> int:
    if bool(args.ids) == args.dead:
        raise CommandFailed(EXIT_USAGE, "give outbox ids to retry, or --dead (not both).")
    if (args.reason or args.server_id) and not args.dead:
        raise CommandFailed(EXIT_USAGE, "--reason and --server-id go with --dead.")
    daemon = DaemonClient(args, environ)
    if args.ids:
        ids = sorted(set(args.ids))
        tables.confirm(args, f"re-queue event{'s' if len(ids) > 1 else ''} {tables.id_list(ids)}")
        answer = daemon.call("POST", "/v1/admin/retry", {"ids": ids})
        results = answer["results"]
        if args.json:
            tables.print_json(answer)
        else:
            tables.table(
                ["ID", "RESULT", "FOLLOWERS RE-QUEUED"],
                [[r["id"], r["result"], tables.id_list(r["followers"]) or "-"] for r in results],
            )
        skipped = [r for r in results if r["result"] not in ("requeued", "due_now")]
        return EXIT_REFUSED if skipped else EXIT_OK

    where = {"status": "dead", "outcome": args.reason, "server_id": args.server_id}
    total = daemon.call("GET", "/v1/events?" + client.query({**where, "limit": 1}))["total"]
    what = "dead event" + ("s" if total != 1 else "") + (f" ({args.reason})" if args.reason else "")
    if total == 0:
        return tables.done(args, {"requeued": 0, "followers": 0}, f"no {what} to retry")
    tables.confirm(args, f"re-queue {total} {what}")
    done = requeued = 0
    cursor: int | None = None
    progress = tables.Progress("retry", total)
    filter_ = {k: v for k, v in where.items() if v is not None}
    while True:
        body = {"filter": {**filter_, "after_id": cursor or 0}, "limit": args.chunk}
        answer = daemon.call("POST", "/v1/admin/retry", body)
        if not answer["results"]:
            break
        cursor = answer["last_id"]
        done += len(answer["results"])
        requeued += answer["requeued"]
        progress.show(done)
    progress.end()
    return tables.done(
        args,
        {"requeued": requeued, "matched": done},
        f"re-queued {requeued} events ({done} dead events matched, the rest were held back "
        "behind them); they are being sent now",
    )


def purge(args: argparse.Namespace, environ: Environ) -> int:
    status = "dead" if args.dead else "delivered"
    before = time.time() - args.older_than
    daemon = DaemonClient(args, environ)
    params = {"status": status, "finished_before": before, "limit": 1}
    total = daemon.call("GET", "/v1/events?" + client.query(params))["total"]
    if total == 0:
        return tables.done(args, {"purged": 0}, f"no {status} events older than that")
    tables.confirm(args, f"delete {total} {status} events for good")
    purged = 0
    progress = tables.Progress("purge", total)
    while True:
        body = {"status": status, "before": before, "limit": args.chunk}
        count = daemon.call("POST", "/v1/admin/purge", body)["purged"]
        if not count:
            break
        purged += count
        progress.show(purged)
    progress.end()
    return tables.done(args, {"purged": purged}, f"deleted {purged} {status} events")

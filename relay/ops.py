"""The operator commands: send, status, events, retry, purge, test, check-config and sign.

Most talk to the running daemon over its HTTP API (a retry takes effect at once because the
daemon's dispatcher is woken by it); ``test``, ``check-config`` and ``sign`` need only the
configuration. Every command prints a table for people and JSON with ``--json``; exit codes
are ``relay.cli``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tenacity

from relay.config import Listen, ServerConfig, Settings, describe, load_settings
from relay.errors import DeliveryError, SenderPaused
from relay.events import validate
from relay.sender import Sender
from relay.signing import HEADER, signature_header

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
Environ = Mapping[str, str]


class CommandFailed(Exception):
    """Ends a command with ``message`` on stderr and exit code ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_commands(sub: Any, environ: Environ) -> None:
    """Register the operator subcommands on the CLI's subparsers."""

    def command(name: str, help_: str, handler: Callable[..., int]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
        parser.set_defaults(handler=lambda args: handler(args, environ))
        return parser

    send = command("send", "enqueue one event in the running relay", _send)
    send.add_argument("event", choices=["registered", "qualified", "reversed"])
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

    status = command("status", "what is pending, dead and paused, per server", _status)
    _daemon_options(status)

    events = sub.add_parser("events", help="list events or show one with its delivery log")
    events_sub = events.add_subparsers(metavar="list|show")
    listing = events_sub.add_parser("list", help="events matching filters, newest first")
    listing.set_defaults(handler=lambda args: _events_list(args, environ))
    listing.add_argument("--status", choices=["pending", "in_flight", "delivered", "dead"])
    listing.add_argument("--event", choices=["registered", "qualified", "reversed"])
    listing.add_argument("--token")
    listing.add_argument("--server-id")
    listing.add_argument("--server-event-id")
    listing.add_argument("--reason", help="why dead events died, e.g. not_found (see status)")
    listing.add_argument("--since", type=_duration, help="ingested within, e.g. 30m, 2h, 7d")
    listing.add_argument("--limit", type=int, default=50, help="at most (default %(default)s)")
    _daemon_options(listing)
    show = events_sub.add_parser("show", help="one event, every attempt and MMOLove's answers")
    show.set_defaults(handler=lambda args: _events_show(args, environ))
    show.add_argument("id", type=int)
    _daemon_options(show)
    events.set_defaults(handler=lambda args: _usage(events))

    retry = command(
        "retry",
        "re-queue dead events (and the events held back behind them) to be sent now",
        _retry,
    )
    retry.add_argument("ids", nargs="*", type=int, metavar="ID", help="outbox ids")
    retry.add_argument("--dead", action="store_true", help="every dead event (see --reason)")
    retry.add_argument("--reason", help="with --dead: only those that died for this reason")
    retry.add_argument("--server-id", help="with --dead: only this server's")
    _bulk_options(retry)

    purge = command("purge", "delete dead or delivered events older than a given age", _purge)
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--dead", action="store_true")
    which.add_argument("--delivered", action="store_true")
    purge.add_argument(
        "--older-than", type=_duration, required=True, help="finished before, e.g. 30d, 12h"
    )
    _bulk_options(purge)

    test = command(
        "test",
        "send a signed test event straight to MMOLove: proves the secret, header and clock",
        _test,
    )
    test.add_argument("--server-id", help="which configured server (default: each)")
    test.add_argument("--json", action="store_true", help="print JSON for scripts")

    check = command(
        "check-config", "validate the configuration and print it, secrets masked", _check_config
    )
    check.add_argument("--json", action="store_true", help="print JSON for scripts")

    sign = command(
        "sign", "print the signature header for the body on stdin (debug an integration)", _sign
    )
    sign.add_argument("--server-id", help="which configured server's secret")
    sign.add_argument("--ts", type=int, help="signing time t in Unix seconds (default now)")
    sign.add_argument("--json", action="store_true", help="print JSON for scripts")


def _daemon_options(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--url", help="relay base URL (default from the listen setting)")


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


# -- commands talking to the daemon --------------------------------------------------------


def _send(args: argparse.Namespace, environ: Environ) -> int:
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
    answer = _Daemon(args, environ).call("POST", "/v1/events", body, wait_s=args.wait_s)
    _print_json(answer)
    return EXIT_OK


def _status(args: argparse.Namespace, environ: Environ) -> int:
    data = _Daemon(args, environ).call("GET", "/v1/status")
    if args.json:
        _print_json(data)
        return EXIT_OK
    outbox = data["outbox"]
    print(
        f"relay {data['version']}, up {_age(data['uptime_s'])}; outbox {outbox['path']} "
        f"({_size(outbox['bytes'])})"
    )
    print(
        f"circuit to MMOLove: {data['circuit']}   in flight: {data['in_flight']}   "
        f"oldest pending: {_age(data['oldest_pending_age_s'])}   "
        f"next attempt in: {_age(data['next_attempt_in_s'])}"
    )
    print()
    rows = []
    for server in data["servers"]:
        counts = server["counts"]
        rows.append(
            [
                server["server_id"],
                _STATES.get(server["state"], server["state"]),
                counts["pending"],
                counts["in_flight"],
                counts["delivered"],
                counts["dead"],
                _last_error(server),
            ]
        )
    _table(["SERVER", "STATE", "PENDING", "IN FLIGHT", "DELIVERED", "DEAD", "LAST ERROR"], rows)
    for server in data["servers"]:
        if server["state"] in ("paused", "held"):
            print(f"\n{server['server_id']} is {server['state']}: {server['reason']}")
            if server["next_attempt_in_s"] is not None:
                print(f"  next probe in {_age(server['next_attempt_in_s'])}")
    if data["dead"]:
        print("\ndead events by reason (replay: mmolove-relay retry --dead --reason REASON)")
        _table(
            ["SERVER", "REASON", "COUNT", "LATEST", "LATEST ERROR"],
            [
                [d["server_id"], d["reason"], d["count"], f"#{d['latest_id']}", d["latest_error"]]
                for d in data["dead"]
            ],
        )
    return EXIT_OK


# How each delivery state reads in the table: the ones needing attention in capitals.
_STATES = {"paused": "PAUSED", "held": "HELD", "circuit_open": "CIRCUIT OPEN"}


def _last_error(server: Mapping[str, Any]) -> str:
    if not server.get("last_error"):
        return "-"
    return f"{_age(time.time() - server['last_error_at'])} ago: {server['last_error']}"


def _events_list(args: argparse.Namespace, environ: Environ) -> int:
    query = {
        "status": args.status,
        "event": args.event,
        "token": args.token,
        "server_id": args.server_id,
        "server_event_id": args.server_event_id,
        "outcome": args.reason,
        "since": time.time() - args.since if args.since is not None else None,
        "limit": args.limit,
    }
    data = _Daemon(args, environ).call("GET", "/v1/events?" + _query(query))
    if args.json:
        _print_json(data)
        return EXIT_OK
    now = time.time()
    _table(
        ["ID", "AGE", "SERVER", "EVENT", "TOKEN", "SERVER EVENT ID", "STATUS", "TRIES", "OUTCOME"],
        [
            [
                e["id"],
                _age(now - e["created_at"]),
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


def _events_show(args: argparse.Namespace, environ: Environ) -> int:
    e = _Daemon(args, environ).call("GET", f"/v1/events/{args.id}")
    if args.json:
        _print_json(e)
        return EXIT_OK
    fields = [
        ("event", e["event"] + (" (test)" if e["test"] else "")),
        ("server", e["server_id"]),
        ("token", e["token"]),
        ("server_event_id", e["server_event_id"]),
        ("status", e["status"] + (f" ({e['outcome']})" if e["outcome"] else "")),
        ("attempts", e["attempts"]),
        ("ingested", _when(e["created_at"])),
        ("replayed", _when(e["replayed_at"])),
        ("next attempt", _when(e["next_attempt_at"])),
        ("finished", _when(e["finished_at"])),
        ("referral", f"{e['referral_id'] or '-'} (state {e['state'] or '-'})"),
        ("last error", e["last_error"] or "-"),
        ("MMOLove said", f"{e['last_http_status'] or '-'} {e['response'] or ''}".strip()),
        ("body", e["body"]),
    ]
    print(f"event #{e['id']}")
    for name, value in fields:
        print(f"  {name + ':':<17}{value}")
    print("\ndelivery log, newest first")
    _table(
        ["STARTED", "TOOK", "HTTP", "OUTCOME", "MMOLOVE'S ANSWER OR THE ERROR"],
        [
            [
                _when(a["started_at"]),
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


def _retry(args: argparse.Namespace, environ: Environ) -> int:
    if bool(args.ids) == args.dead:
        raise CommandFailed(EXIT_USAGE, "give outbox ids to retry, or --dead (not both).")
    if (args.reason or args.server_id) and not args.dead:
        raise CommandFailed(EXIT_USAGE, "--reason and --server-id go with --dead.")
    daemon = _Daemon(args, environ)
    if args.ids:
        ids = sorted(set(args.ids))
        _confirm(args, f"re-queue event{'s' if len(ids) > 1 else ''} {_ids(ids)}")
        answer = daemon.call("POST", "/v1/admin/retry", {"ids": ids})
        results = answer["results"]
        if args.json:
            _print_json(answer)
        else:
            _table(
                ["ID", "RESULT", "FOLLOWERS RE-QUEUED"],
                [[r["id"], r["result"], _ids(r["followers"]) or "-"] for r in results],
            )
        skipped = [r for r in results if r["result"] not in ("requeued", "due_now")]
        return EXIT_REFUSED if skipped else EXIT_OK

    where = {"status": "dead", "outcome": args.reason, "server_id": args.server_id}
    total = daemon.call("GET", "/v1/events?" + _query({**where, "limit": 1}))["total"]
    what = "dead event" + ("s" if total != 1 else "") + (f" ({args.reason})" if args.reason else "")
    if total == 0:
        return _done(args, {"requeued": 0, "followers": 0}, f"no {what} to retry")
    _confirm(args, f"re-queue {total} {what}")
    done = requeued = 0
    cursor: int | None = None
    progress = _Progress("retry", total)
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
    return _done(
        args,
        {"requeued": requeued, "matched": done},
        f"re-queued {requeued} events ({done} dead events matched, the rest were held back "
        "behind them); they are being sent now",
    )


def _purge(args: argparse.Namespace, environ: Environ) -> int:
    status = "dead" if args.dead else "delivered"
    before = time.time() - args.older_than
    daemon = _Daemon(args, environ)
    query = {"status": status, "finished_before": before, "limit": 1}
    total = daemon.call("GET", "/v1/events?" + _query(query))["total"]
    if total == 0:
        return _done(args, {"purged": 0}, f"no {status} events older than that")
    _confirm(args, f"delete {total} {status} events for good")
    purged = 0
    progress = _Progress("purge", total)
    while True:
        body = {"status": status, "before": before, "limit": args.chunk}
        count = daemon.call("POST", "/v1/admin/purge", body)["purged"]
        if not count:
            break
        purged += count
        progress.show(purged)
    progress.end()
    return _done(args, {"purged": purged}, f"deleted {purged} {status} events")


# -- commands needing only the configuration -----------------------------------------------


def _check_config(args: argparse.Namespace, environ: Environ) -> int:
    settings = load_settings(environ, args.config)
    described = describe(settings)
    if args.json:
        _print_json(described)
        return EXIT_OK
    print("the configuration is valid; in force (environment over file over defaults):")
    for name, value in described.items():
        if name == "servers":
            for server in value:
                source = server["secret_file"] or "the environment or config file"
                kid = f", kid {server['kid']}" if server["kid"] else ""
                print(f"  server {server['id']}: secret *** from {source}{kid}")
        else:
            print(f"  {name} = {value}")
    if not settings.listen.is_loopback:
        print("ingest is not on loopback: clients must send the bearer token")
    return EXIT_OK


def _sign(args: argparse.Namespace, environ: Environ) -> int:
    settings = load_settings(environ, args.config)
    server = _server(settings, args.server_id)
    body = sys.stdin.buffer.read()
    t = args.ts if args.ts is not None else int(time.time())
    header = signature_header(body, server.secret.reveal(), t, server.kid)
    if args.json:
        _print_json({"header": HEADER, "value": header, "t": t, "body_bytes": len(body)})
    else:
        print(f"{HEADER}: {header}")
    if body.endswith(b"\n"):
        print(
            "note: the body ends with a newline, and the signature covers it; send exactly "
            "these bytes (echo -n, or printf) or sign what you send.",
            file=sys.stderr,
        )
    return EXIT_OK


def _test(args: argparse.Namespace, environ: Environ) -> int:
    settings = load_settings(environ, args.config)
    servers = [_server(settings, args.server_id)] if args.server_id else settings.servers
    results = asyncio.run(_test_servers(settings, [s.server_id for s in servers]))
    if args.json:
        _print_json({"endpoint": settings.endpoint, "servers": results})
    else:
        for r in results:
            print(f"server {r['server_id']} -> {settings.endpoint}: {r['message']}")
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_REFUSED


async def _test_servers(settings: Settings, server_ids: Sequence[str]) -> list[dict[str, Any]]:
    sender = Sender(
        settings.endpoint,
        concurrency=1,
        connect_timeout_s=settings.connect_timeout_s,
        send_timeout_s=settings.send_timeout_s,
        ca_file=settings.ca_file,
    )
    results = []
    try:
        for server in (_server(settings, server_id) for server_id in server_ids):
            now = time.time()
            event = validate(
                {
                    "event": "registered",
                    "token": "relay-test",
                    "referee_identity": "relay-test",
                    "server_event_id": f"relay-test-{int(now)}",
                    "server_id": server.server_id,
                    "test": True,
                },
                server_ids=[server.server_id],
                allow_extra_fields=False,
                now=now,
            )
            header = signature_header(event.body, server.secret.reveal(), int(now), server.kid)
            try:
                delivered = await sender.deliver(event.body, header)
            except SenderPaused as exc:
                skew = exc.clock_skew_s
                results.append(_test_result(server.server_id, False, str(exc), exc, skew))
            except DeliveryError as exc:
                results.append(_test_result(server.server_id, False, str(exc), exc, None))
            else:
                skew = delivered.clock_skew_s
                message = (
                    f"{delivered.http_status} {delivered.response.strip()}: MMOLove verified "
                    "the signature; the secret, header format and clock are right"
                )
                if delivered.outcome != "test":
                    message = f"{delivered.http_status} but not a test answer: {delivered.response}"
                results.append(
                    _test_result(server.server_id, delivered.outcome == "test", message, None, skew)
                )
    finally:
        await sender.close()
    return results


def _test_result(
    server_id: str, ok: bool, message: str, error: DeliveryError | None, skew: float | None
) -> dict[str, Any]:
    if skew is not None:
        message += f" (MMOLove's clock is {skew:+.1f} s from ours)"
    return {
        "server_id": server_id,
        "ok": ok,
        "http_status": error.http_status if error else None,
        "reason": error.reason if error else None,
        "clock_skew_s": skew,
        "message": message,
    }


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


# -- talking to the daemon -----------------------------------------------------------------


class _Daemon:
    """The running relay's HTTP API, found from the configuration's listen setting."""

    def __init__(self, args: argparse.Namespace, environ: Environ) -> None:
        settings = load_settings(environ, args.config, require_servers=False)
        self.base = (args.url or _base_url(settings.listen)).rstrip("/")
        self._token = settings.ingest_token.reveal() if settings.ingest_token else None

    def call(self, method: str, path: str, body: Any = None, *, wait_s: float = 0.0) -> Any:
        """One request; a failure raises ``CommandFailed`` saying what to do."""
        # A relay that is restarting is unreachable or answers 503 for a moment: a script
        # can ask to wait that out instead of failing at once.
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(wait_s),
            wait=tenacity.wait_random_exponential(multiplier=0.1, max=2.0),
            retry=tenacity.retry_if_exception_type(OSError)
            | tenacity.retry_if_result(lambda answer: answer[0] == 503),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        try:
            status, answer = retrying(http_json, method, self.base + path, body, self._token)
        except OSError as exc:
            raise CommandFailed(
                EXIT_UNAVAILABLE,
                f"cannot reach the relay at {self.base} ({exc}); is `mmolove-relay serve` "
                "running (systemctl status mmolove-relay), and is --url or "
                "MMOLOVE_RELAY_LISTEN right?",
            ) from exc
        if status >= 400:
            error = answer.get("error", {})
            raise CommandFailed(
                EXIT_UNAVAILABLE if status == 503 else EXIT_REFUSED,
                f"{status} {error.get('code')}: {error.get('message')}",
            )
        return answer


def _base_url(listen: Listen) -> str:
    if listen.path is not None:
        raise CommandFailed(
            EXIT_USAGE,
            "the relay listens on a Unix socket; pass --url http://host:port of a "
            "TCP listener, or use curl --unix-socket.",
        )
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::") else listen.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{listen.port}"


def http_json(
    method: str, url: str, body: Any = None, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """One JSON request with the standard library (the CLI needs no event loop for it)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http(s) only
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"{}")
        except ValueError:
            return exc.code, {
                "error": {"code": "http_error", "message": raw.decode(errors="replace")}
            }


def _query(params: Mapping[str, Any]) -> str:
    return urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


# -- output --------------------------------------------------------------------------------


def _confirm(args: argparse.Namespace, action: str) -> None:
    """Ask on stderr, read the answer from stdin; anything but yes stops the command."""
    if args.yes:
        return
    print(f"{action}? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if not sys.stdin.isatty():
        print(file=sys.stderr)  # the answer came from a pipe: end the prompt's line
    if answer not in ("y", "yes"):
        raise CommandFailed(EXIT_REFUSED, "nothing done (pass --yes to skip the question).")


class _Progress:
    """``retry: 1500/4000 (37%)`` on stderr, redrawn in place on a terminal."""

    def __init__(self, what: str, total: int) -> None:
        self._what, self._total = what, total
        self._tty = sys.stderr.isatty()

    def show(self, done: int) -> None:
        line = f"{self._what}: {done}/{self._total} ({100 * done // max(self._total, 1)}%)"
        print(("\r" + line) if self._tty else line, end="" if self._tty else "\n", file=sys.stderr)

    def end(self) -> None:
        if self._tty:
            print(file=sys.stderr)


def _done(args: argparse.Namespace, data: dict[str, Any], message: str) -> int:
    if args.json:
        _print_json(data)
    else:
        print(message)
    return EXIT_OK


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell; numbers right-aligned; long text cut at 60."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = (
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        )
        return "  ".join(padded).rstrip()

    print(line(headers))
    for row in cells:
        print(line(row))


def _cell(value: Any) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in ids)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))
    delta = time.time() - timestamp
    return f"{stamp} UTC ({_age(abs(delta))} {'ago' if delta >= 0 else 'from now'})"


def _size(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(s|m|min|h|d)?")
_UNIT_S = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """``90``, ``45s``, ``30m``, ``2h`` or ``7d`` in seconds, for argparse."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; write e.g. 45s, 30m, 2h, 7d")
    return float(match[1]) * _UNIT_S[match[2]]

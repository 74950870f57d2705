"""``mmolove-relay doctor``: everything an operator can get wrong, checked in order, each by a
small function returning ``Check``s (ok, warn or fail) that name what was found and the fix.

It works with the daemon down: the daemon and ingest lines then fail, the rest still run.
aiohttp is imported only by the checks that send (the test event, ``--send-alert``), so
``--help`` stays quick; ``setup`` can run the same checks through ``run_checks``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import shutil
import socket
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from relay.cli import tables
from relay.cli.client import EXIT_OK, EXIT_REFUSED, CommandFailed, DaemonClient, Environ, http_json
from relay.config.loading import load
from relay.config.settings import Settings
from relay.config.values import MIN_SECRET_CHARS, ServerConfig, base_url, mask_url
from relay.errors import ConfigError
from relay.proof import CLOCK_FAIL_S, CLOCK_WARN_S, UNREACHABLE, Proof, clock_fix, prove
from relay.reserve import short_of_space
from relay.snapshot import PAUSED

Status = Literal["ok", "warn", "fail"]
MARKS: dict[Status, str] = {"ok": "✓", "warn": "!", "fail": "✗"}
_START = (
    "start it: systemctl start mmolove-relay (or mmolove-relay serve); why it stopped: "
    "journalctl -u mmolove-relay"
)


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's report: what was checked, how it went, and what to do."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def doctor(args: argparse.Namespace, environ: Environ) -> int:
    checks = run_checks(environ, args.config, url=args.url, send_alert=args.send_alert)
    ok = passed(checks)
    if args.json:
        tables.print_json({"ok": ok, "checks": [c.as_json() for c in checks]})
        return EXIT_OK if ok else EXIT_REFUSED
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{MARKS[c.status]} {c.name:<{width}}  {c.detail}")
        if c.fix:
            print(f"  {'':<{width}}  fix: {c.fix}")
    failed = sum(c.status == "fail" for c in checks)
    print(f"\n{failed} check(s) failed" if failed else "\nevery check passed")
    return EXIT_OK if ok else EXIT_REFUSED


def passed(checks: Sequence[Check]) -> bool:
    return not any(c.status == "fail" for c in checks)


def run_checks(
    environ: Environ, config: Path | None, *, url: str | None = None, send_alert: bool = False
) -> list[Check]:
    """Every check, in the order an operator fixes things; stops after the configuration
    when it is invalid, since every other check reads it."""
    first, settings = configuration(environ, config)
    if settings is None:
        return [first]
    proofs = asyncio.run(prove(settings, settings.servers))
    return [
        first,
        *(secret(server) for server in settings.servers),
        endpoint(settings, proofs),
        clock(proofs),
        *(signed_event(proof) for proof in proofs),
        outbox(settings),
        *daemon(environ, config, url),
        ingest(settings),
        *alerts(settings, send=send_alert),
    ]


def configuration(environ: Environ, config: Path | None) -> tuple[Check, Settings | None]:
    try:
        settings = load(environ, config).settings
    except ConfigError as exc:
        fix = "correct it; `mmolove-relay check-config` shows what is in force and from where"
        return Check("configuration", "fail", str(exc), fix), None
    warnings = [n.message for n in settings.notes if n.level == "warning"]
    if warnings:
        return Check("configuration", "warn", "valid, but: " + " ".join(warnings)), settings
    return Check("configuration", "ok", "valid"), settings


def secret(server: ServerConfig) -> Check:
    """Present (loading refused it otherwise), long enough, and only the relay may read it."""
    name = f"secret {server.server_id}"
    where = f"{server.secret_from} ({server.secret_file})" if server.secret_file else None
    if len(server.secret.reveal()) < MIN_SECRET_CHARS:
        return Check(
            name,
            "warn",
            f"shorter than {MIN_SECRET_CHARS} characters, from {where or server.secret_from}; "
            "MMOLove issues longer ones",
            "copy the whole secret again from the dashboard (Referrals > Secret).",
        )
    if server.secret_file is None:
        return Check(name, "ok", f"present, from {server.secret_from}")
    info = server.secret_file.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return Check(
            name,
            "fail",
            f"{server.secret_file} is readable or writable by group or others (mode {mode:04o})",
            f"chmod 600 {server.secret_file}",
        )
    if info.st_uid not in (0, os.geteuid()):
        return Check(
            name,
            "warn",
            f"{server.secret_file} is owned by {_user(info.st_uid)}, who can read and replace it",
            f"chown root {server.secret_file} (or the relay's user), then chmod 600",
        )
    return Check(name, "ok", f"present, from {where}, mode {mode:04o}, owner {_user(info.st_uid)}")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def endpoint(settings: Settings, proofs: Sequence[Proof]) -> Check:
    """Resolves, TLS succeeds, answers, and is the final URL: told by the test events."""
    url = mask_url(settings.endpoint)
    for proof in proofs:
        if proof.reason in UNREACHABLE:
            return Check("endpoint", "fail", f"{url}: {proof.message}", proof.fix)
        if proof.http_status is not None and 300 <= proof.http_status < 400:
            return Check("endpoint", "fail", f"{url}: {proof.message}", proof.fix)
    tls = "TLS succeeds, " if url.startswith("https:") else ""
    return Check("endpoint", "ok", f"{url}: resolves, {tls}answers")


def clock(proofs: Sequence[Proof]) -> Check:
    """This machine's clock against MMOLove's ``Date`` header, which every proof carries."""
    skew = next((p.clock_skew_s for p in proofs if p.clock_skew_s is not None), None)
    if skew is None:
        return Check("clock", "warn", "not compared: no answer from MMOLove carried a Date")
    detail = f"MMOLove's clock is {skew:+.1f} s from ours"
    if abs(skew) > CLOCK_FAIL_S:
        return Check("clock", "fail", detail, clock_fix(skew))
    if abs(skew) > CLOCK_WARN_S:
        return Check("clock", "warn", detail, clock_fix(skew))
    return Check("clock", "ok", detail)


def signed_event(proof: Proof) -> Check:
    name = f"test event {proof.server_id}"
    return Check(name, "ok" if proof.ok else "fail", proof.message, proof.fix)


def outbox(settings: Settings) -> Check:
    """Writable by this user, with ``min_free_bytes`` left once the reserve is taken: the
    rule ``/readyz`` applies, judged from the file alone so it holds with the daemon down."""
    if settings.db_url is not None:
        where = mask_url(settings.db_url)
        return Check("outbox", "ok", f"PostgreSQL at {where}: the daemon's readiness covers it")
    path = settings.db_path
    # The file and its directory (the WAL goes beside it) must be writable; a missing
    # directory the daemon makes, so then its nearest existing parent must be.
    directory = next(p for p in path.parents if p.exists())
    user = _user(os.geteuid())
    needed = [path, directory] if path.exists() else [directory]
    refused = next((p for p in needed if not os.access(p, os.W_OK)), None)
    if refused is not None:
        return Check(
            "outbox",
            "fail",
            f"{refused} is not writable by {user}",
            f"run the relay as the user who owns {directory}, or chown it to the relay's user",
        )
    free = shutil.disk_usage(directory).free
    reserve = path.with_name(path.name + ".reserve")
    if not reserve.exists():  # the daemon takes it at start, or refuses to start
        if free < settings.reserve_bytes:
            return Check(
                "outbox",
                "fail",
                f"{path}: {free} bytes free, and the relay needs {settings.reserve_bytes} "
                "(reserve_bytes) for its reserve, so it will not start",
                "free space on that disk, or lower [outbox] reserve_bytes",
            )
        free -= settings.reserve_bytes
    short = short_of_space(free, settings.min_free_bytes)
    if short is not None:
        return Check(
            "outbox",
            "fail",
            f"{path}: {short}, so ingest answers 503",
            "free space on that disk, or move the outbox (MMOLOVE_RELAY_DB) to a larger one "
            "(min_free_bytes is the headroom kept).",
        )
    return Check("outbox", "ok", f"{path}: writable by {user}, {tables.size(free)} free")


def daemon(environ: Environ, config: Path | None, url: str | None) -> list[Check]:
    """Running and ready, with its paused servers, dead events and oldest pending event."""
    try:
        client = DaemonClient(argparse.Namespace(config=config, url=url), environ)
    except CommandFailed as exc:  # a Unix socket, which urllib cannot dial
        return [Check("daemon", "warn", f"not checked: {exc}")]
    try:
        _, ready = client.probe("/readyz")
        status = client.call("GET", "/v1/status")
    except CommandFailed as exc:
        if exc.code == EXIT_REFUSED:  # it answered, and refused: the token
            return [Check("daemon", "fail", str(exc), "use the daemon's ingest token")]
        return [Check("daemon", "fail", f"not running: nothing answers at {client.base}", _START)]
    counts = status["counts"]
    detail = (
        f"{client.base}, version {status['version']}, up {tables.age(status['uptime_s'])}; "
        f"{counts['pending']} pending (oldest {tables.age(status['oldest_pending_age_s'])}), "
        f"circuit {status['circuit']}"
    )
    paused = [s for s in status["servers"] if s["state"] == PAUSED]
    problems = [p for p in ready["problems"] if not p.startswith("server ")]
    checks = [
        Check("daemon", "fail", f"not ready: {'; '.join(problems)}; {detail}", _NOT_READY)
        if problems
        else Check("daemon", "ok", f"running and ready: {detail}")
    ]
    checks += [
        Check(
            f"server {s['server_id']}",
            "fail",
            f"paused: {s['reason']}; its events are held",
            "fix what its test event above names, then systemctl reload mmolove-relay (or "
            "SIGHUP): the paused server is probed at once and its held events move.",
        )
        for s in paused
    ]
    if counts["dead"]:
        reasons = ", ".join(f"{d['count']} {d['reason']}" for d in status["dead"])
        checks.append(
            Check(
                "dead events",
                "warn",
                f"{counts['dead']} ({reasons})",
                "mmolove-relay status explains each reason; once fixed: "
                "mmolove-relay retry --dead --reason REASON",
            )
        )
    return checks


_NOT_READY = "see the outbox line above, mmolove-relay status and journalctl -u mmolove-relay"


_NOT_LISTENING = "start the relay (the daemon line above says how); it listens there"


def ingest(settings: Settings) -> Check:
    """The relay answers on its listen address; off loopback, only with the token."""
    listen = settings.listen
    if listen.path is not None:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(listen.path))
        except OSError as exc:
            return Check("ingest", "fail", f"{listen}: {exc.strerror or exc}", _NOT_LISTENING)
        return Check("ingest", "ok", f"{listen}: reachable")
    url = base_url(listen.host, listen.port)
    try:
        code, answer = http_json("GET", url + "/healthz")
    except OSError as exc:
        return Check("ingest", "fail", f"nothing answers on {listen} ({exc})", _NOT_LISTENING)
    if code != 200 or answer.get("ok") is not True:
        return Check(
            "ingest",
            "fail",
            f"something other than the relay answers on {listen} (HTTP {code})",
            "stop that program, or give the relay another address (MMOLOVE_RELAY_LISTEN)",
        )
    if listen.is_loopback:
        return Check("ingest", "ok", f"{listen}: reachable, loopback only")
    code, _ = http_json("POST", url + "/v1/events", {})
    if code != 401:
        return Check(
            "ingest",
            "fail",
            f"{listen} is off loopback and took a request without the token (HTTP {code})",
            "restart the relay with this configuration, whose MMOLOVE_RELAY_INGEST_TOKEN it "
            "must require",
        )
    return Check("ingest", "ok", f"{listen}: reachable, the token required off loopback")


def alerts(settings: Settings, *, send: bool) -> list[Check]:
    """The alert targets, named; with ``send``, each sent ``alert-test``'s message."""
    if not settings.alerts:
        return [
            Check(
                "alerts",
                "warn",
                "no alert target: nobody is told when delivery stops",
                "add an [[alerts]] entry or MMOLOVE_RELAY_ALERT_URL, then run "
                "mmolove-relay doctor --send-alert",
            )
        ]
    if not send:
        return [
            Check(f"alert {t.label}", "ok", "configured; not sent (--send-alert sends a test)")
            for t in settings.alerts
        ]
    from relay.alerts.targets import send_test  # aiohttp: imported when a message is sent

    return [
        Check(f"alert {r.target}", "ok" if r.ok else "fail", r.detail, _alert_fix(r.ok))
        for r in asyncio.run(send_test(settings.alerts))
    ]


def _alert_fix(ok: bool) -> str | None:
    return None if ok else "check the target's URL (and its secret) in the configuration"

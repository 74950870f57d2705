"""The quickstart on the overview: "Send test event", and "Getting started", the steps from a
configured relay to an event MMOLove has taken, each ticked from what the store holds.

What the checklist needs beyond the events is kept as the store's marks (named floats), so it
survives a restart and every replica of a PostgreSQL fleet sees the same: each server's last
proof (when, and whether it passed), when an alert target was first seen to take a message,
and when every step was done (from then on the checklist is gone and costs no read).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from relay.alerts.targets import TARGETS, test_message
from relay.appkeys import OUTBOX
from relay.config.settings import Settings
from relay.config.values import ServerConfig
from relay.console import overview
from relay.proof import Proof, prove
from relay.store.contract_records import LedgerEntry, Records

DONE_MARK = "quickstart_done_at"
ALERT_MARK = "quickstart_alert_proven_at"
# A registered as the game sends it: what the quickstart's "integrate in five minutes" posts.
REGISTERED = (
    '{"event":"registered","token":"mmref-abc","referee_identity":"player-7842",'
    '"server_event_id":"reg-7842"}'
)
QUALIFIED = '{"event":"qualified","token":"mmref-abc","server_event_id":"qual-7842"}'


def _proof_marks(server_id: str) -> tuple[str, str]:
    return f"quickstart_proof_at:{server_id}", f"quickstart_proof_ok:{server_id}"


@dataclass(frozen=True)
class Step:
    """One line of "Getting started": done with what proves it, or open with what to do."""

    title: str
    done: bool
    detail: str  # when done: when and what; when open: why not yet
    todo: str | None = None  # the one command or button that completes it
    command: str | None = None  # shown as code after ``todo``


async def send_test_events(request: web.Request, servers: Sequence[ServerConfig]) -> list[Proof]:
    """One signed test event per server straight to MMOLove, all at once so the page waits
    one send timeout whatever the number of servers; each result is remembered."""
    settings = overview.settings(request)
    found = await asyncio.gather(*(prove(settings, [server]) for server in servers))
    proofs = [proof for one in found for proof in one]
    records = request.config_dict[OUTBOX].records
    now = time.time()
    for proof in proofs:
        at, ok = _proof_marks(proof.server_id)
        await records.set_mark(at, now)
        await records.set_mark(ok, 1.0 if proof.ok else 0.0)
    return proofs


NO_ALERTS = (
    "no alert target is configured: add [[alerts]] to the configuration (Discord, Slack or a "
    "webhook) and reload the relay first."
)


def send_test_alert(request: web.Request) -> bool:
    """Queue a test message for every alert target the relay runs; False if it runs none.
    It goes the way a real alert goes, so a target that takes it is proven."""
    targets = request.config_dict.get(TARGETS)
    if targets is None:
        return False
    targets.send(test_message(time.time()))
    return True


async def getting_started(request: web.Request) -> tuple[Step, ...] | None:
    """The steps, or None once every one has been done."""
    records = request.config_dict[OUTBOX].records
    if await records.mark(DONE_MARK) is not None:
        return None
    settings = overview.settings(request)
    post = _curl(request, settings)
    steps = (
        _secret(settings.servers),
        await _test_event(records, settings.servers),
        _delivered("registered", await records.first_delivered("registered"), post),
        _delivered("qualified", await records.first_delivered("qualified"), post),
        await _alert(request, records, len(settings.alerts)),
    )
    if all(step.done for step in steps):
        await records.set_mark(DONE_MARK, time.time())
    return steps


def _secret(servers: Sequence[ServerConfig]) -> Step:
    missing = [s.server_id for s in servers if not s.secret.reveal()]
    if servers and not missing:
        names = ", ".join(s.server_id for s in servers)
        return Step("Signing secret configured", True, f"for {names}")
    return Step(
        "Signing secret configured",
        False,
        f"no secret for {', '.join(missing)}" if missing else "no server is configured",
        "Copy it from MMOLove's dashboard (Referrals > Secret), then run",
        "mmolove-relay setup",
    )


async def _test_event(records: Records, servers: Sequence[ServerConfig]) -> Step:
    verified: list[str] = []
    failed: list[str] = []
    never: list[str] = []
    # A test event MMOLove took through the relay (``setup`` sends one) proves its server too.
    through = await records.first_delivered("registered", test=True)
    for server in servers:
        at_mark, ok_mark = _proof_marks(server.server_id)
        at, ok = await records.mark(at_mark), await records.mark(ok_mark)
        if at is not None:
            (verified if ok else failed).append(f"{server.server_id} at {_utc(at)}")
        elif through is not None and through.server_id == server.server_id:
            verified.append(f"{server.server_id} at {_utc(through.finished_at)}, through the relay")
        else:
            never.append(server.server_id)
    title = "Test event verified by MMOLove"
    if servers and not failed and not never:
        return Step(title, True, "; ".join(verified))
    why = [f"failed for {s}" for s in failed] + [f"not yet sent for {s}" for s in never]
    return Step(
        title,
        False,
        "; ".join(why + [f"verified for {s}" for s in verified]),
        "Press Send test event below.",
    )


def _delivered(event: str, first: LedgerEntry | None, post: str) -> Step:
    title = f"First {event} delivered"
    if first is not None:
        player = f" for player {first.referee_identity}" if first.referee_identity else ""
        return Step(
            title,
            True,
            f"{_utc(first.finished_at)}{player} (server {first.server_id}, "
            f"server_event_id {first.server_event_id})",
        )
    when = (
        "When a player signs up through a referral link, the game posts"
        if event == "registered"
        else "When that player reaches the referral's goal, the game posts"
    )
    body = REGISTERED if event == "registered" else QUALIFIED
    return Step(
        title,
        False,
        f"MMOLove has not taken a {event} from this relay yet",
        f"{when} (the project's examples/ folder has it in your game's language):",
        f"{post} -d '{body}'",
    )


def _curl(request: web.Request, settings: Settings) -> str:
    """The POST that sends an event to this relay, as the page's reader can run it here."""
    listen = settings.listen
    url = (
        f"--unix-socket {listen.path} http://localhost/v1/events"
        if listen.path
        else f"http://{request.host}/v1/events"  # the listener this page came through
    )
    # The token's name, never its value: the page may be on a shared screen.
    auth = (
        " -H 'Authorization: Bearer <MMOLOVE_RELAY_INGEST_TOKEN>'"
        if settings.ingest_token is not None
        else ""
    )
    return f"curl -sS -X POST {url} -H 'Content-Type: application/json'{auth}"


async def _alert(request: web.Request, records: Records, configured: int) -> Step:
    title = "An alert target configured and proven"
    if not configured:
        return Step(
            title,
            False,
            "no alert target is configured",
            "Add [[alerts]] to the configuration (Discord, Slack or a webhook), reload, then run",
            "mmolove-relay alert-test",
        )
    proven = await records.mark(ALERT_MARK)
    targets = request.config_dict.get(TARGETS)
    if proven is None and targets is not None:
        # What the targets record: when each last took a message (a real alert or a test).
        took = [h.last_ok_at for h in targets.health if h.last_ok_at is not None]
        if took:
            proven = min(took)
            await records.set_mark(ALERT_MARK, proven)
    if proven is not None:
        return Step(title, True, f"a target took an alert at {_utc(proven)}")
    return Step(
        title,
        False,
        f"{configured} configured; none has taken an alert from the relay yet",
        "Press Send test alert below (mmolove-relay alert-test checks a target by hand, "
        "but from outside the relay).",
    )


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))

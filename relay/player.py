"""The player view: one referral's whole story, found by the player, and one verdict on it.

"Did player 7842's referral count, and if not, why?" The player's ``registered`` names the
token; every event for that token comes from the outbox or, once pruned, from the ledger.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from relay import utc
from relay.snapshot import DeliverySnapshot
from relay.store.contract import WAITING_FOR_REGISTERED, EventFilter, EventRecord, Outbox, Status
from relay.store.contract_records import LedgerEntry, RejectedFilter, Rejection

_MAX_EVENTS = 200  # one referral has a handful; this bounds a pathological token


@dataclass(frozen=True, slots=True)
class StoryEntry:
    """One event of the referral as the player view shows it."""

    id: int
    event: str
    server_event_id: str
    test: bool
    status: Status
    outcome: str | None
    referral_id: str | None
    state: str | None
    attempts: int
    created_at: float
    next_attempt_at: float | None  # pending only
    error: str | None  # why it died, or the last failure of a pending event
    source: str  # "outbox", or "ledger" once the body was pruned
    note: str = ""  # for a waiting event: what it waits for
    reported_by: str | None = None  # the source that read it from the game's database

    @classmethod
    def of_record(cls, r: EventRecord) -> StoryEntry:
        waiting = r.status in ("pending", "in_flight")
        return cls(
            r.id,
            r.event,
            r.server_event_id,
            r.test,
            r.status,
            r.outcome,
            r.referral_id,
            r.state,
            r.attempts,
            r.created_at,
            r.next_attempt_at if waiting else None,
            r.last_error,
            "outbox",
            reported_by=r.reported_by,
        )

    @classmethod
    def of_ledger(cls, e: LedgerEntry) -> StoryEntry:
        return cls(
            e.event_id,
            e.event,
            e.server_event_id,
            e.test,
            "delivered",
            e.outcome,
            e.referral_id,
            e.state,
            e.attempts,
            e.created_at,
            None,
            None,
            "ledger",
            reported_by=e.reported_by,
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The story's last line: counted (True), not counted (False) or pending (None)."""

    counted: bool | None
    sentence: str
    fix: str | None = None  # the command that fixes it, where one does


@dataclass(frozen=True, slots=True)
class PlayerStory:
    referee_identity: str
    server_id: str | None
    token: str | None
    events: tuple[StoryEntry, ...]
    rejected: tuple[Rejection, ...]
    other_tokens: tuple[str, ...]  # further referrals naming this player (other servers)
    verdict: Verdict

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["rejected"] = [r.as_json() for r in self.rejected]
        return out


async def story(
    outbox: Outbox,
    view: DeliverySnapshot,
    referee_identity: str,
    *,
    server_id: str | None = None,
    now: float | None = None,
) -> PlayerStory:
    """Find the player's latest referral and tell it, oldest event first."""
    now = time.time() if now is None else now
    regs = await outbox.select(
        EventFilter(event="registered", player=referee_identity, server_id=server_id), 20
    )
    anchors = [(r.id, r.server_id, r.token, r.test) for r in regs if r.referee_identity]
    ledgered = await outbox.records.ledger(referee_identity=referee_identity)
    anchors += [
        (e.event_id, e.server_id, e.token, e.test)
        for e in ledgered
        if e.event == "registered" and server_id in (None, e.server_id)
    ]
    # The latest real registration; a test one only when there is nothing else.
    anchors.sort(key=lambda a: (not a[3], a[0]))
    token = anchors[-1][2] if anchors else None
    server = anchors[-1][1] if anchors else server_id
    entries: dict[int, StoryEntry] = {}
    if token is not None:
        records = await outbox.select(EventFilter(token=token, server_id=server), _MAX_EVENTS)
        entries = {r.id: StoryEntry.of_record(r) for r in records}
        for e in await outbox.records.ledger(token=token):
            if e.server_id == server:
                entries.setdefault(e.event_id, StoryEntry.of_ledger(e))
    rejected = {
        r.id: r
        for where in (
            RejectedFilter(referee_identity=referee_identity),
            RejectedFilter(token=token) if token else None,
        )
        if where is not None
        for r in await outbox.records.rejections(where, 20)
    }
    events = _noted(tuple(entries[i] for i in sorted(entries)), server, view, now)
    found = tuple(sorted(rejected.values(), key=lambda r: -r.id))
    return PlayerStory(
        referee_identity=referee_identity,
        server_id=server,
        token=token,
        events=events,
        rejected=found,
        other_tokens=tuple(sorted({a[2] for a in anchors} - {token})) if token else (),
        verdict=verdict(referee_identity, server, events, found, view, now),
    )


def verdict(
    player: str,
    server_id: str | None,
    events: tuple[StoryEntry, ...],
    rejected: tuple[Rejection, ...],
    view: DeliverySnapshot,
    now: float,
) -> Verdict:
    """One sentence: counted, pending and why, or not counted and why, with the fix."""
    real = [e for e in events if not e.test]
    if not real:
        if rejected:
            latest = rejected[0]
            return Verdict(
                False,
                f"Not counted: the relay never stored a registered event for {player}; "
                f"{len(rejected)} input(s) naming this player were rejected (latest: "
                f"{latest.http_status} {latest.code}: {latest.message}). Fix the game "
                "server's event and send it again.",
                "mmolove-relay rejected",
            )
        return Verdict(
            False,
            f"Not counted: the relay has no event for {player}: the game server never sent "
            "its registered event, or it finished before the ledger's retention.",
        )
    for e in real:
        if e.status == "dead":
            return Verdict(
                False,
                f"Not counted: {e.event} #{e.id} is dead ({e.outcome}): {e.error}",
                f"mmolove-relay retry {e.id}",
            )
    waiting = next((e for e in real if e.status in ("pending", "in_flight")), None)
    if waiting is not None:
        return _pending(waiting, real, server_id, view, now)
    first = real[0]
    if first.event == "registered" and first.outcome == "ignored":
        return Verdict(
            False,
            "Not counted: MMOLove ignored the registration as a first-touch conflict: "
            "another referrer registered this player first. Nothing to fix.",
        )
    last = real[-1]
    states = [e for e in real if e.state]
    state = f"referral {states[-1].referral_id} in state {states[-1].state}" if states else "it"
    return Verdict(
        True,
        f"Counted: MMOLove has {state}; the last event, {last.event} #{last.id}, was "
        f"{last.outcome}.",
    )


def _pending(
    e: StoryEntry,
    real: list[StoryEntry],
    server_id: str | None,
    view: DeliverySnapshot,
    now: float,
) -> Verdict:
    earlier = [p for p in real if p.id < e.id and p.status != "delivered"]
    what = f"{e.event} #{e.id}"
    if server_id is not None and server_id in view.paused:
        return Verdict(
            None,
            f"Pending: {what} is held because deliveries for server {server_id} are paused: "
            f"{view.paused[server_id]}.",
            "mmolove-relay test (then fix the secret and: systemctl reload mmolove-relay)",
        )
    if e.status == "in_flight":
        return Verdict(None, f"Pending: {what} is being sent to MMOLove now.")
    if view.mmolove_failing:
        until = view.circuit_open_until
        when = f" until {utc.stamp(until)}" if until else ""
        return Verdict(
            None,
            f"Pending: MMOLove is failing, so the circuit is open{when}; {what} is sent when "
            "it recovers, by itself.",
        )
    if earlier:
        return Verdict(None, f"Pending: {what} waits behind {earlier[0].event} #{earlier[0].id}.")
    due = e.next_attempt_at or now
    if e.attempts and due > now:
        return Verdict(
            None,
            f"Pending: {what} is backing off after {e.outcome or 'a failure'} "
            f"({e.error or 'no answer'}); next attempt at {utc.stamp(due)}.",
            f"mmolove-relay retry {e.id}",
        )
    return Verdict(None, f"Pending: {what} is due now and will be sent shortly.")


async def waits_for(outbox: Outbox, view: DeliverySnapshot, record: EventRecord, now: float) -> str:
    """What one pending event waits for, as its referral's story notes it ("" if nothing)."""
    if record.status != "pending":
        return ""
    same = await outbox.select(
        EventFilter(token=record.token, server_id=record.server_id), _MAX_EVENTS
    )
    entries = tuple(StoryEntry.of_record(r) for r in sorted(same, key=lambda r: r.id))
    noted = _noted(entries, record.server_id, view, now)
    return next((e.note for e in noted if e.id == record.id), "")


def _noted(
    events: tuple[StoryEntry, ...], server_id: str | None, view: DeliverySnapshot, now: float
) -> tuple[StoryEntry, ...]:
    """Say what each waiting event waits for: a pause, the circuit, an earlier event, its
    registered, or its backoff."""
    out = []
    for e in events:
        earlier = [p for p in events if p.id < e.id and not p.test and p.status != "delivered"]
        if e.status != "pending":
            note = ""
        elif server_id in view.paused:
            note = f"held: server {server_id} is paused"
        elif view.mmolove_failing:
            until = view.circuit_open_until
            note = "held: the circuit to MMOLove is open" + (
                f" until {utc.stamp(until)}" if until else ""
            )
        elif earlier and not e.test:
            note = f"waits behind #{earlier[0].id}"
        elif e.outcome == WAITING_FOR_REGISTERED:
            note = "waits for a registered of its token to be delivered"
        elif e.next_attempt_at and e.next_attempt_at > now:
            note = f"next attempt at {utc.stamp(e.next_attempt_at)}"
        else:
            note = "due now"
        out.append(replace(e, note=note))
    return tuple(out)

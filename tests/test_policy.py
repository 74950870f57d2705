"""The dispatcher's policy, from a table: every answer MMOLove documents, and the ones real
networks add, mapped to the event's outcome and retry time, the breaker's move and the
server's pause, resume or next probe.

Each row goes through the sender's ``classify`` (status, body, headers) or names the error
the sender raises for a failure without an answer (timeout, reset, DNS, TLS), then through
``policy.verdict``; jitter is fixed at half the backoff ceiling, so retry times are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from relay import policy
from relay.errors import DeliveryError, RetryableDelivery, SenderPaused
from relay.policy import BreakerMove, ServerFacts, Timing, Verdict
from relay.sender import Delivered, classify
from relay.store.contract import EventRecord, Outcome, Status

NOW = 1_750_000_000.0
TIMING = Timing(
    backoff_base_s=2.0,
    backoff_cap_s=600.0,
    retry_after_cap_s=3600.0,
    pause_probe_s=60.0,
    max_age_s=7 * 24 * 3600.0,
)
BACKOFF_S = 4.0  # attempts=3: ceiling min(600, 2·2²) = 8, halved by the jitter below
PAUSED = ServerFacts(probing=False, paused=True)
PROBE = ServerFacts(probing=True, paused=True)


def half(ceiling_s: float) -> float:
    return ceiling_s / 2


def answer(status: int, body: str = "", **headers: str) -> Delivered | DeliveryError:
    """What the sender makes of one HTTP answer."""
    try:
        return classify(
            status, body, headers.get("date"), headers.get("retry_after"), headers.get("location")
        )
    except DeliveryError as exc:
        return exc


def skewed_401(skew_s: float) -> SenderPaused:
    """A 401 whose Date header put MMOLove's clock ``skew_s`` from ours."""
    error = answer(401, '{"error":"bad_signature"}')
    assert isinstance(error, SenderPaused)
    error.clock_skew_s = skew_s
    return error


def record(attempts: int = 3, created_at: float = NOW - 100, **fields: object) -> EventRecord:
    values: dict[str, object] = {
        "id": 7,
        "server_id": "srv-1",
        "token": "mmref-1",
        "event": "qualified",
        "server_event_id": "qual-1",
        "test": False,
        "status": "in_flight",
        "outcome": None,
        "attempts": attempts,
        "created_at": created_at,
        "next_attempt_at": NOW + 30,
        "last_error": None,
        "last_http_status": None,
        "response": None,
        "referral_id": None,
        "state": None,
        "finished_at": None,
        "replayed_at": None,
        "body": b"{}",
    }
    return EventRecord(**(values | fields))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Expect:
    """A verdict with times relative to NOW; ``pause`` is (probe in s, clock offset, re-read)."""

    status: Status
    outcome: str
    retry_in_s: float | None  # None unless pending
    breaker: BreakerMove
    hold_s: float | None = None
    resume: bool = False
    pause: tuple[float, float | None, bool] | None = None
    probe_in_s: float | None = None
    referral: tuple[str | None, str | None] = (None, None)  # referral_id, state kept


def seen(v: Verdict) -> Expect:
    o = v.outcome
    pause = None
    if v.pause is not None:
        pause = (v.pause.probe_at - NOW, v.pause.clock_offset_s, v.pause.reread_secret)
    return Expect(
        status=o.status,
        outcome=o.outcome or "",
        retry_in_s=o.next_attempt_at - NOW if o.status == "pending" else None,
        breaker=v.breaker,
        hold_s=v.breaker_hold_s,
        resume=v.resume,
        pause=pause,
        probe_in_s=None if v.probe_at is None else v.probe_at - NOW,
        referral=(o.referral_id, o.state),
    )


def delivered(outcome: str, **more: object) -> Expect:
    return Expect("delivered", outcome, None, "success", **more)  # type: ignore[arg-type]


def dead(outcome: str, **more: object) -> Expect:
    return Expect("dead", outcome, None, "success", **more)  # type: ignore[arg-type]


def paused(
    outcome: str, probe_in_s: float = 60.0, offset: float | None = None, reread: bool = False
) -> Expect:
    """Held pending at once (the pause holds it back); MMOLove is not failing."""
    return Expect("pending", outcome, 0.0, "success", pause=(probe_in_s, offset, reread))


def retry(outcome: str, in_s: float = BACKOFF_S, **more: object) -> Expect:
    return Expect("pending", outcome, in_s, "failure", **more)  # type: ignore[arg-type]


FAR_FUTURE = "Fri, 31 Dec 9999 23:59:59 GMT"
ROWS: list[tuple[str, Delivered | DeliveryError, ServerFacts, Expect]] = [
    # MMOLove's documented answers
    (
        "200 accepted keeps referral_id and state",
        answer(200, '{"ok":true,"referral_id":"r-9","state":"registered"}'),
        ServerFacts(),
        delivered("accepted", referral=("r-9", "registered")),
    ),
    (
        "200 duplicate",
        answer(200, '{"ok":true,"duplicate":true}'),
        ServerFacts(),
        delivered("duplicate"),
    ),
    (
        "200 first-touch conflict",
        answer(200, '{"ok":true,"ignored":"first_touch_conflict"}'),
        ServerFacts(),
        delivered("ignored"),
    ),
    ("200 test event", answer(200, '{"ok":true,"test":true}'), ServerFacts(), delivered("test")),
    ("400", answer(400, '{"error":"body is not valid JSON"}'), ServerFacts(), dead("bad_request")),
    (
        "401 re-reads the secret",
        answer(401, '{"error":"bad_signature"}'),
        ServerFacts(),
        paused("unauthorized", reread=True),
    ),
    (
        "401 with a clock 120 s ahead",
        skewed_401(120.4),
        ServerFacts(),
        paused("unauthorized", 0.0, 120),
    ),
    (
        "401 with a clock 90 s behind",
        skewed_401(-90.0),
        ServerFacts(),
        paused("unauthorized", 0.0, -90),
    ),
    (
        "401 with a skew already corrected",
        skewed_401(125.0),
        ServerFacts(clock_offset_s=120.0),
        paused("unauthorized", reread=True),
    ),
    ("404", answer(404, '{"error":"unknown token"}'), ServerFacts(), dead("not_found")),
    (
        "422",
        answer(422, '{"error":"illegal transition"}'),
        ServerFacts(),
        dead("illegal_transition"),
    ),
    ("500", answer(500, '{"error":"oops"}'), ServerFacts(), retry("http_500")),
    # undocumented, from real networks
    ("301", answer(301, location="https://mmolove.gg/api"), ServerFacts(), paused("redirect")),
    ("307", answer(307), ServerFacts(), paused("redirect")),
    ("308", answer(308), ServerFacts(), paused("redirect")),
    ("403 from a proxy", answer(403, "forbidden"), ServerFacts(), paused("unexpected_status")),
    ("405", answer(405), ServerFacts(), paused("unexpected_status")),
    ("408", answer(408), ServerFacts(), retry("http_408")),
    ("429 without Retry-After", answer(429), ServerFacts(), retry("http_429")),
    (
        "429 Retry-After: 30",
        answer(429, retry_after="30"),
        ServerFacts(),
        retry("http_429", 30.0, hold_s=30.0),
    ),
    (
        "429 Retry-After shorter than the backoff",
        answer(429, retry_after="1"),
        ServerFacts(),
        retry("http_429", BACKOFF_S, hold_s=1.0),
    ),
    (
        "429 Retry-After of three days is capped",
        answer(429, retry_after="259200"),
        ServerFacts(),
        retry("http_429", 3600.0, hold_s=3600.0),
    ),
    (
        "429 Retry-After as a far HTTP date is capped",
        answer(429, retry_after=FAR_FUTURE),
        ServerFacts(),
        retry("http_429", 3600.0, hold_s=3600.0),
    ),
    (
        "429 unreadable Retry-After",
        answer(429, retry_after="soon"),
        ServerFacts(),
        retry("http_429"),
    ),
    ("502", answer(502), ServerFacts(), retry("http_502")),
    ("503", answer(503), ServerFacts(), retry("http_503")),
    (
        "503 Retry-After: 120",
        answer(503, retry_after="120"),
        ServerFacts(),
        retry("http_503", 120.0, hold_s=120.0),
    ),
    ("504", answer(504), ServerFacts(), retry("http_504")),
    (
        "timeout",
        RetryableDelivery("timeout", "MMOLove did not answer in time"),
        ServerFacts(),
        retry("timeout"),
    ),
    (
        "refused connection",
        RetryableDelivery("connect", "cannot connect"),
        ServerFacts(),
        retry("connect"),
    ),
    ("reset", RetryableDelivery("network", "connection reset"), ServerFacts(), retry("network")),
    ("DNS", RetryableDelivery("dns", "cannot resolve"), ServerFacts(), retry("dns")),
    ("TLS", RetryableDelivery("tls", "not trusted"), ServerFacts(), retry("tls")),
    (
        "a relay bug while sending",
        RetryableDelivery("internal", "failed"),
        ServerFacts(),
        retry("internal"),
    ),
    # impostor 2xx: no proof of delivery
    (
        "200 HTML page",
        answer(200, "<html>captive portal</html>"),
        ServerFacts(),
        paused("unexpected_answer"),
    ),
    ("200 ok false", answer(200, '{"ok":false}'), ServerFacts(), paused("unexpected_answer")),
    ("201 ok true", answer(201, '{"ok":true}'), ServerFacts(), paused("unexpected_answer")),
    ("204 empty", answer(204), ServerFacts(), paused("unexpected_answer")),
    # the probe of a paused server, and a paused server's event that was not its probe
    (
        "probe delivered resumes",
        answer(200, '{"ok":true}'),
        PROBE,
        delivered("accepted", resume=True),
    ),
    ("probe refused resumes", answer(404), PROBE, dead("not_found", resume=True)),
    ("probe failing plans the next probe", answer(500), PROBE, retry("http_500", probe_in_s=60.0)),
    ("probe paused again", answer(401), PROBE, paused("unauthorized", reread=True)),
    ("not a probe: no resume", answer(200, '{"ok":true}'), PAUSED, delivered("accepted")),
]


@pytest.mark.parametrize(
    ("result", "server", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
def test_verdict_table(
    result: Delivered | DeliveryError, server: ServerFacts, expected: Expect
) -> None:
    assert seen(policy.verdict(result, record(), server, TIMING, NOW, jitter=half)) == expected


def test_table_covers_every_documented_status() -> None:
    statuses = {r[1].http_status for r in ROWS}
    assert {200, 400, 401, 404, 422, 500, 408, 429, 502, 503, 504} <= statuses
    assert any(300 <= (s or 0) < 400 for s in statuses)


@pytest.mark.parametrize(
    ("attempts", "retry_in_s"), [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (40, 300.0)]
)
def test_backoff_doubles_per_attempt_up_to_the_cap(attempts: int, retry_in_s: float) -> None:
    v = policy.verdict(answer(500), record(attempts), ServerFacts(), TIMING, NOW, jitter=half)
    assert v.outcome.next_attempt_at == NOW + retry_in_s


def test_jitter_is_given_the_ceiling_and_its_delay_is_used() -> None:
    asked: list[float] = []

    def jitter(ceiling_s: float) -> float:
        asked.append(ceiling_s)
        return 0.25

    v = policy.verdict(answer(502), record(4), ServerFacts(), TIMING, NOW, jitter=jitter)
    assert (asked, v.outcome.next_attempt_at) == ([16.0], NOW + 0.25)


@pytest.mark.parametrize(
    ("result", "max_age_left_s"),
    [(answer(500), 3.0), (answer(429, retry_after="600"), 100.0), (answer(401), -5.0)],
    ids=["backoff", "retry-after", "pause"],
)
def test_no_retry_is_planned_past_max_age(
    result: Delivered | DeliveryError, max_age_left_s: float
) -> None:
    """Housekeeping dead-letters it as expired then, not a retry later."""
    created = NOW - TIMING.max_age_s + max_age_left_s
    v = policy.verdict(result, record(created_at=created), ServerFacts(), TIMING, NOW, jitter=half)
    assert v.outcome.next_attempt_at == NOW + max_age_left_s


def test_max_age_counts_from_the_operators_replay() -> None:
    old = record(created_at=NOW - 30 * 24 * 3600, replayed_at=NOW - 10)
    v = policy.verdict(answer(500), old, ServerFacts(), TIMING, NOW, jitter=half)
    assert v.outcome.next_attempt_at == NOW + BACKOFF_S


@pytest.mark.parametrize(("name", "result", "server", "expected"), ROWS, ids=[r[0] for r in ROWS])
def test_every_failure_is_told_to_the_server_view(
    name: str, result: Delivered | DeliveryError, server: ServerFacts, expected: Expect
) -> None:
    """Its last error is the attempt's error, answer and status; a delivery leaves it."""
    v = policy.verdict(result, record(), server, TIMING, NOW, jitter=half)
    if isinstance(result, Delivered):
        assert v.last_error is None
        assert v.outcome.response == result.response
        return
    assert v.last_error == v.outcome.error
    assert (v.outcome.http_status, v.outcome.response) == (
        result.http_status,
        result.response or None,
    )
    if v.pause is None:
        assert v.last_error == str(result)
    else:
        assert v.pause.reason.startswith(str(result))


FRESH = policy.Pause(
    "MMOLove rejected the signature (401 bad_signature)", NOW + 60, reread_secret=True
)


@pytest.mark.parametrize(
    ("changed", "failure", "probe_in_s", "says"),
    [
        (True, None, 0.0, "the secret file changed, probing with the new secret"),
        (False, None, 60.0, "fix it and send SIGHUP"),
        (False, "secret file is empty", 60.0, "re-reading the secret failed: secret file is empty"),
    ],
    ids=["changed", "unchanged", "unreadable"],
)
def test_a_reread_secret_probes_at_once_only_when_it_changed(
    changed: bool, failure: str | None, probe_in_s: float, says: str
) -> None:
    after = policy.secret_reread(FRESH, NOW, changed=changed, failure=failure)
    assert after.probe_at == NOW + probe_in_s
    assert after.reason.startswith(FRESH.reason)
    assert after.reason.endswith(says)


ILLEGAL = Outcome(status="dead", outcome="illegal_transition", error="MMOLove refused the event")
STARTED = NOW - 1


@pytest.mark.parametrize(
    ("event", "test", "overtook"),
    [
        ("qualified", False, True),
        ("reversed", False, True),
        ("registered", False, False),
        ("qualified", True, False),
    ],
)
def test_only_a_later_real_event_may_have_overtaken_its_registered(
    event: str, test: bool, overtook: bool
) -> None:
    assert policy.may_have_overtaken(record(event=event, test=test), ILLEGAL) is overtook
    assert not policy.may_have_overtaken(record(event=event), replace(ILLEGAL, outcome="not_found"))


@pytest.mark.parametrize(
    ("registered_at", "status", "retry_in_s"),
    [
        (None, "pending", TIMING.max_age_s - 100),  # none yet: wait until max_age_s
        (STARTED + 0.5, "pending", 0.0),  # delivered while this one was on its way: at once
        (STARTED - 0.5, "dead", None),  # MMOLove had it before: really illegal
    ],
    ids=["no-registered", "registered-meanwhile", "registered-before"],
)
def test_an_illegal_transition_waits_for_its_registered(
    registered_at: float | None, status: Status, retry_in_s: float | None
) -> None:
    held = policy.hold_for_registered(
        record(),
        ILLEGAL,
        registered_delivered_at=registered_at,
        started=STARTED,
        now=NOW,
        max_age_s=TIMING.max_age_s,
    )
    assert held.status == status
    if retry_in_s is None:
        assert held == ILLEGAL
    else:
        assert held.outcome == "waiting_for_registered"
        assert held.next_attempt_at == NOW + retry_in_s
        assert "dead-lettered as orphaned at" in (held.error or "")

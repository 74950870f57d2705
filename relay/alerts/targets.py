"""Alert targets: Discord, Slack and a generic JSON webhook, their formats and their sending.

Each target has its own queue and task and the alerts share one HTTP client of their own,
never the delivery pool, so a target that is down, slow or throttling delays only its own
messages. Retries are bounded (tenacity) and honour a 429's ``retry_after``. A message may
quote an upstream's words (a captive portal's 401 page): the payloads make them inert.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import aiohttp
import structlog
import tenacity
from aiohttp import web

from relay.config.values import AlertTarget, Secret, mask_url
from relay.metrics import Metrics
from relay.signing import signature_header

log = structlog.get_logger("relay.alerts")
DISCORD_MAX_CHARS = 2000  # Discord refuses longer content
SIGNATURE_HEADER = "X-MMOLove-Relay-Signature"
_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)
_ATTEMPTS = 4
_RETRY_AFTER_CAP_S = 60.0
_QUEUE_MAX = 50  # unsent messages per target; past it the oldest are dropped (and logged)
# Slack reads <...> as a link, a mention (<!channel>) or a user; its documented escapes.
_SLACK_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


@dataclass(frozen=True, slots=True)
class Message:
    """One alert: a condition's transition (firing, reminder, resolved) or a test."""

    key: str  # the condition and its subject, e.g. paused:srv-1
    status: str  # firing, reminder, resolved or test
    text: str  # the whole message: the server, the cause, since when, the command to run
    since: float | None
    at: float


@dataclass(frozen=True, slots=True)
class Sent:
    """How one target answered."""

    target: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"target": self.target, "ok": self.ok, "detail": self.detail}


class TargetFailed(Exception):
    """A target did not take a message; ``retry_after_s`` when it said when to come back."""

    def __init__(self, detail: str, *, retry_after_s: float | None = None, final: bool = False):
        super().__init__(detail)
        self.retry_after_s = retry_after_s
        self.final = final  # a 4xx other than 429: retrying cannot help


def quoted(text: str) -> str:
    """``text`` as one line of inline code (no Markdown, mention or link inside takes effect)
    that the text cannot close: its own backticks become the look-alike U+02CB."""
    return "`" + " ".join(text.replace("`", "\u02cb").split()) + "`"


def payload(target: AlertTarget, message: Message) -> bytes:
    """The body each kind of target documents: Discord ``content``, Slack ``text``, or ours."""
    body: dict[str, Any]
    if target.kind == "discord":
        text = message.text
        if len(text) > DISCORD_MAX_CHARS:
            text = text[: DISCORD_MAX_CHARS - 1] + "…"
        # No mention in the text pings anyone, whoever wrote it (@everyone, @here, <@id>).
        body = {"content": text, "username": "mmolove-relay", "allowed_mentions": {"parse": []}}
    elif target.kind == "slack":
        body = {"text": message.text.translate(_SLACK_ESCAPES)}
    else:
        body = {
            "alert": message.key,
            "status": message.status,
            "text": message.text,
            "since": message.since,
            "at": message.at,
        }
    return json.dumps(body, ensure_ascii=False).encode()


async def post(http: aiohttp.ClientSession, target: AlertTarget, message: Message) -> str:
    """Send once; ``TargetFailed`` says why not. Errors never show the URL (it is a secret)."""
    body = payload(target, message)
    headers = {"Content-Type": "application/json"}
    if target.secret is not None:
        headers[SIGNATURE_HEADER] = signature_header(body, target.secret.reveal(), int(time.time()))
    try:
        # Never followed, like MMOLove's: a redirect would repost the message (and the
        # signature) wherever the target, or whoever answers for it, points.
        async with http.post(
            target.url.reveal(), data=body, headers=headers, allow_redirects=False
        ) as resp:
            text = " ".join((await resp.text())[:200].split())  # one line in status and logs
            if resp.status < 300:
                return f"{resp.status}"
            if resp.status < 400:
                raise TargetFailed(
                    f"{resp.status} redirect to {_location(target, resp)}; alerts do not "
                    "follow redirects: set the target's URL to the final address",
                    final=True,
                )
            if resp.status == 429:
                raise TargetFailed("429 rate limited", retry_after_s=_retry_after(resp, text))
            raise TargetFailed(f"{resp.status} {text}".strip(), final=resp.status < 500)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TargetFailed(f"unreachable ({type(exc).__name__})") from exc


def _location(target: AlertTarget, resp: aiohttp.ClientResponse) -> str:
    """Where a redirect points; on the target's own host it may carry the URL's token, so
    it is masked like the target's URL, elsewhere only its credentials are."""
    location = resp.headers.get("Location")
    if not location:
        return "(no Location)"
    url = target.url.reveal()
    absolute = urljoin(url, location)
    if urlsplit(absolute).hostname == urlsplit(url).hostname:
        return replace(target, url=Secret(absolute)).masked_url
    return mask_url(absolute)


def _retry_after(resp: aiohttp.ClientResponse, text: str) -> float:
    """Discord puts ``retry_after`` (seconds) in the JSON body; others use the header."""
    try:
        value = float(json.loads(text).get("retry_after"))
    except (ValueError, TypeError, AttributeError):
        try:
            value = float(resp.headers.get("Retry-After", "1"))
        except ValueError:
            value = 1.0
    return min(max(value, 0.0), _RETRY_AFTER_CAP_S)


def _wait(state: tenacity.RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, TargetFailed) and error.retry_after_s is not None:
        return error.retry_after_s
    return float(min(2.0 ** (state.attempt_number - 1), 30.0))


async def deliver(
    http: aiohttp.ClientSession, target: AlertTarget, message: Message, health: TargetHealth
) -> str:
    """Send with bounded retries: a few attempts, backing off, honouring ``retry_after``;
    ``health`` follows every attempt, so ``status`` shows a target retrying as it happens."""

    async def attempt() -> str:
        try:
            detail = await post(http, target, message)
        except TargetFailed as exc:
            health.failed(str(exc))
            raise
        health.succeeded()
        return detail

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(_ATTEMPTS),
        wait=_wait,
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, TargetFailed) and not e.final),
        reraise=True,
    )
    try:
        detail: str = await retrying(attempt)
    except TargetFailed:
        health.state = "failing"
        raise
    return detail


# never: nothing sent yet; retrying: the last attempt failed and another is planned;
# failing: the last message was given up on.
TargetState = Literal["never", "ok", "retrying", "failing"]


@dataclass
class TargetHealth:
    """What ``status`` shows of a target: its state and its last answer, as they are."""

    target: str
    kind: str
    state: TargetState = "never"
    last_attempt_at: float | None = None
    last_ok_at: float | None = None  # when the target last took a message
    last_error: str | None = None  # the last failure, until a message goes through

    def failed(self, error: str) -> None:
        self.state, self.last_error, self.last_attempt_at = "retrying", error, time.time()

    def succeeded(self) -> None:
        self.state, self.last_error = "ok", None
        self.last_attempt_at = self.last_ok_at = time.time()

    def as_json(self) -> dict[str, Any]:
        ok = None if self.state == "never" else self.state == "ok"  # the older field
        return {**asdict(self), "ok": ok}


class Targets:
    """Queues messages per target and sends them in tasks of their own."""

    def __init__(self, targets: tuple[AlertTarget, ...], metrics: Metrics) -> None:
        self._targets = targets
        self._metrics = metrics
        self._queues = [collections.deque[Message](maxlen=_QUEUE_MAX) for _ in targets]
        self._ready = [asyncio.Event() for _ in targets]
        self.health = [TargetHealth(t.label, t.kind) for t in targets]

    def send(self, message: Message) -> None:
        """Queue for every target; returns at once."""
        for queue, ready in zip(self._queues, self._ready, strict=True):
            if len(queue) == queue.maxlen:
                log.warning("alert.dropped", alert=queue[0].key, status=queue[0].status)
            queue.append(message)
            ready.set()

    async def run(self) -> None:
        """One task per target until cancelled; the client is closed on the way out."""
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as http, asyncio.TaskGroup() as group:
            for index in range(len(self._targets)):
                group.create_task(self._serve(http, index), name=f"alert-target-{index}")

    async def _serve(self, http: aiohttp.ClientSession, index: int) -> None:
        target, queue, ready = self._targets[index], self._queues[index], self._ready[index]
        health = self.health[index]
        while True:
            await ready.wait()
            ready.clear()
            while queue:
                message = queue.popleft()
                try:
                    await deliver(http, target, message, health)
                except TargetFailed as exc:
                    self._metrics.alerts.labels(target.kind, "failed").inc()
                    log.error(
                        "alert.failed", target=target.label, alert=message.key, error=str(exc)
                    )
                else:
                    self._metrics.alerts.labels(target.kind, "sent").inc()
                    log.info(
                        "alert.sent", target=target.label, alert=message.key, status=message.status
                    )


TARGETS = web.AppKey("alert_targets", Targets)


def test_message(now: float) -> Message:
    return Message(
        key="test",
        status="test",
        text=f"✅ mmolove-relay on {socket.gethostname()}: a test alert. This target works.",
        since=None,
        at=now,
    )


async def send_test(targets: tuple[AlertTarget, ...]) -> list[Sent]:
    """``alert-test``: one test message to each target, each answer reported."""
    message = test_message(time.time())
    results = []
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as http:
        for target in targets:
            try:  # once, no retries: the operator wants each target's own answer now
                detail = await post(http, target, message)
            except TargetFailed as exc:
                results.append(Sent(target.label, False, str(exc)))
            else:
                results.append(Sent(target.label, True, f"answered {detail}"))
    return results

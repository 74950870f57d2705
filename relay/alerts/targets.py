"""Alert targets: Discord, Slack and a generic JSON webhook, their formats and their sending.

Each target has its own queue and task and the alerts share one HTTP client of their own,
never the delivery pool, so a target that is down, slow or throttling delays only its own
messages. Retries are bounded (tenacity) and honour a 429's ``retry_after``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
import tenacity
from aiohttp import web

from relay.config.values import AlertTarget
from relay.metrics import Metrics
from relay.signing import signature_header

log = structlog.get_logger("relay.alerts")
DISCORD_MAX_CHARS = 2000  # Discord refuses longer content
SIGNATURE_HEADER = "X-MMOLove-Relay-Signature"
_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=5)
_ATTEMPTS = 4
_RETRY_AFTER_CAP_S = 60.0
_QUEUE_MAX = 50  # unsent messages per target; past it the oldest are dropped (and logged)


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


def payload(target: AlertTarget, message: Message) -> bytes:
    """The body each kind of target documents: Discord ``content``, Slack ``text``, or ours."""
    body: dict[str, Any]
    if target.kind == "discord":
        text = message.text
        if len(text) > DISCORD_MAX_CHARS:
            text = text[: DISCORD_MAX_CHARS - 1] + "…"
        body = {"content": text, "username": "mmolove-relay"}
    elif target.kind == "slack":
        body = {"text": message.text}
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
        async with http.post(target.url.reveal(), data=body, headers=headers) as resp:
            text = (await resp.text())[:200]
            if resp.status < 300:
                return f"{resp.status}"
            if resp.status == 429:
                raise TargetFailed("429 rate limited", retry_after_s=_retry_after(resp, text))
            raise TargetFailed(f"{resp.status} {text}".strip(), final=resp.status < 500)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TargetFailed(f"unreachable ({type(exc).__name__})") from exc


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


async def deliver(http: aiohttp.ClientSession, target: AlertTarget, message: Message) -> str:
    """Send with bounded retries: a few attempts, backing off, honouring ``retry_after``."""
    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(_ATTEMPTS),
        wait=_wait,
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, TargetFailed) and not e.final),
        reraise=True,
    )
    detail: str = await retrying(post, http, target, message)
    return detail


@dataclass
class TargetHealth:
    """What ``status`` shows of a target."""

    target: str
    kind: str
    ok: bool | None = None  # None: nothing sent yet
    last_error: str | None = None
    last_sent_at: float | None = None


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
                    await deliver(http, target, message)
                except TargetFailed as exc:
                    health.ok, health.last_error = False, str(exc)
                    self._metrics.alerts.labels(target.kind, "failed").inc()
                    log.error(
                        "alert.failed", target=target.label, alert=message.key, error=str(exc)
                    )
                else:
                    health.ok, health.last_error = True, None
                    health.last_sent_at = time.time()
                    self._metrics.alerts.labels(target.kind, "sent").inc()
                    log.info(
                        "alert.sent", target=target.label, alert=message.key, status=message.status
                    )


TARGETS = web.AppKey("alert_targets", Targets)


async def send_test(targets: tuple[AlertTarget, ...]) -> list[Sent]:
    """``alert-test``: one test message to each target, each answer reported."""
    now = time.time()
    message = Message(
        key="test",
        status="test",
        text=f"✅ mmolove-relay on {socket.gethostname()}: a test alert. This target works.",
        since=None,
        at=now,
    )
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

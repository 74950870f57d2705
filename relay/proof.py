"""A signed test event sent straight to MMOLove: the proof that a server's id, secret, ``kid``,
endpoint and clock are right, and when they are not, which one to fix.

``mmolove-relay test`` prints it; ``doctor``, ``setup``, ``secret set`` and the console's
"Send test event" button use the same proof, so each names a failure the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from relay.config.settings import Settings
from relay.config.values import ServerConfig
from relay.errors import DeliveryError, SenderPaused
from relay.events import validate
from relay.signing import signature_header

TEST_TOKEN = "relay-test"  # noqa: S105 - the test event's token, not a secret
# MMOLove refuses a signature more than 5 minutes off its clock: past 60 s of skew the clock
# is drifting and worth a warning, past 240 s the next minute of drift fails every event.
CLOCK_WARN_S = 60.0
CLOCK_FAIL_S = 240.0
# The sender's reasons for no answer at all: the endpoint cannot be reached from here.
UNREACHABLE = ("dns", "connect", "network", "timeout", "tls")


@dataclass(frozen=True, slots=True)
class Proof:
    """What MMOLove answered a server's test event, and the fix when it is not a pass."""

    server_id: str
    ok: bool
    message: str  # MMOLove's answer, or why there was none
    fix: str | None  # one sentence: what to change; None when ok
    http_status: int | None
    reason: str | None  # the sender's stable label (``unauthorized``, ``dns``, ...)
    clock_skew_s: float | None  # MMOLove's clock minus ours, from its Date header

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def prove(
    settings: Settings, servers: Sequence[ServerConfig], *, endpoint: str | None = None
) -> list[Proof]:
    """Send one signed ``test: true`` event per server to ``endpoint`` (default: the configured
    one), sequentially, through one short-lived client."""
    from relay.sender import Sender  # aiohttp: imported when a proof is asked for

    sender = Sender(
        endpoint or settings.endpoint,
        concurrency=1,
        connect_timeout_s=settings.connect_timeout_s,
        send_timeout_s=settings.send_timeout_s,
        ca_file=settings.ca_file,
    )
    try:
        return [await _prove_one(sender, server) for server in servers]
    finally:
        await sender.close()


async def _prove_one(sender: Any, server: ServerConfig) -> Proof:
    now = time.time()
    event = validate(
        {
            "event": "registered",
            "token": TEST_TOKEN,
            "referee_identity": TEST_TOKEN,
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
    except DeliveryError as exc:
        skew = exc.clock_skew_s if isinstance(exc, SenderPaused) else None
        return _failed(server, str(exc), exc.http_status, exc.reason, skew)
    if delivered.outcome != "test":
        message = f"{delivered.http_status} but not a test answer: {delivered.response.strip()}"
        return _failed(server, message, delivered.http_status, "not_a_test", None)
    message = (
        f"{delivered.http_status} {delivered.response.strip()}: MMOLove verified the "
        "signature; the secret, header format and clock are right"
    )
    return Proof(
        server.server_id, True, message, None, delivered.http_status, None, delivered.clock_skew_s
    )


def _failed(
    server: ServerConfig,
    message: str,
    http_status: int | None,
    reason: str | None,
    skew: float | None,
) -> Proof:
    return Proof(
        server.server_id,
        False,
        message,
        fix(server, http_status, reason, skew),
        http_status,
        reason,
        skew,
    )


def fix(
    server: ServerConfig, http_status: int | None, reason: str | None, skew: float | None
) -> str:
    """The one thing to change for a failed proof, from MMOLove's answer (mmolove-api.md)."""
    if skew is not None and abs(skew) > CLOCK_FAIL_S:
        return clock_fix(skew)
    if http_status == 401:
        kid = f" and the kid {server.kid!r}" if server.kid else ""
        return (
            f"MMOLove refused the signature of server {server.server_id}: copy the secret{kid} "
            "again from the dashboard (Referrals > Secret); after a rotation use the new one."
        )
    if http_status == 404:
        return (
            f"MMOLove does not know server {server.server_id}, or referrals are not enabled for "
            "it: check the server id in the dashboard and enable referrals there."
        )
    if http_status is not None and 300 <= http_status < 400:
        return (
            "the endpoint redirects, and signed events are never sent on: set MMOLOVE_ENDPOINT "
            "to the final URL, https://mmolove.com/api/referral/events."
        )
    if reason in UNREACHABLE:
        return (
            "MMOLove is unreachable from this machine: check DNS, the firewall or proxy, "
            "the CA bundle (ca_file) and MMOLOVE_ENDPOINT."
        )
    return "read MMOLove's answer above; if it persists, contact MMOLove with it."


def clock_fix(skew: float) -> str:
    """What to do about a clock ``skew`` seconds off MMOLove's."""
    return (
        f"this machine's clock is {abs(skew):.0f} s off MMOLove's, and signatures more than "
        "5 minutes off are refused: enable time sync (timedatectl set-ntp true) and try again."
    )

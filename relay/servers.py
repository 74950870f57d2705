"""What the dispatcher knows about each MMOLove server beyond its configuration: its pause,
its probe, the clock offset it is signed with, its last error; and how a verdict moves them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from relay import policy
from relay.config.secrets import reread_secret
from relay.config.values import ServerConfig
from relay.errors import ConfigError
from relay.policy import Pause, ServerFacts, Verdict
from relay.snapshot import CIRCUIT_OPEN, DELIVERING, PAUSED, BreakerState, Sending, ServerSnapshot

log = structlog.get_logger("relay.dispatcher")


@dataclass
class ServerState:
    """What the dispatcher knows about one MMOLove server beyond its configuration."""

    config: ServerConfig
    paused_reason: str | None = None
    probe_at: float = 0.0
    probing: bool = False
    clock_offset_s: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None
    removed: bool = False  # dropped by a reload: its events are held until it comes back

    @property
    def facts(self) -> ServerFacts:
        return ServerFacts(self.probing, self.paused_reason is not None, self.clock_offset_s)

    def snapshot(self, circuit: BreakerState, circuit_open_until: float | None) -> ServerSnapshot:
        server_id = self.config.server_id
        if self.removed:
            return ServerSnapshot.held(server_id)
        state: Sending = DELIVERING
        reason, next_at = None, None
        if self.paused_reason is not None:
            state, reason, next_at = PAUSED, self.paused_reason, self.probe_at
        elif circuit != "closed":
            state, next_at = CIRCUIT_OPEN, circuit_open_until
            reason = "MMOLove is failing; the circuit holds every server's deliveries back"
        last = (self.clock_offset_s, self.last_error, self.last_error_at)
        return ServerSnapshot(server_id, state, reason, next_at, *last)

    async def apply(self, verdict: Verdict, now: float) -> None:
        """Move the server as the verdict says: its last error, pause, resume, next probe."""
        self.probing = False
        if verdict.last_error is not None:
            self.last_error, self.last_error_at = verdict.last_error, now
        if verdict.resume:
            log.info("sender.resumed", server_id=self.config.server_id)
            self.paused_reason = None
        if verdict.probe_at is not None:
            self.probe_at = verdict.probe_at
        if verdict.pause is not None:
            await self._pause(verdict.pause, now)

    async def _pause(self, paused: Pause, now: float) -> None:
        """Stop sending for this server, say why loudly, and plan the probe that may resume it."""
        server_id = self.config.server_id
        if paused.clock_offset_s is not None:
            log.warning("sender.clock_skew", server_id=server_id, skew_s=paused.clock_offset_s)
            self.clock_offset_s = paused.clock_offset_s
        elif paused.reread_secret:
            try:
                fresh = await asyncio.to_thread(reread_secret, self.config)
            except ConfigError as exc:
                paused = policy.secret_reread(paused, now, changed=False, failure=str(exc))
            else:
                changed = fresh.secret != self.config.secret
                if changed:
                    self.config = fresh
                paused = policy.secret_reread(paused, now, changed=changed, failure=None)
        self.probe_at = paused.probe_at
        if self.paused_reason is None:
            log.error(
                "sender.paused",
                server_id=server_id,
                reason=paused.reason,
                next_probe_in_s=round(paused.probe_at - now, 1),
            )
        self.paused_reason = paused.reason

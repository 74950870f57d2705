"""The dispatcher's state as the player view and the alert rules read it.

The one place that reads the dispatcher's snapshot, so the rest depends on this typed view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

StateProvider = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class DeliveryView:
    """Whether delivery flows: the circuit to MMOLove and each server's pause."""

    circuit: str  # closed, open, half_open; "unknown" when read from the file alone
    circuit_open_until: float | None
    paused: Mapping[str, str]  # server id -> why it is paused
    servers: tuple[str, ...]

    @classmethod
    def of(cls, snapshot: Mapping[str, Any]) -> DeliveryView:
        servers = snapshot.get("servers", [])
        return cls(
            circuit=str(snapshot.get("circuit", "unknown")),
            circuit_open_until=snapshot.get("circuit_open_until"),
            paused={s["server_id"]: s["paused_reason"] for s in servers if s.get("paused")},
            servers=tuple(s["server_id"] for s in servers),
        )


OFFLINE = DeliveryView(circuit="unknown", circuit_open_until=None, paused={}, servers=())

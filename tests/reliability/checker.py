"""The reliability checker: what ingest acknowledged against what MMOLove (the sandbox) took.

Every scenario records each acknowledged event in a ``Tally``; ``Tally.check`` then counts
lost events (acknowledged, never accepted) and duplicate sends (from the sandbox's request
log: sends of an event MMOLove had already accepted, however they were answered), fails on
any loss and on more duplicate sends than the scenario allows, and records the figures:
printed, and appended as a JSON line to the file named by ``RELIABILITY_FIGURES`` when it
is set (RELIABILITY.md quotes them). MMOLove deduplicates those sends, so they are harmless;
they are bounded because each one is a request the relay need not have made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.sandbox import RunningSandbox
from tests.harness import Key, key_of

FIGURES_ENV = "RELIABILITY_FIGURES"


@dataclass
class Tally:
    """The events one scenario had acknowledged (202, or 200 for an exact repeat)."""

    scenario: str
    acked: dict[Key, int] = field(default_factory=dict)  # key -> outbox id

    def ack(self, body: Mapping[str, Any], status: int, answer: Mapping[str, Any]) -> bool:
        """Record an ingest answer; True when it acknowledged the event."""
        if status == 202 or (status == 200 and answer.get("duplicate") is True):
            self.acked[key_of(body)] = int(answer["id"])
            return True
        return False

    def check(
        self, upstream: RunningSandbox, *, max_duplicate_sends: int = 0, **figures: Any
    ) -> dict[str, Any]:
        """Compare with the sandbox; assert 0 lost and at most ``max_duplicate_sends``
        duplicate sends; record the figures."""
        snap = upstream.sandbox.snapshot()
        accepted = {(r["token"], r["event"], r["server_event_id"]) for r in snap["accepted"]}
        lost = sorted(set(self.acked) - accepted)
        unacknowledged = sorted(accepted - set(self.acked))
        report = {
            "scenario": self.scenario,
            "acknowledged": len(self.acked),
            "accepted": len(accepted),
            "lost": len(lost),
            "duplicate_sends": snap["duplicate_sends"],
            "duplicate_sends_bound": max_duplicate_sends,
            "idempotent_replays": snap["duplicates"],
            "unacknowledged_accepted": len(unacknowledged),
            "requests": snap["requests"],
            "by_status": snap["by_status"],
            **figures,
        }
        record(report)
        assert lost == [], f"{len(lost)} acknowledged events never reached MMOLove: {lost[:5]}"
        assert snap["duplicate_sends"] <= max_duplicate_sends, (
            f"{snap['duplicate_sends']} sends of events MMOLove had already accepted; "
            f"this scenario allows {max_duplicate_sends}"
        )
        # Every scenario's client retries until acknowledged, so nothing else may arrive.
        assert unacknowledged == [], f"MMOLove took events never acknowledged: {unacknowledged}"
        return report


def record(report: Mapping[str, Any]) -> None:
    """Print one scenario's figures and append them to ``$RELIABILITY_FIGURES`` if set."""
    line = json.dumps(report, sort_keys=False)
    print(f"reliability figures: {line}")
    target = os.environ.get(FIGURES_ENV)
    if target:
        with Path(target).open("a", encoding="utf-8") as sink:
            sink.write(line + "\n")

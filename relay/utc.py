"""How the relay writes a moment for people: one format, in UTC, in every message and page."""

from __future__ import annotations

import time


def stamp(timestamp: float) -> str:
    """``2026-01-31 18:00:05 UTC``: the date too, since a retry may be days away."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))

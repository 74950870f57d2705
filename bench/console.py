"""How long each console page takes with the backlog in the outbox: the median of a few
GETs on loopback, each a fresh connection, so the figure bounds the server's own time."""

from __future__ import annotations

import statistics
import time
import urllib.request
from urllib.parse import quote

REPEATS = 5


def pages(prefix: str, count: int) -> dict[str, str]:
    """The pages to time, named; the ids and names are those ``fill`` wrote."""
    middle = count // 2
    return {
        "overview": "/ui/",
        "log": "/ui/events",
        "log, status filter": "/ui/events?status=pending",
        "log, rare filter": "/ui/events?event=qualified",
        "log, older page": f"/ui/events?before={middle}",
        "log, time range": "/ui/events?from=2000-01-01T00:00&to=2100-01-01T00:00",
        "search by token": f"/ui/events?q={quote(f'mmref-{prefix}{middle}')}",
        "search by player": f"/ui/events?q={quote(f'player-{prefix}{count - 10}')}",
        "live rows": f"/ui/events.json?after={count - 20}",
        "event": f"/ui/events/{middle}",
        "dead letters": "/ui/dead",
        "configuration": "/ui/config",
    }


def page_times_ms(url: str, *, prefix: str, count: int) -> dict[str, float]:
    """Median milliseconds per page, after one untimed warm-up GET of each."""
    out = {}
    for name, path in pages(prefix, count).items():
        _get(url + path)
        samples = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            _get(url + path)
            samples.append((time.perf_counter() - t0) * 1000)
        out[name] = round(statistics.median(samples), 1)
    return out


def _get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (our own relay)
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}")

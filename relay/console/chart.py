"""The overview's 24-hour chart as SVG geometry, computed on the server (no chart library)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from relay.store.contract import HourCounts

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 28  # room for the axis labels


@dataclass(frozen=True)
class Series:
    """One line of the chart: its name (also its CSS class), points and total."""

    name: str
    points: str  # the SVG polyline's "x,y x,y ..."
    total: int


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    series: tuple[Series, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    summary: str  # the chart in one sentence, for screen readers


def draw(hours: Sequence[HourCounts], rejected: Sequence[int]) -> Chart:
    """Lines of ingested events, delivered and failed attempts and rejected inputs, one
    point per hour; ``rejected`` holds a count for each of ``hours``."""
    columns = {
        "ingested": [h.ingested for h in hours],
        "delivered": [h.delivered for h in hours],
        "failed": [h.failed for h in hours],
        "rejected": list(rejected),
    }
    top = _nice_max(max((v for values in columns.values() for v in values), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(hours) - 1)

    def x(index: int) -> float:
        return round(LEFT + index * step, 1)

    def y(value: float) -> float:
        return round(TOP + plot_h - value / top * plot_h, 1)

    series = tuple(
        Series(name, " ".join(f"{x(i)},{y(v)}" for i, v in enumerate(values)), sum(values))
        for name, values in columns.items()
    )
    x_ticks = tuple(
        Tick(x(i), HEIGHT - 8, time.strftime("%H:00", time.gmtime(h.start)))
        for i, h in enumerate(hours)
        if i % 4 == 0
    )
    y_ticks = tuple(Tick(LEFT - 6, y(v), f"{v:,}") for v in (0, top // 2, top))
    summary = "Last 24 hours: " + ", ".join(f"{s.total:,} {s.name}" for s in series) + "."
    return Chart(WIDTH, HEIGHT, series, x_ticks, y_ticks, summary)


def _nice_max(value: int) -> int:
    """The axis top: 1, 2 or 5 times a power of ten, at least ``value`` (and at least 2)."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5):
            if factor * magnitude >= max(value, 2):
                return factor * magnitude
        magnitude *= 10

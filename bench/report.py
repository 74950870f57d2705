"""The results as a table with the targets, as JSON, and as a PNG chart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """One promise of the issue: a measured figure, its goal, and whether it is met."""

    name: str
    measured: float | None
    goal: float
    higher_is_better: bool
    unit: str

    @property
    def met(self) -> bool:
        if self.measured is None:
            return False
        if self.higher_is_better:
            return self.measured >= self.goal
        return self.measured <= self.goal

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "goal": (">= " if self.higher_is_better else "<= ") + f"{self.goal:g}{self.unit}",
            "met": self.met,
        }


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def targets(results: dict[str, Any]) -> list[Target]:
    fast, slow = results["ingest_fast"], results["ingest_slow"]
    backlog, empty = results["backlog"], results["delivery_0ms"]

    def versus(run: dict[str, Any], other: str) -> float:
        return _ratio(run["relay"]["rate_per_s"], run[other]["rate_per_s"])

    return [
        Target("ingest / bare (fast fsync)", versus(fast, "bare"), 0.6, True, "x"),
        Target("ingest / naive (fast fsync)", versus(fast, "naive"), 1.5, True, "x"),
        Target("ingest / bare (slow fsync)", versus(slow, "bare"), 0.4, True, "x"),
        Target("ingest / naive (slow fsync)", versus(slow, "naive"), 10, True, "x"),
        Target("ack p99 at half the max rate", fast["relay_half_rate"]["p99_ms"], 20, False, " ms"),
        Target(
            "delivery at 50 ms / ideal", results["delivery_50ms"]["ratio_to_ideal"], 0.9, True, "x"
        ),
        Target("idle end-to-end p50", results["end_to_end"]["p50_ms"], 5, False, " ms"),
        Target("1M backlog: start-up", backlog["startup_s"], 2, False, " s"),
        Target("1M backlog: peak RSS", backlog["peak_rss_mb"], 100, False, " MB"),
        Target("1M backlog: `status`", backlog["status_cli_s"], 1, False, " s"),
        Target(
            "1M backlog: slowest console page",
            max(backlog["console_ms"].values()),
            100,
            False,
            " ms",
        ),
        Target(
            "1M backlog: drain / empty outbox",
            _ratio(backlog["drain_rate_per_s"], empty["rate_per_s"]),
            0.8,
            True,
            "x",
        ),
    ]


def table(results: dict[str, Any]) -> str:
    """Markdown: the raw figures, then each target with its verdict."""
    lines = ["| scenario | rate/s | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
    for key, label in (("ingest_fast", "fast fsync"), ("ingest_slow", "fsync slowed")):
        for mode in ("bare", "naive", "relay"):
            r = results[key][mode]
            lines.append(
                f"| ingest, {label}: {mode} | {r['rate_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} |"
            )
    fast = results["ingest_fast"]
    r = fast["bare_uvloop"]
    lines.append(
        f"| ingest, fast fsync: bare on uvloop (reference; relay is "
        f"{_ratio(fast['relay']['rate_per_s'], r['rate_per_s']):g}x of it) | "
        f"{r['rate_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |"
    )
    half = fast["relay_half_rate"]
    lines.append(
        f"| ingest, fast fsync: relay at half its max rate | {half['rate_per_s']:,.0f} | "
        f"{half['p50_ms']:.2f} | {half['p99_ms']:.2f} |"
    )
    for key in ("delivery_0ms", "delivery_50ms"):
        d = results[key]
        ideal = f" (ideal {d['ideal_per_s']:,.0f})" if d["ideal_per_s"] else ""
        lines.append(
            f"| delivery, sandbox latency {d['latency_ms']:g} ms{ideal} | "
            f"{d['rate_per_s']:,.0f} | | |"
        )
    e2e = results["end_to_end"]
    lines.append(
        f"| end to end, {e2e['rate_per_s']:g} events/s: ingest → accepted | "
        f"{e2e['rate_per_s']:g} | {e2e['p50_ms']:.2f} | {e2e['p99_ms']:.2f} |"
    )
    b = results["backlog"]
    lines.append(f"| drain with {b['events']:,} pending | {b['drain_rate_per_s']:,.0f} | | |")
    pg = results["fleet_postgresql"]
    for n in (1, 3):
        i, d = pg[f"ingest_{n}"], pg[f"delivery_{n}"]
        lines.append(
            f"| PostgreSQL, {n} relay(s): ingest | {i['rate_per_s']:,.0f} | {i['p50_ms']:.2f} | "
            f"{i['p99_ms']:.2f} |"
        )
        lines.append(
            f"| PostgreSQL, {n} relay(s): delivery, latency 0 ms | {d['rate_per_s']:,.0f} | | |"
        )
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|:-:|"]
    for t in targets(results):
        verdict = t.as_json()
        lines.append(
            f"| {t.name} | {t.measured:g}{t.unit} | {verdict['goal']} | "
            f"{'yes' if t.met else '**no**'} |"
        )
    b = results["backlog"]
    lines += [
        "",
        f"Backlog of {b['events']:,} events ({b['db_mb']:,.0f} MB outbox): start-up "
        f"{b['startup_s']:.2f} s from spawn to /healthz ({b['startup_in_process_ms']} ms "
        f"in-process), `status` {b['status_cli_s']:.2f} s (CLI) / {b['status_api_s']:.3f} s "
        f"(API), RSS {b['rss_mb']:.0f} MB (peak {b['peak_rss_mb']:.0f} MB). The player "
        f"view of one referral took {b['player_api_s'] * 1000:.1f} ms (API); the ledger "
        f"takes {b['ledger_mb_per_million']:.0f} MB per million delivered events.",
        "",
        "Console pages with the backlog, median ms per GET: "
        + ", ".join(f"{name} {ms:g}" for name, ms in b["console_ms"].items())
        + ".",
    ]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = [t.as_json() for t in targets(results)]
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    png_path = out / "results.png"
    chart(results, png_path)
    return json_path, png_path


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    modes = ("bare", "naive", "relay")
    colors = ("#999999", "#d9822b", "#2b7bd9")

    ax = axes[0][0]
    for offset, key in enumerate(("ingest_fast", "ingest_slow")):
        rates = [results[key][m]["rate_per_s"] for m in modes]
        xs = [offset * 4 + i for i in range(3)]
        ax.bar(xs, rates, color=colors)
        for x, rate in zip(xs, rates, strict=True):
            ax.text(x, rate, f"{rate:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(
        [i + 4 * k for k in range(2) for i in range(3)],
        [f"{m}\n{label}" for label in ("fast fsync", "slow fsync") for m in modes],
    )
    ax.set_title(f"Durable ingest, {results['connections']} connections (req/s)")

    ax = axes[0][1]
    lat = [results["ingest_fast"][m] for m in modes] + [results["ingest_fast"]["relay_half_rate"]]
    names = [*modes, "relay @ ½ max"]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [r["p50_ms"] for r in lat], width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [r["p99_ms"] for r in lat], width=0.4, label="p99")
    ax.axhline(20, color="red", linestyle=":", linewidth=1, label="p99 target at ½ max")
    ax.set_xticks(list(xs), names)
    ax.set_title("Ack latency, fast fsync (ms)")
    ax.legend()

    ax = axes[1][0]
    d0, d50 = results["delivery_0ms"], results["delivery_50ms"]
    bars = [d0["rate_per_s"], d50["rate_per_s"], d50["ideal_per_s"], results["backlog"][
        "drain_rate_per_s"]]  # fmt: skip
    names = ["0 ms", "50 ms", "50 ms ideal", "0 ms, 1M pending"]
    ax.bar(names, bars, color=["#2b7bd9", "#2b7bd9", "#999999", "#6a3d9a"])
    for x, value in enumerate(bars):
        ax.text(x, value, f"{value:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_title(f"Delivery, concurrency {d50['concurrency']} (events/s)")

    ax = axes[1][1]
    ax.axis("off")
    text = "\n".join(
        f"{'✓' if t['met'] else '✗'} {t['name']}: {t['measured']:g} (goal {t['goal']})"
        for t in results["targets"]
    )
    ax.text(0, 1, text, va="top", fontsize=9, family="DejaVu Sans")
    ax.set_title("Targets")
    fig.suptitle(f"mmolove-relay benchmarks — {results['machine']['summary']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

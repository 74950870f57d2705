"""The results as a table with the targets, as JSON, and as a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Callable
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


# Each target: the steps it needs, and how to make it from their results. A run of some
# steps only (``--only``) judges the targets those steps measure.
_TARGETS: tuple[tuple[tuple[str, ...], Callable[[dict[str, Any]], Target]], ...] = (
    (("ingest_fast",), lambda r: Target(
        "ingest CPU per event (fast fsync)",
        r["ingest_fast"]["relay"]["cpu_us_per_event"], 250, False, " µs")),
    (("delivery_0ms",), lambda r: Target(
        "delivery CPU per event (0 ms)",
        r["delivery_0ms"]["cpu_us_per_event"], 450, False, " µs")),
    (("ingest_fast",), lambda r: Target(
        "ingest / bare (fast fsync)", _versus(r["ingest_fast"], "bare"), 0.45, True, "x")),
    (("ingest_fast",), lambda r: Target(
        "ingest / naive (fast fsync)", _versus(r["ingest_fast"], "naive"), 2, True, "x")),
    (("ingest_slow",), lambda r: Target(
        "ingest / bare (slow fsync)", _versus(r["ingest_slow"], "bare"), 0.4, True, "x")),
    (("ingest_slow",), lambda r: Target(
        "ingest / naive (slow fsync)", _versus(r["ingest_slow"], "naive"), 10, True, "x")),
    (("ingest_fast",), lambda r: Target(
        "ack p99 at half the max rate",
        r["ingest_fast"]["relay_half_rate"]["p99_ms"], 20, False, " ms")),
    (("delivery_50ms",), lambda r: Target(
        "delivery at 50 ms / ideal", r["delivery_50ms"]["ratio_to_ideal"], 0.9, True, "x")),
    (("end_to_end",), lambda r: Target(
        "idle end-to-end p50", r["end_to_end"]["p50_ms"], 5, False, " ms")),
    (("cli",), lambda r: Target(
        "`mmolove-relay --help`, whole process", r["cli"]["help"]["median_s"], 0.25, False, " s")),
    (("cli",), lambda r: Target(
        "`mmolove-relay status`, whole process",
        r["cli"]["status"]["median_s"], 0.25, False, " s")),
    (("backlog",), lambda r: Target(
        "1M backlog: start-up", r["backlog"]["startup_s"], 2, False, " s")),
    (("backlog",), lambda r: Target(
        "1M backlog: peak RSS", r["backlog"]["peak_rss_mb"], 100, False, " MB")),
    (("backlog",), lambda r: Target(
        "1M backlog: `status`", r["backlog"]["status_cli_s"], 1, False, " s")),
    (("backlog",), lambda r: Target(
        "1M backlog: slowest console page",
        max(r["backlog"]["console_ms"].values()), 100, False, " ms")),
    (("backlog", "delivery_0ms"), lambda r: Target(
        "1M backlog: drain / empty outbox",
        _ratio(r["backlog"]["drain_rate_per_s"], r["delivery_0ms"]["rate_per_s"]), 0.8, True, "x")),
)  # fmt: skip


def _versus(run: dict[str, Any], other: str) -> float:
    return _ratio(run["relay"]["rate_per_s"], run[other]["rate_per_s"])


def targets(results: dict[str, Any]) -> list[Target]:
    return [make(results) for needs, make in _TARGETS if all(step in results for step in needs)]


def table(results: dict[str, Any]) -> str:
    """Markdown: the raw figures, then each target with its verdict."""
    lines = [
        "| scenario | rate/s | p50 ms | p99 ms | CPU µs/event |",
        "|---|---:|---:|---:|---:|",
    ]

    def row(label: str, r: dict[str, Any], *, latency: bool = True) -> None:
        p50 = f"{r['p50_ms']:.2f}" if latency else ""
        p99 = f"{r['p99_ms']:.2f}" if latency else ""
        cpu = f"{r['cpu_us_per_event']:,}" if "cpu_us_per_event" in r else ""
        lines.append(f"| {label} | {r['rate_per_s']:,.0f} | {p50} | {p99} | {cpu} |")

    for key, label in (("ingest_fast", "fast fsync"), ("ingest_slow", "fsync slowed")):
        for mode in ("bare", "naive", "relay") if key in results else ():
            row(f"ingest, {label}: {mode}", results[key][mode])
    if "ingest_fast" in results:
        fast = results["ingest_fast"]
        ratio = _ratio(fast["relay"]["rate_per_s"], fast["bare_uvloop"]["rate_per_s"])
        row(
            f"ingest, fast fsync: bare on uvloop (reference; relay is {ratio:g}x of it)",
            fast["bare_uvloop"],
        )
        row("ingest, fast fsync: relay at half its max rate", fast["relay_half_rate"])
    for key in ("delivery_0ms", "delivery_50ms"):
        if key in results:
            d = results[key]
            ideal = f" (ideal {d['ideal_per_s']:,.0f})" if d["ideal_per_s"] else ""
            row(f"delivery, sandbox latency {d['latency_ms']:g} ms{ideal}", d, latency=False)
    if "end_to_end" in results:
        e2e = results["end_to_end"]
        row(f"end to end, {e2e['rate_per_s']:g} events/s: ingest → accepted", e2e)
    if "backlog" in results:
        b = results["backlog"]
        row(
            f"drain with {b['events']:,} pending",
            {"rate_per_s": b["drain_rate_per_s"]},
            latency=False,
        )
    if "fleet_postgresql" in results:
        pg = results["fleet_postgresql"]
        for n in (1, 3):
            row(f"PostgreSQL, {n} relay(s): ingest", pg[f"ingest_{n}"])
            row(
                f"PostgreSQL, {n} relay(s): delivery, latency 0 ms",
                pg[f"delivery_{n}"],
                latency=False,
            )
    lines += ["", "| target | measured | goal | met |", "|---|---:|---:|:-:|"]
    for t in targets(results):
        verdict = t.as_json()
        lines.append(
            f"| {t.name} | {t.measured:g}{t.unit} | {verdict['goal']} | "
            f"{'yes' if t.met else '**no**'} |"
        )
    if "cli" in results:
        c = results["cli"]
        lines += [
            "",
            f"CLI, whole process, median (slowest): `--help` {c['help']['median_s']:.3f} s "
            f"({c['help']['max_s']:.3f} s), `status` {c['status']['median_s']:.3f} s "
            f"({c['status']['max_s']:.3f} s).",
        ]
    if "sources" in results:
        s = results["sources"]
        lines += [
            "",
            f"Sources, on MariaDB with {s['characters']:,} characters and "
            f"{s['watched_players']:,} watched players: a milestone poll asks about "
            f"{s['players_per_poll']:,} of them ({s['statements_per_poll']} statements) in "
            f"{s['poll_ms_p50']:g} ms (median; slowest {s['poll_ms_max']:g} ms, goal <= 50 ms), "
            f"{s['statement_ms_p50']:g} ms a statement, examining "
            f"{s['rows_examined_per_poll']:,} rows; a round of all {s['polls_per_round']} polls "
            f"takes {s['round_ms_p50']:g} ms of database time, and asks about each player every "
            f"{s['round_s_at_interval']:g} s at the default interval. A registration was "
            f"stored {s['detection_s_p50']:g} s after its row committed (median; slowest "
            f"{s['detection_s_max']:g} s) polling every {s['interval_s']:g} s (goal: "
            f"interval_s + 1 s).",
        ]
    if "backlog" in results:
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


_CHARTED = ("ingest_fast", "ingest_slow", "delivery_0ms", "delivery_50ms", "backlog")


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """results.json, and the chart when every step it draws ran."""
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = [t.as_json() for t in targets(results)]
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if not all(step in results for step in _CHARTED):
        return [json_path]
    png_path = out / "results.png"
    chart(results, png_path)
    return [json_path, png_path]


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

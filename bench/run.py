"""``python -m bench``: every scenario in one run, then a table, JSON and a PNG chart.

Ratios measured side by side in one run are what count: shared machines drift.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import fleet, procs, report, scenarios
from bench import sources as game_sources

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds-long run for CI: proves the bench works, measures nothing worth keeping",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"where results.json and results.png go (default {RESULTS}, or a "
        "temporary directory with --smoke)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="scratch directory for outboxes and logs (default: temporary)"
    )
    parser.add_argument(
        "--only",
        help="comma-separated steps to run (default: all): " + ", ".join(STEPS),
    )
    parser.add_argument(
        "--relay-src",
        type=Path,
        help="run the relay under test from this source tree (another checkout, e.g. the "
        "parent commit), to compare a change by interleaved runs",
    )
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else list(STEPS)
    unknown = sorted(set(only) - set(STEPS))
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}: choose from {', '.join(STEPS)}")
    if args.relay_src:
        procs.relay_src = args.relay_src.resolve()
    plan = scenarios.SMOKE if args.smoke else scenarios.FULL
    for tool in ("wrk", "gcc"):
        if shutil.which(tool) is None:
            print(f"the bench needs {tool}: apt-get install {tool}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="mmolove-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        out = args.out or (Path(tmp) / "results" if args.smoke else RESULTS)
        results = run(plan, workdir, smoke=args.smoke, only=only)
        written = report.write(results, out)
        print()
        print(report.table(results))
        print(f"\nwrote {' and '.join(map(str, written))}")
    return 0


STEPS: dict[str, Callable[[scenarios.Plan, Path, Path], Any]] = {
    "ingest_fast": lambda plan, workdir, shim: scenarios.ingest(plan, workdir, None),
    "ingest_slow": lambda plan, workdir, shim: scenarios.ingest(plan, workdir, shim),
    "delivery_0ms": lambda plan, workdir, shim: scenarios.delivery(plan, workdir, 0.0),
    "delivery_50ms": lambda plan, workdir, shim: scenarios.delivery(plan, workdir, 50.0),
    "end_to_end": lambda plan, workdir, shim: scenarios.end_to_end(plan, workdir),
    "cli": lambda plan, workdir, shim: scenarios.cli(plan, workdir),
    "backlog": lambda plan, workdir, shim: scenarios.backlog(plan, workdir),
    "sources": lambda plan, workdir, shim: game_sources.sources(
        smoke=plan is scenarios.SMOKE, workdir=workdir
    ),
    "fleet_postgresql": lambda plan, workdir, shim: fleet.fleet(plan, workdir),
}


def run(plan: scenarios.Plan, workdir: Path, *, smoke: bool, only: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "smoke": smoke,
        "connections": scenarios.CONNECTIONS,
        "machine": machine(),
        "relay_src": str(procs.relay_src) if procs.relay_src else None,
        "load_before": os.getloadavg(),
    }
    shim = procs.build_shim(workdir)
    for name, step in STEPS.items():
        if name not in only:
            continue
        t0 = time.monotonic()
        print(f"{name} ...", end="", flush=True, file=sys.stderr)
        results[name] = step(plan, workdir, shim)
        print(f" {time.monotonic() - t0:.1f} s", file=sys.stderr)
    results["load_after"] = os.getloadavg()
    results["took_s"] = round(time.monotonic() - started, 1)
    return results


def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count() or 0
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    versions = {name: _version(name) for name in ("aiohttp", "aiosqlite", "uvloop")}
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "sqlite": _sqlite_version(),
        "packages": versions,
        "summary": f"{cores} cores, {cpu}, Python {platform.python_version()}",
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version

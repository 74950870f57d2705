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
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import fleet, procs, report, scenarios

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
    args = parser.parse_args(argv)
    plan = scenarios.SMOKE if args.smoke else scenarios.FULL
    for tool in ("wrk", "gcc"):
        if shutil.which(tool) is None:
            print(f"the bench needs {tool}: apt-get install {tool}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="mmolove-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        out = args.out or (Path(tmp) / "results" if args.smoke else RESULTS)
        results = run(plan, workdir, smoke=args.smoke)
        json_path, png_path = report.write(results, out)
        print()
        print(report.table(results))
        print(f"\nwrote {json_path} and {png_path}")
    return 0


def run(plan: scenarios.Plan, workdir: Path, *, smoke: bool) -> dict[str, Any]:
    started = time.monotonic()
    results: dict[str, Any] = {
        "smoke": smoke,
        "connections": scenarios.CONNECTIONS,
        "machine": machine(),
        "load_before": os.getloadavg(),
    }
    shim = procs.build_shim(workdir)
    steps = (
        ("ingest_fast", lambda: scenarios.ingest(plan, workdir, None)),
        ("ingest_slow", lambda: scenarios.ingest(plan, workdir, shim)),
        ("delivery_0ms", lambda: scenarios.delivery(plan, workdir, 0.0)),
        ("delivery_50ms", lambda: scenarios.delivery(plan, workdir, 50.0)),
        ("end_to_end", lambda: scenarios.end_to_end(plan, workdir)),
        ("backlog", lambda: scenarios.backlog(plan, workdir)),
        ("fleet_postgresql", lambda: fleet.fleet(plan, workdir)),
    )
    for name, step in steps:
        t0 = time.monotonic()
        print(f"{name} ...", end="", flush=True, file=sys.stderr)
        results[name] = step()
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

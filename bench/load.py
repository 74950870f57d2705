"""Load generators: wrk with a Lua script for throughput, a light asyncio client for latency.

Every request carries a unique ``token`` and ``server_event_id`` (run prefix, wrk thread,
counter), so each one is a new event that must be stored, never a duplicate.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

_LUA = r"""
local prefix = "%(prefix)s"
local delay_ms = %(delay_ms)s
local threads = {}
local counter = 0
local tid = 0

function setup(thread)
  tid = tid + 1
  thread:set("tid", tid)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local id = prefix .. "-" .. tid .. "-" .. counter
  local body = '{"event":"registered","token":"mmref-' .. id ..
    '","referee_identity":"player-' .. id .. '","server_event_id":"reg-' .. id .. '"}'
  return wrk.format("POST", "/v1/events", nil, body)
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local out = {
    requests = summary.requests,
    duration_us = summary.duration,
    non_2xx = summary.errors.status,
    socket_errors = summary.errors.connect + summary.errors.read + summary.errors.write +
      summary.errors.timeout,
    p50_us = latency:percentile(50),
    p90_us = latency:percentile(90),
    p99_us = latency:percentile(99),
    max_us = latency.max,
  }
  local parts = {}
  for k, v in pairs(out) do
    table.insert(parts, string.format('"%%s": %%d', k, v))
  end
  io.write("WRK_JSON {" .. table.concat(parts, ", ") .. "}\n")
end
"""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run: rate and ack latency as the load generator saw them."""

    requests: int
    seconds: float
    rate_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int

    def as_json(self) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def wrk(
    url: str,
    *,
    workdir: Path,
    prefix: str,
    connections: int,
    seconds: float,
    delay_ms: float = 0.0,
) -> LoadResult:
    """Drive POST /v1/events with ``connections`` keep-alive connections for ``seconds``."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("the bench needs wrk: apt-get install wrk")
    script = workdir / f"{prefix}.lua"
    script.write_text(_LUA % {"prefix": prefix, "delay_ms": f"{delay_ms:.3f}"})
    # One wrk thread is plenty for tens of thousands of requests/s and leaves the second
    # core to the server under test.
    argv = [
        binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(script), url + "/v1/events",
    ]  # fmt: skip
    done = subprocess.run(argv, check=True, capture_output=True, text=True)  # noqa: S603
    line = next(
        (x for x in done.stdout.splitlines() if x.startswith("WRK_JSON ")),
        None,
    )
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    secs = data["duration_us"] / 1e6
    return LoadResult(
        requests=data["requests"],
        seconds=secs,
        rate_per_s=data["requests"] / secs,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        non_2xx=data["non_2xx"],
        socket_errors=data["socket_errors"],
    )

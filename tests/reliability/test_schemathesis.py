"""Schemathesis fuzzes the running daemon from its own OpenAPI document.

A relay subprocess (its endpoint a closed port, so whatever it stores stays in the outbox)
takes at least 10,000 requests that schemathesis generates from ``/v1/openapi.json``:
valid and invalid bodies, query strings and path parameters for every operation. The run
must see 0 server errors, only documented status codes and schemas, every 4xx in the
error shape, and the outbox must hold exactly what was acknowledged: nothing is stored
from invalid input. Kept out of the default run: ``python -m pytest -m schemathesis``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import Spawn, get_json, relay_env, tuning
from tests.reliability.checker import record

MIN_REQUESTS = 10_000
EXAMPLES_PER_OPERATION = 1800  # six operations take parameters; the rest have one case
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
NOWHERE = "http://127.0.0.1:9/api/referral/events"  # the discard port: nothing listens


def error_shaped(text: str) -> bool:
    try:
        body = json.loads(text)
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and bool(error.get("code")) and bool(error.get("message"))


def acknowledged(entry: dict[str, Any]) -> int:
    """Events one request got stored: a 202, or the 202 items of a batch."""
    request, response = entry["request"], entry["response"]
    path = request["url"].split("?", 1)[0]
    if request["method"] != "POST":
        return 0
    if path.endswith("/v1/events"):
        return int(response["status"] == 202)
    if path.endswith("/v1/events/batch") and response["status"] == 200:
        results = json.loads(response["content"]["text"])["results"]
        return sum(item["status"] == 202 for item in results)
    return 0


@pytest.mark.schemathesis
@pytest.mark.timeout(1800)
async def test_schemathesis_fuzzes_the_daemon_with_no_5xx_and_stores_nothing_invalid(
    spawn: Spawn, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    relay = await spawn(relay_env(NOWHERE, tmp_path / "outbox.db"), config=tuning()).ready()
    har = tmp_path / "schemathesis.har"
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        pytest.fail("schemathesis is not installed: run `.venv/bin/pip install -e '.[fuzz]'`")
    proc = await asyncio.create_subprocess_exec(
        str(st), "run", f"{relay.url}/v1/openapi.json",
        "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", "1", "--workers", "1",
        "--phases", "examples,coverage,fuzzing", "--checks", CHECKS,
        "--report", "har", "--report-har-path", str(har),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await proc.communicate()
    entries = json.loads(har.read_text(encoding="utf-8"))["log"]["entries"]
    statuses = Counter(entry["response"]["status"] for entry in entries)
    not_error_shaped = [
        (entry["request"]["method"], entry["request"]["url"], entry["response"]["status"])
        for entry in entries
        if 400 <= entry["response"]["status"] < 500
        and not error_shaped(entry["response"]["content"].get("text", ""))
    ]
    stored = sum((await get_json(http, f"{relay.url}/v1/status"))["counts"].values())
    expected = sum(acknowledged(entry) for entry in entries)
    record(
        {
            "scenario": "schemathesis: fuzzed from the OpenAPI document",
            "requests": len(entries),
            "by_status": {str(k): v for k, v in sorted(statuses.items())},
            "server_errors": sum(n for status, n in statuses.items() if status >= 500),
            "not_error_shaped_4xx": len(not_error_shaped),
            "acknowledged": expected,
            "stored": stored,
        }
    )
    assert proc.returncode == 0, output.decode(errors="replace")[-6000:]
    assert len(entries) >= MIN_REQUESTS
    assert [status for status in statuses if status >= 500] == [], statuses
    assert not_error_shaped == [], not_error_shaped[:5]
    assert stored == expected, "the outbox holds something no answer acknowledged"
    assert relay.proc.poll() is None

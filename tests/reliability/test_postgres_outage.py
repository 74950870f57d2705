"""PostgreSQL stopped under a running relay, then started again: what the log says.

An outage is one state change, and its end another: the operator should read one line
for each (``outbox.lost``, then ``outbox.back``), not a traceback or an error from every
part of the relay that touched the database, every second it was away.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from relay.sandbox import RunningSandbox
from tests.harness import FLEET_TUNING, Spawn, fleet_env, ingest, post, wait_delivered
from tests.postgres import PG_PASSWORD, Cluster
from tests.reliability import test_fleet_faults
from tests.support import eventually, registered

DOWN_S = 4.0
own_cluster = test_fleet_faults.own_cluster  # the fixture: a cluster this test stops


@pytest.mark.long
@pytest.mark.timeout(120)
async def test_a_postgresql_outage_logs_one_line_when_it_starts_and_one_when_it_ends(
    spawn: Spawn,
    sandbox: RunningSandbox,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    own_cluster: Cluster,
) -> None:
    """The database stops for 4 s under a relay that ingests, delivers, syncs its fleet and
    prunes: no traceback, one ``outbox.lost`` naming the error and what to do, one
    ``outbox.back``; ingest answers 503 meanwhile and works again after."""
    env = fleet_env(sandbox, tmp_path, own_cluster.url, PG_PASSWORD)
    relay = await spawn(env, config=FLEET_TUNING).ready()
    await wait_delivered(http, relay.url, [await ingest(http, relay.url, registered("before"))])
    before = len(relay.stderr)

    await asyncio.to_thread(own_cluster.stop, "fast")
    status, answer, _ = await post(http, relay.url, registered("while-down"))
    assert status == 503, answer
    await asyncio.sleep(DOWN_S)
    await asyncio.to_thread(own_cluster.start)

    async def ingest_works() -> bool:
        return (await post(http, relay.url, registered("after")))[0] == 202

    await eventually(ingest_works, timeout_s=30, what="ingest to work again")
    await asyncio.sleep(2)  # every part of the relay has touched the database again
    relay.send(signal.SIGTERM)
    assert await relay.exited() == 0

    during = relay.stderr[before:]
    lines = [json.loads(line) for line in during if line.startswith("{")]
    records = [r for r in lines if r.get("level") != "info"]
    events = Counter(str(r.get("event")) for r in records)
    # JSON lines carry a traceback in "exception"; anything else on stderr is a bare one.
    tracebacks = sum("exception" in r for r in records) + sum(
        line.startswith("Traceback") for line in during
    )
    assert (tracebacks, events) == (0, Counter({"outbox.lost": 1})), (tracebacks, events)
    [lost] = relay.find_logs("outbox.lost")
    [back] = relay.find_logs("outbox.back")
    assert lost["level"] == "error", lost
    assert lost["error"], lost
    assert "PostgreSQL" in lost["action"], lost
    assert back["level"] == "info", back
    assert PG_PASSWORD not in relay.output()

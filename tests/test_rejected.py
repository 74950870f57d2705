"""Rejected inputs against a real daemon: every 4xx is logged, counted, kept (bounded) and
listed by `mmolove-relay rejected`, `GET /v1/rejected` and `status`."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from relay.events import validate
from relay.store.contract_records import Rejection
from tests.support import SERVER, Relay, StartRelay, cli, registered


async def rejected(relay: Relay, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The rejected record once it holds ``count`` rows (it is written a moment later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        _, data = await relay.get("/v1/rejected?limit=1000")
        if len(data["rejected"]) >= count or time.monotonic() > deadline:
            return list(data["rejected"])
        await asyncio.sleep(0.05)


async def rejected_metric(relay: Relay) -> dict[str, float]:
    async with relay.http.get(relay.url + "/metrics") as resp:
        text = await resp.text()
    return {
        sample.labels["code"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "mmolove_relay_ingest_rejected"
        for sample in family.samples
    }


async def test_every_4xx_is_kept_counted_and_listed_newest_first(start_relay: StartRelay) -> None:
    relay = await start_relay()
    async with relay.http.post(relay.url + "/v1/events", data=b"{not json") as resp:
        assert resp.status == 415  # no JSON content type
    async with relay.http.post(
        relay.url + "/v1/events", data=b"{not json", headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
    status, _ = await relay.post({"event": "registered", "token": "tok-a", "server_event_id": "r"})
    assert status == 422
    assert (await relay.post(registered("tok-b", "p-b")))[0] == 202
    status, _ = await relay.post(registered("tok-b", "p-b", ts=1_700_000_000))
    assert status == 409
    status, batch = await relay.post(
        [registered("tok-c", "p-c"), {"event": "qualified", "token": "tok-c"}], "/v1/events/batch"
    )
    assert [r["status"] for r in batch["results"]] == [202, 422]

    rows = await rejected(relay, 5)
    assert [(r["http_status"], r["code"]) for r in rows] == [
        (422, "missing_field"),
        (409, "conflict"),
        (422, "missing_field"),
        (400, "invalid_json"),
        (415, "unsupported_media_type"),
    ]
    batch_item, conflict, missing = rows[0], rows[1], rows[2]
    assert (batch_item["field"], batch_item["token"]) == ("server_event_id", "tok-c")
    assert json.loads(batch_item["body"]) == {"event": "qualified", "token": "tok-c"}
    assert (conflict["token"], conflict["server_event_id"]) == ("tok-b", "reg-p-b")
    assert (missing["field"], missing["token"], missing["peer"]) == (
        "referee_identity",
        "tok-a",
        "127.0.0.1",
    )
    assert rows[3]["body"] == "{not json"

    counts = await rejected_metric(relay)
    assert counts["missing_field"] == 2
    assert counts["conflict"] == counts["invalid_json"] == counts["unsupported_media_type"] == 1
    assert counts["unknown_server"] == 0  # every code's series exists from the start

    _, status_ = await relay.get("/v1/status")
    assert status_["rejected"]["last_hour"] == 5
    assert status_["rejected"]["latest"]["code"] == "missing_field"

    code, out, err = await cli("rejected", "--code", "conflict", "--json", "--url", relay.url)
    assert code == 0, err
    assert [r["token"] for r in json.loads(out)["rejected"]] == ["tok-b"]
    code, out, err = await cli("rejected", "--since", "1h", "--url", relay.url)
    assert code == 0, err
    assert "missing_field" in out
    assert "5 shown, newest first" in out


async def test_the_record_keeps_only_the_newest(start_relay: StartRelay) -> None:
    """A client looping on bad input never fills the disk: the newest N are kept."""
    relay = await start_relay(rejected_keep=20)
    for i in range(60):
        status, _ = await relay.post({"event": "registered", "token": f"t{i}"})
        assert status == 422
    deadline = time.monotonic() + 5
    while True:
        rows = await rejected(relay, 1)
        if (rows and rows[0]["token"] == "t59") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [r["token"] for r in rows] == [f"t{i}" for i in range(59, 39, -1)]
    assert (await rejected_metric(relay))["missing_field"] == 60  # counted, all of them


async def test_a_rejection_is_logged_once_with_its_code_and_ids(
    start_relay: StartRelay, capsys: Any
) -> None:
    relay = await start_relay()
    await relay.post({"event": "qualified", "token": "tok-log", "server_event_id": "q-1", "x": 1})
    await rejected(relay, 1)
    lines = [line for line in capsys.readouterr().out.splitlines() if "ingest.rejected" in line]
    assert len(lines) == 1
    assert "unknown_field" in lines[0]
    assert "tok-log" in lines[0]
    assert "q-1" in lines[0]


async def test_status_names_the_rejected_count_and_the_latest(start_relay: StartRelay) -> None:
    relay = await start_relay()
    await relay.post({"event": "registered", "token": "tok-s", "server_event_id": "r-s"})
    await rejected(relay, 1)
    code, out, err = await cli("status", "--url", relay.url)
    assert code == 0, err
    assert "1 input(s) rejected in the last hour" in out
    assert "422 missing_field: referee_identity is required." in out


async def test_a_rejection_that_cannot_be_stored_never_fails_the_ingest_beside_it(
    start_relay: StartRelay,
) -> None:
    """They share a group commit; only the record is lost, never the acknowledged event."""
    relay = await start_relay()
    outbox = relay.handle.outbox
    now = time.time()
    unstorable = Rejection(now, 422, "invalid_text", "\ud800", None, None, None, None, None, b"")
    event = validate(
        registered("tok-beside", "p-beside"), server_ids=[SERVER], allow_extra_fields=False, now=now
    )
    stored, added = await asyncio.gather(
        outbox.records.add_rejections([unstorable], keep=10), outbox.add([event], now)
    )
    assert stored is False
    assert added[0].created
    assert (await outbox.get(added[0].id)) is not None

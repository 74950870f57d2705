"""The operator's tools against a real daemon and sandbox: status, events, retry, purge,
test, check-config, sign, /readyz and /metrics."""

from __future__ import annotations

import json
import socket
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.config.settings import Settings
from relay.config.values import Listen, Secret, ServerConfig
from relay.sandbox import RunningSandbox, running_sandbox
from relay.signing import signature_header
from tests.support import (
    SECRET,
    SERVER,
    Relay,
    StartRelay,
    cli,
    eventually,
    qualified,
    registered,
)
from tests.test_signing import VECTORS


def env_for(sandbox: RunningSandbox, secret: str = SECRET, **extra: str) -> dict[str, str]:
    return {
        "MMOLOVE_SERVER_ID": SERVER,
        "MMOLOVE_SECRET": secret,
        "MMOLOVE_ENDPOINT": sandbox.url,
        **extra,
    }


async def dead_referral(relay: Relay, sandbox: RunningSandbox, token: str) -> tuple[int, int]:
    """A registered that MMOLove answers 404 and the qualified held back behind it."""
    sandbox.sandbox.faults.unknown_tokens.add(token)
    _, reg = await relay.post(registered(token, f"p-{token}"))
    _, qual = await relay.post(qualified(token, f"p-{token}"))
    records = await relay.wait_finished([reg["id"], qual["id"]])
    assert [records[i]["outcome"] for i in (reg["id"], qual["id"])] == [
        "not_found",
        "predecessor_dead",
    ]
    return reg["id"], qual["id"]


async def test_a_404_dead_event_is_found_understood_and_replayed(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    """docs/operating.md's three commands: status, events show, retry."""
    relay = await start_relay()
    reg, qual = await dead_referral(relay, sandbox, "tok-404")

    code, out, err = await cli("status", "--url", relay.url)
    assert code == 0, err
    [server] = [line.split() for line in out.splitlines() if " delivering " in line]
    assert server[:6] == [SERVER, "delivering", "0", "0", "0", "2"]
    reasons = {line.split()[1]: line.split()[2] for line in out.splitlines() if "#" in line}
    assert reasons == {"not_found": "1", "predecessor_dead": "1"}

    code, out, err = await cli("events", "show", str(reg), "--url", relay.url)
    assert code == 0, err
    assert "dead (not_found)" in out
    assert "unknown token" in out  # MMOLove's own answer, from the delivery log
    assert f"mmolove-relay retry {reg}" in out

    sandbox.sandbox.faults.unknown_tokens.clear()  # fixed on MMOLove's dashboard
    code, out, err = await cli("retry", str(reg), "--yes", "--url", relay.url)
    assert code == 0, err
    assert f"#{qual}" in out  # the held-back qualified comes back with it
    records = await relay.wait_finished([reg, qual])
    assert [records[i]["outcome"] for i in (reg, qual)] == ["accepted", "accepted"]
    # The daemon acts on a retry at once: the new attempt starts within a second of it.
    replayed_at = records[reg]["replayed_at"]
    assert records[reg]["delivery_log"][0]["started_at"] - replayed_at < 1.0
    assert len(sandbox.sandbox.snapshot()["accepted"]) == 2


async def test_events_list_filters_and_json(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    relay = await start_relay()
    reg, qual = await dead_referral(relay, sandbox, "tok-list")
    _, other = await relay.post(registered("tok-ok", "p-ok"))
    await relay.wait_finished([other["id"]])

    code, out, err = await cli("events", "list", "--status", "dead", "--json", "--url", relay.url)
    assert code == 0, err
    listed = json.loads(out)
    assert ([e["id"] for e in listed["events"]], listed["total"]) == ([qual, reg], 2)

    code, out, _ = await cli(
        "events", "list", "--token", "tok-ok", "--since", "1h", "--url", relay.url
    )
    assert code == 0
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == [str(other["id"])]]
    assert [row[4:8] for row in rows] == [["tok-ok", "reg-p-ok", "delivered", "1"]]
    assert "1 of 1 shown" in out

    code, _, err = await cli("events", "show", "99999", "--url", relay.url)
    assert (code, "no event #99999" in err) == (1, True)
    code, _, err = await cli("events", "list", "--since", "soon", "--url", relay.url)
    assert (code, "not a duration" in err) == (2, True)


async def test_bulk_retry_asks_first_then_shows_progress(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    relay = await start_relay()
    dead = [await dead_referral(relay, sandbox, f"tok-bulk-{n}") for n in range(3)]
    sandbox.sandbox.faults.unknown_tokens.clear()
    args = ("retry", "--dead", "--reason", "not_found", "--chunk", "2", "--url", relay.url)

    code, _, err = await cli(*args, stdin=b"n\n")
    assert code == 1
    assert "re-queue 3 dead events (not_found)? [y/N]" in err
    assert "nothing done" in err
    _, still = await relay.get("/v1/events?status=dead")
    assert still["total"] == 6

    code, out, err = await cli(*args, stdin=b"y\n")
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith("retry:")] == [
        "retry: 2/3 (66%)",
        "retry: 3/3 (100%)",
    ]
    assert "re-queued 6 events" in out  # three registered, and the three held behind them
    ids = [event_id for pair in dead for event_id in pair]
    records = await relay.wait_finished(ids)
    assert {r["status"] for r in records.values()} == {"delivered"}

    code, out, _ = await cli(*args, "--yes", "--json")
    assert (code, json.loads(out)) == (0, {"requeued": 0, "followers": 0})


async def test_retry_by_id_reports_what_it_could_not_retry(start_relay: StartRelay) -> None:
    relay = await start_relay()
    _, sent = await relay.post(registered("tok-done", "p"))
    await relay.wait_finished([sent["id"]])
    code, out, err = await cli("retry", str(sent["id"]), "424242", "--yes", "--url", relay.url)
    assert code == 1
    assert {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]} == {
        str(sent["id"]): "delivered",
        "424242": "not_found",
    }
    code, _, err = await cli("retry", "--url", relay.url)
    assert (code, "give outbox ids" in err) == (2, True)


async def test_purge_deletes_old_finished_events_in_chunks(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    relay = await start_relay()
    for n in range(3):
        await dead_referral(relay, sandbox, f"tok-purge-{n}")
    _, kept = await relay.post(registered("tok-kept", "p"))
    await relay.wait_finished([kept["id"]])

    code, out, err = await cli("purge", "--dead", "--older-than", "1h", "--yes", "--url", relay.url)
    assert (code, out.strip()) == (0, "no dead events older than that")
    code, out, err = await cli(
        "purge", "--dead", "--older-than", "0s", "--chunk", "4", "--yes", "--url", relay.url
    )
    assert code == 0, err
    assert "deleted 6 dead events" in out
    assert [line for line in err.splitlines() if line.startswith("purge:")] == [
        "purge: 4/6 (66%)",
        "purge: 6/6 (100%)",
    ]
    _, left = await relay.get("/v1/events")
    assert [e["id"] for e in left["events"]] == [kept["id"]]


async def test_test_command_proves_secret_and_reports_a_wrong_one(
    sandbox: RunningSandbox,
) -> None:
    code, out, err = await cli("test", env=env_for(sandbox))
    assert code == 0, err
    assert "MMOLove verified the signature" in out
    assert sandbox.sandbox.snapshot()["test_events"] == 1

    sandbox.sandbox.faults.clock_offset_s = 600
    code, out, err = await cli("test", "--json", env=env_for(sandbox, secret="wrong-secret"))
    assert code == 1
    [result] = json.loads(out)["servers"]
    assert (result["ok"], result["http_status"], result["reason"]) == (False, 401, "unauthorized")
    assert 590 < result["clock_skew_s"] < 610
    assert "time sync" in result["fix"]  # 10 minutes off: the clock is named before the secret
    assert "wrong-secret" not in out + err


async def test_check_config_masks_the_secret_and_explains_errors(sandbox: RunningSandbox) -> None:
    code, out, err = await cli("check-config", env=env_for(sandbox))
    assert code == 0, err
    assert f"server {SERVER}: secret ***" in out
    assert SECRET not in out + err
    code, out, _ = await cli("check-config", "--json", env=env_for(sandbox))
    assert json.loads(out)["endpoint"] == sandbox.url

    code, out, err = await cli(
        "check-config", env=env_for(sandbox, MMOLOVE_RELAY_LISTEN="0.0.0.0:8787")
    )
    assert code == 3
    assert "MMOLOVE_RELAY_INGEST_TOKEN" in err


async def test_sign_prints_the_published_vector_header(sandbox: RunningSandbox) -> None:
    secret, t, body, expected = VECTORS[0]
    env = env_for(sandbox, secret=secret, MMOLOVE_KID="k1")
    code, out, err = await cli("sign", "--ts", str(t), env=env, stdin=body.encode())
    assert code == 0, err
    assert out.strip() == f"X-MMOLove-Signature: t={t},v1=sha256={expected},kid=k1"
    assert err == ""
    code, out, err = await cli("sign", "--ts", str(t), env=env, stdin=body.encode() + b"\n")
    assert out.strip() == "X-MMOLove-Signature: " + signature_header(
        body.encode() + b"\n", secret, t, "k1"
    )
    assert "ends with a newline" in err
    code, out, _ = await cli("sign", "--ts", str(t), "--json", env=env, stdin=body.encode())
    assert json.loads(out) == {
        "header": "X-MMOLove-Signature",
        "value": f"t={t},v1=sha256={expected},kid=k1",
        "t": t,
        "body_bytes": len(body.encode()),
    }


async def test_readyz_fails_while_a_server_is_paused(
    start_relay: StartRelay, sandbox: RunningSandbox, settings: Settings
) -> None:
    relay = await start_relay()
    status, ready = await relay.get("/readyz")
    assert (status, ready["ready"], ready["servers"]) == (200, True, {SERVER: "ok"})

    sandbox.sandbox.faults.outage = True  # MMOLove down: the circuit opens, still ready
    await relay.post(registered("tok-ready", "p"))
    await _until(relay, lambda s: s["circuit"] != "closed")
    status, ready = await relay.get("/readyz")
    assert (status, ready["ready"]) == (200, True)

    full = await start_relay(db_path=settings.db_path.with_name("other.db"), min_free_bytes=2**62)
    status, ready = await full.get("/readyz")
    assert status == 503
    assert ready["problems"][0].startswith("disk nearly full")


async def test_two_servers_one_paused_is_reported_per_server(
    start_relay: StartRelay, settings: Settings
) -> None:
    """srv-2's secret is wrong: it pauses alone, and status, /readyz and /metrics say which."""
    async with running_sandbox({SERVER: SECRET, "srv-2": "secret-2"}) as upstream:
        relay = await start_relay(
            endpoint=upstream.url,
            servers=(
                ServerConfig(SERVER, Secret(SECRET)),
                ServerConfig("srv-2", Secret("not-secret-2")),
            ),
            pause_probe_s=60.0,  # no probe in flight while the counts are read
        )
        _, one = await relay.post(registered("tok-a", "p", server_id=SERVER))
        await relay.post(registered("tok-b", "q", server_id="srv-2"))
        await relay.wait_finished([one["id"]])
        await _until(relay, lambda s: s["servers"][1]["paused"])

        code, out, err = await cli("status", "--url", relay.url)
        assert code == 0, err
        rows = {line.split()[0]: line.split()[1:6] for line in out.splitlines()[4:6]}
        assert rows == {
            SERVER: ["delivering", "0", "0", "1", "0"],
            "srv-2": ["PAUSED", "1", "0", "0", "0"],
        }
        assert "srv-2 is paused: MMOLove rejected the signature" in out

        status, ready = await relay.get("/readyz")
        assert (status, ready["servers"]) == (503, {SERVER: "ok", "srv-2": "paused"})
        async with relay.http.get(relay.url + "/metrics") as resp:
            text = await resp.text()
        assert 'mmolove_relay_server_paused{server_id="srv-2"} 1.0' in text
        assert f'mmolove_relay_server_paused{{server_id="{SERVER}"}} 0.0' in text


async def test_metrics_count_ingest_outcomes_and_depth(
    start_relay: StartRelay, sandbox: RunningSandbox
) -> None:
    relay = await start_relay()
    await dead_referral(relay, sandbox, "tok-m")
    _, ok = await relay.post(registered("tok-m2", "p"))
    await relay.wait_finished([ok["id"]])
    async with relay.http.get(relay.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(f"mmolove_relay_{name}", tuple(sorted(labels.items())))]

    assert value("events_ingested_total", server_id=SERVER, event="registered") == 2
    assert value("events_ingested_total", server_id=SERVER, event="qualified") == 1
    assert value("delivered_total", server_id=SERVER, outcome="accepted") == 1
    assert value("attempt_failures_total", server_id=SERVER, reason="not_found") == 1
    assert value("attempt_duration_seconds_count") == 2
    assert value("outbox_events", server_id=SERVER, status="dead") == 2
    assert value("outbox_events", server_id=SERVER, status="delivered") == 1
    assert value("oldest_pending_age_seconds") == 0
    assert value("circuit_open") == 0
    assert value("server_paused", server_id=SERVER) == 0
    assert value("outbox_bytes") > 0
    assert "tok-m" not in text  # tokens never become label values


async def test_retry_and_purge_are_refused_from_another_machine(
    start_relay: StartRelay,
) -> None:
    """Off loopback, even with the right token, the outbox cannot be changed remotely."""
    address = _non_loopback_address()
    relay = await start_relay(listen=Listen("0.0.0.0", 0), ingest_token=Secret("tok-en"))
    port = relay.url.rsplit(":", 1)[1]
    auth = {"Authorization": "Bearer tok-en"}
    async with aiohttp.ClientSession(headers=auth) as http:
        for path, body in (("retry", {"ids": [1]}), ("purge", {"status": "dead", "before": 0})):
            async with http.post(f"http://{address}:{port}/v1/admin/{path}", json=body) as resp:
                answer = await resp.json()
                assert (resp.status, answer["error"]["code"]) == (403, "forbidden"), path
            async with http.post(f"http://127.0.0.1:{port}/v1/admin/{path}", json=body) as resp:
                assert resp.status == 200, path
        async with http.get(f"http://{address}:{port}/v1/status") as resp:
            assert resp.status == 200  # reading is fine with the token


def _non_loopback_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address: str = probe.getsockname()[0]
    assert not address.startswith("127."), "this test needs a non-loopback IPv4 address"
    return address


async def _until(relay: Relay, check: Any, timeout_s: float = 10.0) -> None:
    async def matching() -> dict[str, Any] | None:
        _, body = await relay.get("/v1/status")
        return body if check(body) else None

    await eventually(matching, timeout_s=timeout_s, what="the status to match")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("retry", {"ids": []}),
        ("retry", {"ids": ["x"]}),
        ("retry", {"ids": list(range(5001))}),
        ("retry", {"filter": {"colour": "red"}}),
        ("retry", {"filter": {}}),
        ("retry", {"filter": {"status": "dead"}, "limit": 0}),
        ("retry", [1]),
        ("purge", {"status": "pending", "before": 0}),
        ("purge", {"status": "dead", "before": "yesterday"}),
    ],
)
async def test_admin_refuses_bad_requests_with_422(
    start_relay: StartRelay, path: str, body: Any
) -> None:
    relay = await start_relay()
    status, answer = await relay.post(body, f"/v1/admin/{path}")
    assert status == 422, answer
    assert answer["error"]["message"]


@pytest.mark.parametrize("after_id", ["299544265736908754410012672", "-1", "9223372036854775808"])
async def test_an_id_filter_outside_sqlite_integers_is_422_not_a_crash(
    start_relay: StartRelay, after_id: str
) -> None:
    """Found by fuzzing from the OpenAPI document: a huge after_id crashed the query (500)."""
    relay = await start_relay()
    status, answer = await relay.get(f"/v1/events?after_id={after_id}")
    assert (status, answer["error"]["code"], answer["error"]["field"]) == (
        422,
        "invalid_filter",
        "after_id",
    )

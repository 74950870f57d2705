"""The command line, run as a real subprocess: demo, send, status, help and exit codes."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support import StartRelay, cli

pytestmark = pytest.mark.timeout(60)


async def test_demo_shows_three_events_land() -> None:
    code, out, err = await cli("demo")
    assert code == 0, out + err
    lines = [line for line in out.splitlines() if " delivered " in line]
    assert len(lines) == 3, out
    assert sum("accepted" in line for line in lines) == 2
    assert sum(" test " in line for line in lines) == 1
    assert "All three events landed" in out


@pytest.mark.parametrize("command", [[], ["serve"], ["sandbox"], ["demo"], ["send"], ["status"]])
async def test_help_everywhere(command: list[str]) -> None:
    code, out, _ = await cli(*command, "--help")
    assert code == 0
    assert "usage: mmolove-relay" in out


async def test_no_command_prints_usage_and_exits_2() -> None:
    code, out, _ = await cli()
    assert code == 2
    assert "COMMAND" in out


async def test_send_and_status_talk_to_the_running_relay(start_relay: StartRelay) -> None:
    relay = await start_relay()
    code, out, err = await cli(
        "send",
        "registered",
        "--token",
        "tok-cli",
        "--server-event-id",
        "reg-cli",
        "--referee",
        "p1",
        "--url",
        relay.url,
    )
    assert code == 0, err
    sent = json.loads(out)
    assert sent["status"] in ("pending", "in_flight", "delivered")
    await relay.wait_finished([sent["id"]])

    code, out, err = await cli("status", "--json", "--url", relay.url)
    assert code == 0, err
    status = json.loads(out)
    assert status["counts"]["delivered"] == 1
    assert status["circuit"] == "closed"

    code, out, _ = await cli("status", "--url", relay.url)
    assert code == 0
    [row] = [line.split() for line in out.splitlines() if line.startswith("srv-1")]
    assert row[:6] == ["srv-1", "delivering", "0", "0", "1", "0"]


async def test_send_rejected_exits_1_with_the_reason(start_relay: StartRelay) -> None:
    relay = await start_relay()
    code, _, err = await cli(
        "send", "registered", "--token", "t", "--server-event-id", "r", "--url", relay.url
    )
    assert code == 1
    assert "referee_identity is required" in err


async def test_unreachable_relay_exits_4() -> None:
    code, _, err = await cli("status", "--url", "http://127.0.0.1:9")
    assert code == 4
    assert "cannot reach the relay" in err


async def test_send_can_wait_for_a_relay_that_is_still_starting(start_relay: StartRelay) -> None:
    import socket

    from relay.config import Listen

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    sending = asyncio.create_task(
        cli(
            "send",
            "qualified",
            "--token",
            "tok-wait",
            "--server-event-id",
            "q-wait",
            "--url",
            url,
            "--wait-s",
            "15",
        )
    )
    await asyncio.sleep(1.0)  # the relay is not there yet: send keeps trying
    assert not sending.done()
    relay = await start_relay(listen=Listen("127.0.0.1", port))
    code, out, err = await sending
    assert code == 0, err
    _, found = await relay.get("/v1/events?server_event_id=q-wait")
    assert [e["id"] for e in found["events"]] == [json.loads(out)["id"]]


async def test_send_without_wait_fails_at_once_when_unreachable() -> None:
    code, _, err = await cli(
        "send", "qualified", "--token", "t", "--server-event-id", "q", "--url", "http://127.0.0.1:9"
    )
    assert code == 4
    assert "cannot reach the relay" in err

"""The command line, run as a real subprocess: demo, send, status, help and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

from relay.cli import main
from relay.cli.client import EXIT_BROKEN_PIPE
from relay.config.keys import ENVIRONMENT
from relay.config.settings import Settings
from relay.sandbox import DEMO_SECRET, DEMO_SERVER_ID, RunningSandbox
from tests.support import SECRET, SERVER, StartRelay, assert_demo_landed, cli

pytestmark = pytest.mark.timeout(60)


async def test_demo_shows_three_events_land() -> None:
    assert_demo_landed(*await cli("demo"))


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

    from relay.config.values import Listen

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


async def test_a_closed_pipe_ends_a_command_quietly(start_relay: StartRelay) -> None:
    """`mmolove-relay status | head -3`: the reader is gone; no BrokenPipeError traceback."""
    relay = await start_relay()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the command writes a line
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay.cli",
            "status",
            "--url",
            relay.url,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "MMOLOVE_RELAY_CONFIG": ""},
        )
    finally:
        os.close(write_end)
    _, err = await proc.communicate()
    assert err.decode() == ""
    assert proc.returncode == EXIT_BROKEN_PIPE


async def test_test_json_reports_the_http_status_of_a_success(sandbox: RunningSandbox) -> None:
    code, out, err = await cli("test", "--json", env=sandbox_env(sandbox))
    assert code == 0, err
    [result] = json.loads(out)["servers"]
    assert (result["ok"], result["http_status"]) == (True, 200)


async def test_check_config_prints_absolute_paths_and_where_each_value_came_from(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("[delivery]\nconcurrency = 3\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        "check-config",
        "--config",  # after the subcommand, too
        str(config),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MMOLOVE_RELAY_CONFIG": "", **sandbox_env(sandbox)},
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert f"  db_path = {tmp_path / 'mmolove-relay.db'}   [default]" in lines
    assert f"  endpoint = {sandbox.url}   [environment MMOLOVE_ENDPOINT]" in lines
    assert f"  concurrency = 3   [file {config}]" in lines
    assert f"  server {SERVER}: secret *** from environment MMOLOVE_SECRET" in lines


async def test_config_option_is_taken_before_and_after_the_subcommand(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("[delivery]\nconcurrency = 3\n", encoding="utf-8")
    for args in (
        ["--config", str(config), "check-config"],
        ["check-config", "--config", str(config)],
    ):
        code, out, err = await cli(*args, "--json", env=sandbox_env(sandbox))
        assert code == 0, err
        assert json.loads(out)["concurrency"] == 3, args


def test_every_command_describes_itself_and_serve_lists_its_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def help_of(*command: str) -> str:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        return capsys.readouterr().out

    names = re.findall(r"^    ([a-z-]+)\b", help_of(), re.MULTILINE)
    assert {"serve", "status", "events", "check-config", "sandbox", "sign"} <= set(names)
    for command in [[name] for name in names] + [["events", "list"], ["events", "show"]]:
        description = help_of(*command).split("\n\n")[1]
        assert not description.startswith(("positional", "options")), f"{command}: undescribed"
    serve = " ".join(help_of("serve").split())
    for name, (_, default) in ENVIRONMENT.items():
        assert f"{name} " in serve
        assert default in serve


async def test_check_config_example_prints_the_shipped_file_and_it_is_valid() -> None:
    code, out, err = await cli("check-config", "--example")
    assert code == 0, err
    assert "[delivery]" in out
    example = tomllib.loads(out)
    assert example["delivery"]["concurrency"] == Settings().concurrency


async def test_sandbox_help_shows_the_demo_secret_and_the_serve_environment() -> None:
    code, out, _ = await cli("sandbox", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert DEMO_SECRET in text
    assert (
        f"MMOLOVE_SERVER_ID={DEMO_SERVER_ID} MMOLOVE_SECRET={DEMO_SECRET} mmolove-relay serve"
        in text
    )


def sandbox_env(sandbox: RunningSandbox) -> dict[str, str]:
    return {"MMOLOVE_SERVER_ID": SERVER, "MMOLOVE_SECRET": SECRET, "MMOLOVE_ENDPOINT": sandbox.url}

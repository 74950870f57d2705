"""``mmolove-relay doctor`` as an operator runs it, against the sandbox: for each thing that can
be wrong, the line that fails names the cause and the fix, and no other line fails for it."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.sandbox import RunningSandbox
from tests.harness import Spawn, get_json, ingest, relay_env
from tests.support import SECRET, SERVER, cli, eventually, free_port, registered

TEST_EVENT = f"test event {SERVER}"
NO_DAEMON = {"daemon", "ingest"}  # what fails in every case run without a relay


def doctor_env(sandbox: RunningSandbox, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The configuration under test: the sandbox's server, an outbox under ``tmp_path`` and a
    listen port nothing holds (no relay runs unless the test starts one)."""
    return {
        "MMOLOVE_SERVER_ID": SERVER,
        "MMOLOVE_SECRET": SECRET,
        "MMOLOVE_ENDPOINT": sandbox.url,
        "MMOLOVE_RELAY_DB": str(tmp_path / "outbox.db"),
        "MMOLOVE_RELAY_LISTEN": f"127.0.0.1:{free_port()}",
        **extra,
    }


async def run_doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """Exit code and the ``--json`` report's checks by name."""
    code, out, err = await cli("doctor", "--json", *args, env=env)
    report = json.loads(out)
    assert report["ok"] == (code == 0), out + err
    return code, {c["name"]: c for c in report["checks"]}


def failing(checks: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name, c in checks.items() if c["status"] == "fail"}


def _closed_endpoint(sandbox: RunningSandbox, tmp_path: Path) -> dict[str, str]:
    return {"MMOLOVE_ENDPOINT": f"http://127.0.0.1:{free_port()}/api/referral/events"}


def _kid_rotated(sandbox: RunningSandbox, tmp_path: Path) -> dict[str, str]:
    sandbox.sandbox.kids[SERVER] = "k-current"
    return {"MMOLOVE_KID": "k-old"}


def _clock_off(sandbox: RunningSandbox, tmp_path: Path) -> dict[str, str]:
    sandbox.sandbox.faults.clock_offset_s = 600
    return {}


def _redirecting(sandbox: RunningSandbox, tmp_path: Path) -> dict[str, str]:
    sandbox.sandbox.faults.redirect_to = "https://mmolove.example/api/referral/events"
    return {}


def _no_headroom(sandbox: RunningSandbox, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "relay.toml"
    config.write_text(f"[ingest]\nmin_free_bytes = {2**62}\n", encoding="utf-8")
    return {"MMOLOVE_RELAY_CONFIG": str(config)}


def _no_room_for_the_reserve(sandbox: RunningSandbox, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "relay.toml"
    config.write_text(f"[outbox]\nreserve_bytes = {2**62}\n", encoding="utf-8")
    return {"MMOLOVE_RELAY_CONFIG": str(config)}


def _open_secret_file(sandbox: RunningSandbox, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n", encoding="utf-8")
    path.chmod(0o644)
    return {"MMOLOVE_SECRET": "", "MMOLOVE_SECRET_FILE": str(path)}


Setup = Callable[[RunningSandbox, Path], dict[str, str]]


@pytest.mark.parametrize(
    ("setup", "line", "fails", "cause", "fix"),
    [
        pytest.param(
            lambda sb, tmp: {"MMOLOVE_SECRET": "wrong-secret-for-tests"},
            TEST_EVENT,
            {TEST_EVENT},
            "MMOLove rejected the signature (401",
            "copy the secret again from the dashboard",
            id="wrong-secret",
        ),
        pytest.param(
            _kid_rotated,
            TEST_EVENT,
            {TEST_EVENT},
            "MMOLove rejected the signature (401",
            "copy the secret and the kid 'k-old' again",
            id="wrong-kid",
        ),
        pytest.param(
            _clock_off,
            "clock",
            {"clock", TEST_EVENT},
            # +600 s, give or take the second the Date header rounds to
            re.compile(r"MMOLove's clock is \+(599|600|601)\.[0-9] s from ours"),
            "time sync (timedatectl set-ntp true)",
            id="clock-10-minutes-off",
        ),
        pytest.param(
            _closed_endpoint,
            "endpoint",
            {"endpoint", TEST_EVENT},
            "cannot connect to MMOLove",
            "MMOLove is unreachable from this machine",
            id="endpoint-down",
        ),
        pytest.param(
            _redirecting,
            "endpoint",
            {"endpoint", TEST_EVENT},
            "answered 307 redirecting to https://mmolove.example/",
            "the endpoint redirects, and signed events are never sent on",
            id="endpoint-3xx",
        ),
        pytest.param(
            _no_headroom,
            "outbox",
            {"outbox"},
            "disk nearly full",
            "free space on that disk, or move the outbox (MMOLOVE_RELAY_DB)",
            id="disk-below-headroom",
        ),
        pytest.param(
            _no_room_for_the_reserve,
            "outbox",
            {"outbox"},
            "(reserve_bytes) for its reserve, so it will not start",
            "lower [outbox] reserve_bytes",
            id="no-room-for-the-reserve",
        ),
        pytest.param(
            _open_secret_file,
            f"secret {SERVER}",
            {f"secret {SERVER}"},
            "readable or writable by group or others (mode 0644)",
            "chmod 600 ",
            id="secret-file-readable-by-others",
        ),
        pytest.param(
            lambda sb, tmp: {},
            "daemon",
            set(),
            "not running: nothing answers at http://127.0.0.1:",
            "systemctl start mmolove-relay",
            id="daemon-stopped",
        ),
    ],
)
async def test_each_fault_fails_its_own_line_with_cause_and_fix(
    sandbox: RunningSandbox,
    tmp_path: Path,
    setup: Setup,
    line: str,
    fails: set[str],
    cause: str | re.Pattern[str],
    fix: str,
) -> None:
    env = doctor_env(sandbox, tmp_path)
    env |= setup(sandbox, tmp_path)
    code, checks = await run_doctor(env)
    assert code == 1
    assert failing(checks) == fails | NO_DAEMON, checks
    pattern = cause if isinstance(cause, re.Pattern) else re.escape(cause)
    assert re.search(pattern, checks[line]["detail"]), checks[line]
    assert fix in checks[line]["fix"], checks[line]
    assert "wrong-secret-for-tests" not in json.dumps(checks)


async def test_an_invalid_configuration_stops_the_checks_with_its_error(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    env = doctor_env(sandbox, tmp_path, MMOLOVE_RELAY_LISTEN="0.0.0.0:8787")
    code, checks = await run_doctor(env)
    assert code == 1
    [config] = checks.values()  # every other check reads the configuration
    assert (config["name"], config["status"]) == ("configuration", "fail")
    assert "MMOLOVE_RELAY_INGEST_TOKEN" in config["detail"]
    assert "mmolove-relay check-config" in config["fix"]
    assert sandbox.sandbox.snapshot()["requests"] == 0


async def test_a_healthy_relay_passes_every_check(
    sandbox: RunningSandbox, tmp_path: Path, spawn: Spawn
) -> None:
    env = doctor_env(sandbox, tmp_path)
    relay = await spawn(relay_env(sandbox.url, tmp_path / "outbox.db", **env)).ready()
    code, out, err = await cli("doctor", env=env)
    assert code == 0, out + err
    lines = [line for line in out.splitlines() if line and not line.startswith(" ")]
    assert lines[-1] == "every check passed"
    marks = {line.split()[1]: line[0] for line in lines[:-1]}
    assert marks == {
        "configuration": "✓",
        "secret": "✓",
        "endpoint": "✓",
        "clock": "✓",
        "test": "✓",
        "outbox": "✓",
        "daemon": "✓",
        "ingest": "✓",
        "alerts": "!",  # none configured: a warning, which does not fail the run
    }, out
    assert f"running and ready: {relay.url}" in out
    assert SECRET not in out + err
    assert sandbox.sandbox.snapshot()["test_events"] == 1


async def test_a_paused_server_is_named_with_the_reload_that_resumes_it(
    sandbox: RunningSandbox, tmp_path: Path, spawn: Spawn, http: Any
) -> None:
    """The relay's secret is one MMOLove rejects: delivery pauses, and doctor says so."""
    env = doctor_env(sandbox, tmp_path, MMOLOVE_SECRET="wrong-secret-for-tests")
    relay = await spawn(relay_env(sandbox.url, tmp_path / "outbox.db", **env)).ready()
    await ingest(http, relay.url, registered("tok-paused", "p-paused"))

    async def paused() -> bool:
        status = await get_json(http, relay.url + "/v1/status")
        return bool(status["servers"][0]["state"] == "paused")

    await eventually(paused, what="the server to pause")
    code, checks = await run_doctor(env)
    assert code == 1
    assert failing(checks) == {TEST_EVENT, f"server {SERVER}"}, checks
    server = checks[f"server {SERVER}"]
    assert "paused: MMOLove rejected the signature" in server["detail"]
    assert "systemctl reload mmolove-relay" in server["fix"]
    assert "1 pending" in checks["daemon"]["detail"]


async def test_alert_targets_are_named_and_sent_only_when_asked(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    hook = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens: a send would fail
    env = doctor_env(
        sandbox, tmp_path, MMOLOVE_RELAY_ALERT_URL=hook, MMOLOVE_RELAY_ALERT_KIND="webhook"
    )
    _, checks = await run_doctor(env)
    [alert] = [c for name, c in checks.items() if name.startswith("alert ")]
    assert (alert["status"], alert["detail"]) == (
        "ok",
        "configured; not sent (--send-alert sends a test)",
    )
    _, checks = await run_doctor(env, "--send-alert")
    [alert] = [c for name, c in checks.items() if name.startswith("alert ")]
    assert alert["status"] == "fail", alert
    assert "check the target's URL" in alert["fix"]


async def test_the_sandbox_command_knows_a_kid_and_doctor_tells_a_stale_one(
    tmp_path: Path,
) -> None:
    """``mmolove-relay sandbox --kid`` as a process: the current kid proves, an old one is a
    401 whose fix names the kid."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        "sandbox",
        "--listen",
        f"127.0.0.1:{port}",
        "--server",
        f"{SERVER}={SECRET}",
        "--kid",
        f"{SERVER}=k-current",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            assert (await proc.stdout.readline()).startswith(b"sandbox listening")
        env = {
            "MMOLOVE_SERVER_ID": SERVER,
            "MMOLOVE_SECRET": SECRET,
            "MMOLOVE_ENDPOINT": f"http://127.0.0.1:{port}/api/referral/events",
            "MMOLOVE_RELAY_DB": str(tmp_path / "outbox.db"),
            "MMOLOVE_RELAY_LISTEN": f"127.0.0.1:{free_port()}",
        }
        _, current = await run_doctor({**env, "MMOLOVE_KID": "k-current"})
        _, stale = await run_doctor({**env, "MMOLOVE_KID": "k-old"})
    finally:
        proc.terminate()
        await proc.wait()
    assert current[TEST_EVENT]["status"] == "ok", current[TEST_EVENT]
    assert stale[TEST_EVENT]["status"] == "fail"
    assert "the kid 'k-old'" in stale[TEST_EVENT]["fix"]

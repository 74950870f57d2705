"""The systemd unit, judged by systemd's own tools (``verify`` and the offline security
review), then installed as INSTALL.md says and run under a real systemd 252 as PID 1."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.config.settings import Settings
from relay.config.values import CREDENTIAL_NAME
from relay.guard import FD_RESERVE
from relay.packaged import SYSTEMD_UNIT
from relay.sandbox import running_sandbox
from tests.harness import accepted_keys, in_progress, ingest, key_of, tuning
from tests.support import eventually, free_port, registered, require_tools
from tests.systems import ROOT, Booted, booted_systemd, copy_checkout, wheelhouse

UNIT = ROOT / "relay" / SYSTEMD_UNIT
INSTALL_MD = ROOT / "systemd" / "INSTALL.md"
SHIPPED_EXEC_START = "ExecStart=/opt/mmolove-relay/.venv/bin/mmolove-relay serve"
MAX_EXPOSURE = 2.0


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    require_tools("systemd-analyze", why="install Debian's systemd package (see .ci/run).")
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_unit_passes_verify_without_a_warning(tmp_path: Path) -> None:
    """verify also checks that ExecStart exists, so a copy points it at this venv's entry
    point; every other line is the shipped one."""
    text = UNIT.read_text()
    assert text.count(SHIPPED_EXEC_START) == 1
    entry_point = Path(sys.executable).parent / "mmolove-relay"
    assert entry_point.is_file(), f"{entry_point} missing: pip install -e . first"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(SHIPPED_EXEC_START, f"ExecStart={entry_point} serve"))
    result = analyze("verify", str(copy))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_security_review_rates_the_unit_below_2() -> None:
    result = analyze("security", "--offline=true", str(UNIT))
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout[-2000:]
    assert float(found.group(1)) < MAX_EXPOSURE, result.stdout


def test_unit_asks_for_what_the_relay_implements() -> None:
    """Notify with a watchdog, the credential under the name the relay reads, the outbox in
    the state directory, no fixed user."""
    lines = set(UNIT.read_text().splitlines())
    assert {"Type=notify", "DynamicUser=yes", "StateDirectory=mmolove-relay"} <= lines
    assert f"LoadCredential={CREDENTIAL_NAME}:/etc/mmolove-relay/secret" in lines
    assert any(re.fullmatch(r"WatchdogSec=\d+s", line) for line in lines)


def test_unit_gives_room_for_every_connection_the_relay_serves() -> None:
    """The unit forbids setrlimit, so its LimitNOFILE is the limit the relay gets: it must hold
    the default connection cap plus the descriptors kept for the rest."""
    [limit] = re.findall(r"^LimitNOFILE=(\d+)$", UNIT.read_text(), re.MULTILINE)
    assert int(limit) >= Settings().max_connections + FD_RESERVE


# -- installed and run under a real systemd ----------------------------------------------

SD_SERVER = "srv-sd1"
# Distinctive, so a leak into the journal is unambiguous.
SECRET_BEFORE = "sd-secret-before-rotation-7d1c"
SECRET_AFTER = "sd-secret-after-rotation-2be9"
CHECKOUT = "/root/mmolove-relay"


def install_commands() -> str:
    """The indented command block of INSTALL.md, as the operator would paste it."""
    text = INSTALL_MD.read_text()
    block = text.split("As root, from a checkout of this repository:\n\n", 1)[1].split("\n\n")[0]
    lines = [line.strip() for line in block.splitlines()]
    assert lines, text
    assert all(lines), block
    return "\n".join(lines) + "\n"


def play_the_operator(booted: Booted, *, sandbox_url: str, listen: str) -> dict[str, str]:
    """Put the checkout and the operator's answers into the booted system: what ``$EDITOR``
    writes into the secret file and what ``systemctl edit`` gets. Returns the environment
    of the root shell the commands run in."""
    root = booted.root
    copy_checkout(root / CHECKOUT.lstrip("/"))
    shutil.copytree(wheelhouse(), root / "root/wheels")
    operator = root / "root/operator"
    operator.mkdir()
    (operator / "install.sh").write_text(f"set -ex\ncd {CHECKOUT}\n" + install_commands())
    (operator / "secret").write_text(f"printf '%s\\n' {SECRET_BEFORE} > \"$1\"\n")
    (operator / "dropin.conf").write_text(
        "[Service]\n"
        f"Environment=MMOLOVE_SERVER_ID={SD_SERVER}\n"
        f"Environment=MMOLOVE_ENDPOINT={sandbox_url}\n"
        f"Environment=MMOLOVE_RELAY_LISTEN={listen}\n"
        "Environment=MMOLOVE_RELAY_CONFIG=/etc/mmolove-relay.toml\n"
        # The shipped 30 s, shortened so the test does not wait half a minute.
        "WatchdogSec=4s\n"
    )
    # `systemctl edit` keeps what is written between its two header comments.
    (operator / "dropin").write_text("sed -i '2r /root/operator/dropin.conf' \"$1\"\n")
    for script in ("secret", "dropin"):
        (operator / script).chmod(0o755)
        (operator / script).write_text("#!/bin/sh\n" + (operator / script).read_text())
    (root / "etc/mmolove-relay.toml").write_text(tuning(extra="breaker_cooldown_s = 0.5\n"))
    return {
        "EDITOR": "/root/operator/secret",
        "SYSTEMD_EDITOR": "/root/operator/dropin",
        # pip finds the dependencies in the wheelhouse instead of an index.
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "/root/wheels",
    }


def exposure(booted: Booted) -> float:
    review = booted.run("systemd-analyze", "security", "--no-pager", "mmolove-relay").stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", review)
    assert found, review[-2000:]
    return float(found.group(1))


@pytest.mark.system  # boots a whole systemd, whose start-up has its own time limits
@pytest.mark.timeout(1800)  # a cold run debootstraps the root first (about a minute)
async def test_installed_as_install_md_says_it_runs_under_a_real_systemd(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """INSTALL.md's commands, run as root in a booted Debian bookworm with systemd 252 as
    PID 1; then start, delivery, reload and a rotated credential, the watchdog, the stop's
    drain, the security review of the loaded unit and the journal."""
    with booted_systemd(tmp_path) as booted:

        async def inside(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(booted.run, *args, **kwargs)

        def journal(*match: str) -> str:
            return booted.run("journalctl", "--no-pager", "-o", "cat", *match).stdout

        assert not (booted.root / "bin/kill").exists(), "the root should be a minimal Debian"
        listen = f"127.0.0.1:{free_port()}"
        relay = f"http://{listen}"
        sent: list[dict[str, Any]] = []
        async with running_sandbox({SD_SERVER: SECRET_BEFORE}) as first:
            env = play_the_operator(booted, sandbox_url=first.url, listen=listen)
            # systemctl edit wants a terminal: script gives the commands one.
            await inside(
                "script", "-qec", "sh /root/operator/install.sh", "/dev/null",
                env=env, timeout_s=300,
            )  # fmt: skip
            # `systemctl enable --now` has returned: READY=1 came, so ingest answers at once.
            async with http.get(f"{relay}/readyz") as resp:
                assert resp.status == 200, await resp.text()
            sent.append(registered("sd-first"))
            await ingest(http, relay, sent[-1])
            await eventually(lambda: accepted_keys(first), timeout_s=15, what="the delivery")
            delivered = accepted_keys(first)

        # MMOLove's dashboard rotated the secret: the relay's signatures now get 401.
        port = int(first.base_url.rsplit(":", 1)[1])
        async with running_sandbox({SD_SERVER: SECRET_AFTER}, port=port) as second:
            sent.append(registered("sd-rotated"))
            await ingest(http, relay, sent[-1])
            await eventually(
                lambda: second.sandbox.snapshot()["by_status"].get("401"),
                timeout_s=15,
                what="the old secret's 401",
            )
            (booted.root / "etc/mmolove-relay/secret").write_text(SECRET_AFTER + "\n")
            # Reload runs on a minimal Debian and the relay re-reads; systemd 252 copies a
            # credential only when the service starts, so the rotation needs the restart.
            await inside("systemctl", "reload", "mmolove-relay")
            assert '"relay.reloaded"' in journal("-u", "mmolove-relay")
            await inside("systemctl", "restart", "mmolove-relay")
            await eventually(lambda: accepted_keys(second), timeout_s=20, what="the rotation")

            # A stuck relay: the watchdog kills and restarts it; what it acknowledged stays.
            second.sandbox.faults.outage = True
            for n in range(5):
                sent.append(registered(f"sd-watchdog-{n}"))
                await ingest(http, relay, sent[-1])
            stuck = booted.show("mmolove-relay", "MainPID")
            restarts = int(booted.show("mmolove-relay", "NRestarts"))
            await inside("sh", "-c", f"kill -STOP {stuck}")
            await eventually(
                lambda: (
                    int(booted.show("mmolove-relay", "NRestarts")) == restarts + 1
                    and booted.show("mmolove-relay", "ActiveState") == "active"
                ),
                timeout_s=30,
                what="the watchdog to restart the relay",
            )
            assert "Watchdog timeout" in journal("-u", "mmolove-relay")
            second.sandbox.faults.outage = False
            await eventually(
                lambda: len(accepted_keys(second)) == 6, timeout_s=20, what="the backlog"
            )

            # Stop while a delivery is in flight: the drain finishes it, then exit 0.
            second.sandbox.faults.latency_ms = 1500
            sent.append(registered("sd-draining"))
            await ingest(http, relay, sent[-1])
            await eventually(lambda: in_progress(second), timeout_s=10, what="a delivery")
            await inside("systemctl", "stop", "mmolove-relay")
            assert booted.show("mmolove-relay", "Result") == "success"
            assert booted.show("mmolove-relay", "ExecMainStatus") == "0"
            delivered += accepted_keys(second)

        level = exposure(booted)
        assert level < MAX_EXPOSURE
        own_lines = journal("_SYSTEMD_UNIT=mmolove-relay.service").splitlines()
        assert own_lines
        for line in own_lines:
            assert isinstance(json.loads(line), dict), line
        assert {"relay.ready", "relay.reloaded", "relay.stopped"} <= {
            json.loads(line)["event"] for line in own_lines
        }
        everything = journal()
        assert SECRET_BEFORE not in everything
        assert SECRET_AFTER not in everything

    keys = {key_of(body) for body in sent}
    lost = keys - set(delivered)
    duplicates = sum(count - 1 for count in delivered.values())
    print(
        f"systemd: {len(keys)} events sent, {len(set(delivered) & keys)} delivered, "
        f"{len(lost)} lost, {duplicates} duplicate sends; the loaded unit's exposure {level}"
    )
    assert not lost
    assert set(delivered) == keys

"""The systemd unit, judged by systemd's own tools: ``verify`` and the offline security review."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from relay.config import CREDENTIAL_NAME, Settings
from relay.guard import FD_RESERVE
from tests.support import require_tools

UNIT = Path(__file__).parent.parent / "systemd" / "mmolove-relay.service"
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

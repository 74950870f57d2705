"""``mmolove-relay setup`` and ``secret set``: under a real systemd 252 as PID 1, from a fresh
Debian with only python3-venv and the wheel; and, without systemd, the configuration file
setup writes instead. MMOLove is the sandbox on the host's loopback, which the booted system
shares."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.sandbox import running_sandbox
from tests.harness import accepted_keys, ingest, key_of
from tests.support import cli, eventually, free_port, registered
from tests.systems import Booted, booted_systemd, copy_checkout, sh, wheelhouse

SERVER = "srv-setup1"
# Distinctive, so a leak into the journal or the output is unambiguous.
SECRET = "setup-secret-first-5e0b7a"
ROTATED = "setup-secret-rotated-c41d"
WRONG = "setup-secret-wrong-99f2"
VENV = "/opt/mmolove-relay/.venv"
ALERT_URL = "http://127.0.0.1:9/hooks/setup-alert-token-3f1e"
INSTALLED = ("/etc/mmolove-relay", "/etc/systemd/system/mmolove-relay.service")


def relay_wheel(tmp_path: Path) -> Path:
    """This checkout's wheel, built by pip as a release would be."""
    checkout, out = tmp_path / "src", tmp_path / "dist"
    copy_checkout(checkout)
    sh(
        *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
        *("--wheel-dir", str(out), str(checkout)),
        timeout_s=600,
        what="pip wheel",
    )
    [wheel] = out.glob("mmolove_relay-*.whl")
    return wheel


def setup_args(url: str, listen: str) -> tuple[str, ...]:
    return (
        f"{VENV}/bin/mmolove-relay",
        *("setup", "--server-id", SERVER, "--secret-file", "-"),
        *("--endpoint", url, "--listen", listen, "--yes"),
        # Nothing listens there: the target is only configured, and reaches the service
        # as a credential.
        *("--alert-url", ALERT_URL, "--alert-kind", "webhook"),
    )


def changes(out: str) -> list[str]:
    """What setup did to each thing it manages, in the order it printed them."""
    words = {"created", "updated", "unchanged", "enabled", "started", "restarted"}
    return [
        line.split()[0]
        for line in out.splitlines()
        if line[:2] == "  " and line.split()[0] in words
    ]


def state(booted: Booted) -> tuple[str, str]:
    enabled = booted.run("systemctl", "is-enabled", "mmolove-relay", check=False)
    active = booted.run("systemctl", "is-active", "mmolove-relay", check=False)
    return enabled.stdout.strip(), active.stdout.strip()


@pytest.mark.system  # boots a whole systemd, whose start-up has its own time limits
@pytest.mark.timeout(1800)  # a cold run debootstraps the root first
async def test_setup_and_secret_set_under_a_real_systemd(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """One boot, in order: a wrong secret installs nothing; one `setup --yes` gives an enabled,
    running service and a verified test event; a second run changes nothing; after MMOLove
    rotates the secret, `secret set` gets the paused relay the new one and its held events
    are delivered."""
    wheel = relay_wheel(tmp_path)
    (tmp_path / "boot").mkdir()
    with booted_systemd(tmp_path / "boot") as booted:

        async def inside(
            *args: str, input: str | None = None, **kwargs: Any
        ) -> subprocess.CompletedProcess[str]:
            """As root inside; ``input`` is what the command reads on stdin."""
            if input is not None:
                (booted.root / "root/stdin").write_text(input)
                args = ("sh", "-c", '"$@" < /root/stdin', "sh", *args)
            return await asyncio.to_thread(booted.run, *args, **kwargs)

        shutil.copy(wheel, booted.root / "root" / wheel.name)
        shutil.copytree(wheelhouse(), booted.root / "root/wheels")
        await inside("python3", "-m", "venv", VENV)
        await inside(
            f"{VENV}/bin/pip", "install", "--quiet", f"/root/{wheel.name}",
            env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/root/wheels"}, timeout_s=300,
        )  # fmt: skip
        listen = f"127.0.0.1:{free_port()}"
        relay = f"http://{listen}"

        async with running_sandbox({SERVER: SECRET}) as mmolove:
            command = setup_args(mmolove.url, listen)
            wrong = await inside(*command, input=WRONG + "\n", check=False)
            assert wrong.returncode == 1, wrong.stdout + wrong.stderr
            assert "could not be proven" in wrong.stderr, wrong.stderr
            assert "401" in wrong.stderr, wrong.stderr
            assert "copy the secret" in wrong.stderr  # the fix, from relay.proof
            for path in INSTALLED:
                assert not (booted.root / path.lstrip("/")).exists(), path
            assert state(booted)[0] in ("", "not-found"), state(booted)

            started = time.monotonic()
            first = await inside(*command, input=SECRET + "\n", timeout_s=180)
            wall_s = time.monotonic() - started
            assert state(booted) == ("enabled", "active"), first.stdout
            assert "landed:" in first.stdout, first.stdout
            # The proof before installing, and the test event through the service.
            assert mmolove.sandbox.snapshot()["test_events"] == 2
            secret_file = booted.root / "etc/mmolove-relay/secret"
            assert secret_file.stat().st_mode & 0o777 == 0o600
            assert secret_file.stat().st_uid == 0
            main_pid = booted.show("mmolove-relay", "MainPID")
            async with http.get(f"{relay}/v1/status") as resp:
                [target] = (await resp.json())["alerts"]["targets"]
            assert target["kind"] == "webhook", target
            alert_file = booted.root / "etc/mmolove-relay/alert-url"
            assert alert_file.stat().st_mode & 0o777 == 0o600

            again = await inside(*command, input=SECRET + "\n", timeout_s=180)
            # The secret, the unit, the drop-in, the alert URL, the enabling, the service.
            assert changes(again.stdout) == ["unchanged"] * 6, again.stdout
            assert booted.show("mmolove-relay", "MainPID") == main_pid  # not restarted
            assert "landed:" in again.stdout

        # MMOLove's dashboard rotated the secret: signatures with the old one get 401 and
        # the relay pauses the server, holding its events.
        port = int(mmolove.base_url.rsplit(":", 1)[1])
        async with running_sandbox({SERVER: ROTATED}, port=port) as rotated:
            held = [registered(f"setup-held-{n}") for n in range(3)]
            for body in held:
                await ingest(http, relay, body)

            async def paused() -> bool:
                async with http.get(f"{relay}/v1/status") as resp:
                    [server] = (await resp.json())["servers"]
                    return bool(server["paused"])

            await eventually(paused, timeout_s=20, what="the old secret to pause the server")
            assert not accepted_keys(rotated)

            rotate = await inside(
                f"{VENV}/bin/mmolove-relay", "secret", "set", input=ROTATED + "\n", timeout_s=180
            )
            assert "resumed:" in rotate.stdout, rotate.stdout
            assert set(accepted_keys(rotated)) == {key_of(body) for body in held}
            assert secret_file.read_text() == ROTATED + "\n"
            assert secret_file.stat().st_mode & 0o777 == 0o600
            previous = secret_file.with_name("secret.previous")
            assert previous.read_text() == SECRET + "\n"

        journal = booted.run("journalctl", "--no-pager", "-o", "cat").stdout
        for output in (journal, first.stdout, first.stderr, rotate.stdout, rotate.stderr):
            assert SECRET not in output
            assert ROTATED not in output
            assert WRONG not in output
            assert "alert-token" not in output
    print(f"setup: one `setup --yes` to a verified test event took {wall_s:.1f} s (no pip)")


# -- no systemd: a configuration file -------------------------------------------------------


async def test_without_systemd_setup_writes_a_config_the_relay_runs_with(tmp_path: Path) -> None:
    """--no-service (what a container or a laptop gets): a wrong secret writes nothing; the
    right one writes a 0600 secret and a config file that `test` proves; again, unchanged."""
    target = tmp_path / "relay"
    async with running_sandbox({SERVER: SECRET}) as mmolove:
        args = (
            *("setup", "--no-service", "--dir", str(target), "--server-id", SERVER),
            *("--secret-file", "-", "--endpoint", mmolove.url),
        )
        code, out, err = await cli(*args, stdin=WRONG.encode())
        assert code == 1, out + err
        assert "could not be proven" in err
        assert "nothing was changed" in err
        assert not target.exists()

        code, out, err = await cli(*args, stdin=SECRET.encode())
        assert code == 0, out + err
        config = target / "relay.toml"
        assert f"mmolove-relay --config {config} serve" in out
        assert "docker run" in out
        assert SECRET not in out + err
        assert (target / "secret").stat().st_mode & 0o777 == 0o600
        assert (target / "secret").read_text() == SECRET + "\n"

        code, proof, err = await cli("--config", str(config), "test")
        assert code == 0, proof + err
        assert "verified the signature" in proof

        code, out, err = await cli(*args, stdin=SECRET.encode())
        assert code == 0, out + err
        assert changes(out) == ["unchanged"] * 2, out  # the secret and the config file

        # A rotation to a secret MMOLove refuses stops before the file is touched.
        code, out, err = await cli("--config", str(config), "secret", "set", stdin=WRONG.encode())
        assert code == 1, out + err
        assert "copy the secret" in err
        assert (target / "secret").read_text() == SECRET + "\n"
        assert not (target / "secret.previous").exists()
        assert mmolove.sandbox.snapshot()["test_events"] == 3  # wrong one refused

"""The container image, built for real from the Dockerfile and run as a sidecar against the
sandbox.

No registry and no container engine are needed: the base image is a Debian bookworm root
made with debootstrap and imported into podman (both cached between runs), the image is
built with ``podman build --isolation=chroot``, and the relay runs in it with ``buildah run
--isolation chroot --network host``, which needs neither cgroups nor a daemon.
To rebuild the base (after changing ``debootstrap``), remove ``BASE_TAG`` with ``podman rmi``
and the tarball under ``~/.cache/mmolove-relay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.config.settings import Settings
from relay.sandbox import RunningSandbox, running_sandbox
from tests.harness import accepted_keys, in_progress, key_of, post
from tests.support import eventually, free_port, registered, require_tools, unavailable
from tests.systems import cache_dir, cache_lock, debootstrap, sh, tail

ROOT = Path(__file__).parent.parent
BASE_TAG = "localhost/mmolove-relay-base:bookworm"
# One tag per checkout, so test runs in several checkouts never use each other's image.
IMAGE_TAG = f"localhost/mmolove-relay:test-{hashlib.sha256(bytes(ROOT.resolve())).hexdigest()[:12]}"
RELAY_UID = 10001  # the image's non-root user
SERVER_ID = "srv-c1"
SECRET = "s3cret-container-5e1d"
INGEST_TOKEN = "ingest-tok-container-93ab"

# In the system step (-m system), alone: the module builds its image once (a module
# fixture), a build that takes both cores. A cold run debootstraps a Debian root first,
# hence the timeout.
pytestmark = [pytest.mark.system, pytest.mark.timeout(1800)]


# -- the base image and the build --------------------------------------------------------


def ensure_base_image() -> None:
    """Import the Debian root as ``BASE_TAG`` unless podman has it; debootstrap it first unless
    its tarball is cached. A lock keeps test runs of several checkouts from racing here."""
    with cache_lock():
        exists = subprocess.run(["podman", "image", "exists", BASE_TAG], check=False)
        if exists.returncode == 0:
            return
        tarball = cache_dir() / "debian-bookworm-minbase.tar"
        if not tarball.exists():
            debootstrap_base(tarball)
        sh("podman", "import", str(tarball), BASE_TAG, timeout_s=300, what="podman import")


def debootstrap_base(tarball: Path) -> None:
    root = tarball.with_suffix(".root")
    debootstrap(root, "python3,python3-venv,ca-certificates")
    # Half the root is package caches and docs that no image needs.
    for junk in (
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
    ):
        shutil.rmtree(root / junk)
        (root / junk).mkdir()
    # Trust the CAs this host added, so pip in the build works behind an intercepting proxy.
    local_cas = Path("/usr/local/share/ca-certificates")
    for ca in local_cas.glob("*.crt"):
        shutil.copy(ca, root / local_cas.relative_to("/") / ca.name)
    sh("chroot", str(root), "update-ca-certificates", timeout_s=120, what="update-ca-certificates")
    partial = tarball.with_suffix(".partial")
    sh("tar", "-C", str(root), "-cf", str(partial), ".", timeout_s=300, what="tar of the root")
    partial.rename(tarball)
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def image() -> str:
    """The relay's image, built from this checkout on the cached base; the build is timed."""
    require_tools(
        "podman", "buildah", "debootstrap", "runc", why="apt-get install them (see .ci/run)."
    )
    if os.geteuid() != 0:
        unavailable("building the image needs root (debootstrap, chroot isolation).")
    ensure_base_image()
    started = time.monotonic()
    sh(
        "podman",
        "build",
        "--isolation=chroot",
        "--pull=never",
        "--network=host",
        "--format=docker",  # the OCI format has no HEALTHCHECK
        f"--build-arg=BASE_IMAGE={BASE_TAG}",
        f"--tag={IMAGE_TAG}",
        str(ROOT),
        timeout_s=900,
        what="podman build",
    )
    size = json.loads(sh("podman", "image", "inspect", IMAGE_TAG, timeout_s=60, what="inspect"))
    print(
        f"image {IMAGE_TAG} built in {time.monotonic() - started:.1f} s, "
        f"{size[0]['Size'] / 1e6:.0f} MB"
    )
    return IMAGE_TAG


@pytest.fixture
def container(image: str) -> Iterator[str]:
    """A working container of the image; removed after the test."""
    name = sh("buildah", "from", "--pull-never", image, timeout_s=120, what="buildah from").strip()
    yield name
    sh("buildah", "rm", name, timeout_s=120, what="buildah rm")


# -- running the relay in it -------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        out += below
        todo += below
    return out


class InContainer:
    """``mmolove-relay serve`` under ``buildah run``; a task collects its log lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read(), name="container-stderr")

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace"))

    def logs(self, event: str) -> list[dict[str, Any]]:
        found = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == event:
                    found.append(record)
        return found

    async def wait_log(self, event: str, timeout_s: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while not self.logs(event):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                pytest.fail(f"no {event} from the relay in the container:\n{tail(*self.lines)}")
            await asyncio.sleep(0.1)
        return self.logs(event)[0]

    def relay_pid(self) -> int:
        """The relay's own process, not buildah's chroot helper that started it."""
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if argv[0] == b"/opt/mmolove-relay/bin/python3" and argv[2:3] == [b"serve"]:
                    return pid
        pytest.fail("the relay process is not below buildah run")

    async def stop(self) -> None:
        """Kill whatever still runs, buildah and everything below it."""
        if self.proc.returncode is None:  # once reaped, its pid may belong to someone else
            for pid in [*descendants(self.proc.pid), self.proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await self.proc.wait()
        await self._reader


async def serve_in(run: list[str]) -> InContainer:
    """``mmolove-relay serve`` as the image's entry point runs it, under ``run``."""
    proc = await asyncio.create_subprocess_exec(
        *run,
        "mmolove-relay",
        "serve",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return InContainer(proc)


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox({SERVER_ID: SECRET}) as running:
        yield running


def buildah_run(container: str, env: dict[str, str], volumes: list[str]) -> list[str]:
    args = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
    for name, value in env.items():
        args += ["--env", f"{name}={value}"]
    for volume in volumes:
        args += ["--volume", volume]
    return [*args, container, "--"]


async def test_image_runs_as_a_sidecar_and_relays_an_event_to_the_sandbox(
    container: str, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """Pod-network listen with a token, secret from /run/secrets, outbox on the volume,
    non-root, a working HEALTHCHECK, and a clean stop on SIGTERM."""
    data, secret = tmp_path / "data", tmp_path / "secret"
    data.mkdir()
    secret.write_text(SECRET + "\n")
    for path in (data, secret):
        os.chown(path, RELAY_UID, RELAY_UID)
    secret.chmod(0o400)
    port = free_port()
    env = {
        "MMOLOVE_SERVER_ID": SERVER_ID,
        "MMOLOVE_ENDPOINT": sandbox.url,
        "MMOLOVE_RELAY_LISTEN": f"0.0.0.0:{port}",
        "MMOLOVE_RELAY_INGEST_TOKEN": INGEST_TOKEN,
    }
    run = buildah_run(container, env, [f"{data}:/data", f"{secret}:/run/secrets/mmolove-secret:ro"])
    relay = await serve_in(run)
    proc = relay.proc
    try:
        ready = await relay.wait_log("relay.ready")
        assert ready["listen"] == f"http://0.0.0.0:{port}"
        assert ready["outbox"] == "/data/outbox.db"
        url = f"http://127.0.0.1:{port}"
        event = {
            "event": "registered",
            "token": "mmref-container",
            "referee_identity": "player-c1",
            "server_event_id": "reg-player-c1",
        }
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/events", json=event) as resp:
                assert resp.status == 401, "off loopback, ingest must require the token"
            auth = {"Authorization": f"Bearer {INGEST_TOKEN}"}
            async with http.post(url + "/v1/events", json=event, headers=auth) as resp:
                assert resp.status == 202, await resp.text()

        deadline = time.monotonic() + 30
        while not sandbox.sandbox.snapshot()["accepted"]:
            assert time.monotonic() < deadline, (
                f"nothing reached the sandbox:\n{tail(*relay.lines)}"
            )
            await asyncio.sleep(0.1)
        [accepted] = sandbox.sandbox.snapshot()["accepted"]
        assert (accepted["server_id"], accepted["token"]) == (SERVER_ID, "mmref-container")

        healthcheck = await asyncio.to_thread(image_healthcheck, IMAGE_TAG)
        await asyncio.to_thread(
            sh, *run, *healthcheck, timeout_s=120, what="the image's HEALTHCHECK"
        )

        os.kill(relay.relay_pid(), signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0, tail(*relay.lines)
        await relay.wait_log("relay.stopped")
    finally:
        await relay.stop()

    outbox = data / "outbox.db"
    assert (outbox.stat().st_uid, stat.S_IMODE(outbox.stat().st_mode)) == (RELAY_UID, 0o600)
    output = "".join(relay.lines)
    assert SECRET not in output
    assert INGEST_TOKEN not in output


def image_healthcheck(image: str) -> list[str]:
    """The HEALTHCHECK command of the image, as an argument list."""
    inspected = json.loads(
        sh("buildah", "inspect", "--type", "image", image, timeout_s=60, what="buildah inspect")
    )
    test: list[str] = inspected["Docker"]["config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD", test
    return test[1:]


def test_image_refuses_to_listen_on_the_pod_network_without_a_token(container: str) -> None:
    """The image listens on 0.0.0.0 by default; without a token it stops with one clear line."""
    env = {"MMOLOVE_SERVER_ID": SERVER_ID, "MMOLOVE_SECRET": "x"}
    done = subprocess.run(
        [*buildah_run(container, env, []), "mmolove-relay", "serve"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert "MMOLOVE_RELAY_INGEST_TOKEN" in done.stderr
    assert "not loopback" in done.stderr


async def test_as_the_snippets_run_it_a_killed_container_loses_nothing(
    container: str, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """As docs/deploy.md's Kubernetes and compose snippets run it: both secrets mounted as files
    under /run/secrets (the token through MMOLOVE_RELAY_INGEST_TOKEN_FILE), the outbox on a
    volume. Killed mid-delivery and started again on the same volume, it loses nothing."""
    data, secrets = tmp_path / "data", tmp_path / "secrets"
    data.mkdir()
    secrets.mkdir()
    (secrets / "mmolove-secret").write_text(SECRET + "\n")
    (secrets / "ingest-token").write_text(INGEST_TOKEN + "\n")
    for path in (data, secrets, *secrets.iterdir()):
        os.chown(path, RELAY_UID, RELAY_UID)
    for path in secrets.iterdir():
        path.chmod(0o400)
    port = free_port()
    env = {
        "MMOLOVE_SERVER_ID": SERVER_ID,
        "MMOLOVE_ENDPOINT": sandbox.url,
        "MMOLOVE_RELAY_LISTEN": f"0.0.0.0:{port}",
        "MMOLOVE_RELAY_INGEST_TOKEN_FILE": "/run/secrets/ingest-token",
    }
    run = buildah_run(container, env, [f"{data}:/data", f"{secrets}:/run/secrets:ro"])
    url = f"http://127.0.0.1:{port}"
    bodies = [registered(f"pod-{n}") for n in range(40)]
    sandbox.sandbox.faults.latency_ms = 200  # so deliveries are on the wire at the kill

    relay = await serve_in(run)
    try:
        await relay.wait_log("relay.ready")
        async with aiohttp.ClientSession() as http:
            assert (await post(http, url, bodies[0]))[0] == 401
            for body in bodies:
                status, answer, _ = await post(http, url, body, token=INGEST_TOKEN)
                assert status == 202, answer
        await eventually(
            lambda: len(accepted_keys(sandbox)) >= 5 and in_progress(sandbox),
            timeout_s=30,
            what="deliveries under way",
        )
    finally:
        await relay.stop()  # SIGKILL, the whole container
    killed_at = len(accepted_keys(sandbox))
    sandbox.sandbox.faults.latency_ms = 0

    again = await serve_in(run)
    try:
        await again.wait_log("relay.ready")
        sent = {key_of(body) for body in bodies}
        await eventually(
            lambda: set(accepted_keys(sandbox)) >= sent, timeout_s=60, what="every event"
        )
    finally:
        await again.stop()

    delivered = accepted_keys(sandbox)
    snapshot = sandbox.sandbox.snapshot()
    duplicates = snapshot["duplicates"] + sum(count - 1 for count in delivered.values())
    print(
        f"container: {len(sent)} events sent, {len(set(delivered) & sent)} delivered "
        f"({killed_at} before the kill), {len(sent - set(delivered))} lost, "
        f"{duplicates} duplicate sends (answers lost to the kill, absorbed by MMOLove)"
    )
    assert killed_at < len(sent), "everything was delivered before the kill"
    assert set(delivered) == sent
    # One kill: at most the attempts then in flight are sent again (MMOLove absorbs them).
    concurrency = next(f.default for f in fields(Settings) if f.name == "concurrency")
    assert snapshot["duplicate_sends"] <= concurrency
    output = "".join(relay.lines + again.lines)
    assert SECRET not in output
    assert INGEST_TOKEN not in output


def test_the_installed_package_prints_the_example_config(container: str) -> None:
    """What pip installed, not the source tree: the example file ships as package data."""
    done = subprocess.run(
        [*buildah_run(container, {}, []), "mmolove-relay", "check-config", "--example"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (Path(__file__).parent.parent / "relay" / "relay.example.toml").read_text(
        encoding="utf-8"
    )

"""The client examples in ``examples/``, each run for real against a relay and the sandbox.

Every example is a separate program in its own language (CI installs the toolchains in
``.ci/run``). Each test runs one as a subprocess, with ``MMOLOVE_RELAY_URL`` pointing at a
relay on loopback, and checks what the example printed and what landed at the sandbox.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.sandbox import RunningSandbox
from tests.support import SERVER, Relay, StartRelay

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
README = ROOT / "README.md"
# What every example prints for each event it reports.
OUTCOME = re.compile(r"mmolove: (\S+) (done|rejected|spooled) ?(.*)$")
RUN_TIMEOUT_S = 20
TOOLS = {
    "php": ["php"],
    "node": ["node"],
    "python": ["python3"],
    "csharp": ["mcs", "mono"],
    "go": ["go"],
    "shell": ["bash", "curl"],
    "java": ["javac", "java"],
    "cpp": ["g++", "curl-config"],
    "lua": ["lua5.1"],
}
SOURCES = {
    "php": "referral.php",
    "node": "referral.mjs",
    "python": "referral.py",
    "csharp": "Referral.cs",
    "go": "referral.go",
    "shell": "referral.sh",
    "java": "Referral.java",
    "cpp": "referral.cpp",
    "lua": "referral.lua",
}


@dataclass(frozen=True)
class Client:
    """One example, ready to run: the command takes ``ACCOUNT_ID REQUEST_URI [COOKIE]``."""

    name: str
    command: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    code: int
    output: str

    @property
    def outcomes(self) -> list[tuple[str, str, str]]:
        """(server_event_id, done|rejected|spooled, detail) for each line reporting one."""
        found = (OUTCOME.search(line) for line in self.output.splitlines())
        return [(m[1], m[2], m[3]) for m in found if m]


def _build(name: str, build_dir: Path) -> tuple[str, ...]:
    """Compile the examples that need it, once per session; the command that runs each."""
    for tool in TOOLS[name]:
        # Not a skip: an example nobody runs is an example that rots.
        assert shutil.which(tool), f"{tool} is not installed; .ci/run installs the toolchains"
    if name == "go":
        binary = build_dir / "referral-go"
        # A private build cache, so the build works for any user and leaves no trace.
        env = {**os.environ, "GOCACHE": str(build_dir / "gocache"), "HOME": str(build_dir)}
        _check(["go", "build", "-o", str(binary), str(EXAMPLES / SOURCES[name])], env)
        return (str(binary),)
    if name == "csharp":
        exe = build_dir / "Referral.exe"
        _check(["mcs", "-r:System.Net.Http", f"-out:{exe}", str(EXAMPLES / SOURCES[name])])
        return ("mono", str(exe))
    if name == "java":
        _check(["javac", "-d", str(build_dir), str(EXAMPLES / SOURCES[name])])
        return ("java", "-cp", str(build_dir), "Referral")
    if name == "cpp":
        binary = build_dir / "referral-cpp"
        _check(["g++", "-std=c++17", "-o", str(binary), str(EXAMPLES / SOURCES[name]), "-lcurl"])
        return (str(binary),)
    interpreter = {
        "php": "php",
        "node": "node",
        "python": "python3",
        "shell": "bash",
        "lua": "lua5.1",
    }[name]
    return (interpreter, str(EXAMPLES / SOURCES[name]))


def _check(argv: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, f"{argv[0]} failed:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="session", params=list(SOURCES))
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Client:
    name = request.param
    return Client(name, _build(name, tmp_path_factory.mktemp(f"build-{name}")))


@dataclass
class Game:
    """A game server's point of view: runs the example in its own directory (its spool)."""

    client: Client
    home: Path

    @property
    def spool(self) -> Path:
        return self.home / "mmolove-spool.jsonl"

    async def run(self, relay_url: str, *args: str) -> Run:
        env = {**os.environ, "MMOLOVE_RELAY_URL": relay_url}
        env.pop("MMOLOVE_SPOOL", None)
        proc = await asyncio.create_subprocess_exec(
            *self.client.command,
            *args,
            cwd=self.home,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        stdout, output = proc.stdout, bytearray()

        async def drain() -> None:
            # Into ``output`` as it comes, so a run cut short still shows what it printed.
            while chunk := await stdout.read(65536):
                output.extend(chunk)
            await proc.wait()

        try:
            async with asyncio.timeout(RUN_TIMEOUT_S):
                await drain()
        except TimeoutError:
            # SIGQUIT first: Mono and the JVM print every thread's stack on it, so a stall
            # names where it is stuck. Anything still running a moment later is killed.
            proc.send_signal(signal.SIGQUIT)
            try:
                async with asyncio.timeout(3):
                    await drain()
            except TimeoutError:
                proc.kill()
                await drain()
            raise AssertionError(
                f"the {self.client.name} example did not exit within {RUN_TIMEOUT_S} s; "
                f"it printed:\n{output.decode(errors='replace')}"
            ) from None
        assert proc.returncode is not None
        return Run(proc.returncode, output.decode(errors="replace"))


@pytest.fixture
def game(client: Client, tmp_path: Path) -> Game:
    home = tmp_path / "game"
    home.mkdir()
    return Game(client, home)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def accepted(token: str, account: str) -> list[dict[str, str]]:
    """What the sandbox records once both events of one referral have landed, in order."""
    common = {"server_id": SERVER, "token": token, "outcome": "accepted"}
    return [
        {**common, "event": "registered", "server_event_id": f"reg-{account}"},
        {**common, "event": "qualified", "server_event_id": f"qual-{account}-level10"},
    ]


async def landed(sandbox: RunningSandbox, count: int, timeout_s: float = 10.0) -> list[Any]:
    """The sandbox's accepted events, once there are ``count`` of them."""
    deadline = time.monotonic() + timeout_s
    while len(records := sandbox.sandbox.snapshot()["accepted"]) < count:
        assert time.monotonic() < deadline, f"{len(records)} of {count} events landed: {records}"
        await asyncio.sleep(0.02)
    return records


async def settled(relay: Relay, timeout_s: float = 10.0) -> dict[str, int]:
    """The relay's outbox counts by status (zeros left out), once nothing is on its way."""
    deadline = time.monotonic() + timeout_s
    while True:
        _, status = await relay.get("/v1/status")
        counts = {name: n for name, n in status["counts"].items() if n}
        if not {"pending", "in_flight"} & counts.keys() or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.02)


def ids(account: str) -> list[str]:
    """The stable server_event_ids the examples derive from the account id."""
    return [f"reg-{account}", f"qual-{account}-level10"]


def done(account: str, status: int) -> list[tuple[str, str, str]]:
    return [(name, "done", str(status)) for name in ids(account)]


async def test_referral_from_the_query_string_lands_and_a_rerun_is_a_duplicate(
    game: Game, sandbox: RunningSandbox, start_relay: StartRelay
) -> None:
    """?mmref= is URL-decoded; stable server_event_ids make the second run change nothing."""
    relay = await start_relay()
    token = "mmref-q+7842"

    run = await game.run(relay.url, "7842", "/register?lang=en&mmref=mmref-q%2B7842")
    assert (run.code, run.outcomes) == (0, done("7842", 202)), run.output
    assert await landed(sandbox, 2) == accepted(token, "7842")
    referral = sandbox.sandbox.snapshot()["referrals"][f"{SERVER}/{token}"]
    assert (referral["state"], referral["referee_identity"]) == ("qualified", "7842")

    rerun = await game.run(relay.url, "7842", "/register?lang=en&mmref=mmref-q%2B7842")
    assert (rerun.code, rerun.outcomes) == (0, done("7842", 200)), rerun.output
    assert await settled(relay) == {"delivered": 2}
    assert sandbox.sandbox.snapshot()["accepted"] == accepted(token, "7842")


async def test_without_a_query_token_the_mmref_cookie_is_used(
    game: Game, sandbox: RunningSandbox, start_relay: StartRelay
) -> None:
    relay = await start_relay()
    run = await game.run(relay.url, "7843", "/register?lang=en", "theme=dark; mmref=mmref-c-7843")
    assert (run.code, run.outcomes) == (0, done("7843", 202)), run.output
    assert await landed(sandbox, 2) == accepted("mmref-c-7843", "7843")


async def test_a_player_who_was_not_referred_reports_nothing(
    game: Game, start_relay: StartRelay
) -> None:
    relay = await start_relay()
    run = await game.run(relay.url, "7844", "/register?lang=en", "theme=dark")
    assert (run.code, run.outcomes) == (0, []), run.output
    assert "7844 was not referred" in run.output
    assert await settled(relay) == {}


async def test_a_rejected_event_is_logged_with_the_relays_message_and_not_kept(
    game: Game, sandbox: RunningSandbox, start_relay: StartRelay
) -> None:
    """A 4xx is final: one log line per event with the field and message, nothing spooled."""
    relay = await start_relay()
    run = await game.run(relay.url, "7845", "/register?mmref=" + "x" * 600)
    assert run.code == 0, run.output
    assert [(n, o) for n, o, _ in run.outcomes] == [(n, "rejected") for n in ids("7845")], (
        run.output
    )
    for _, _, detail in run.outcomes:
        assert detail.startswith("422 "), detail
        assert '"field": "token"' in detail
        assert "the limit is 512" in detail
    assert sorted(p.name for p in game.home.iterdir()) == []
    assert await settled(relay) == {}
    assert sandbox.sandbox.snapshot()["requests"] == 0


async def test_while_the_relay_is_down_or_full_events_are_spooled_then_resent(
    game: Game,
    sandbox: RunningSandbox,
    start_relay: StartRelay,
    closed_port: int,
    tmp_path: Path,
) -> None:
    """Refused and 503 both spool; the next run resends the spool first, and all lands once."""
    down = await game.run(f"http://127.0.0.1:{closed_port}", "7846", "/register?mmref=mmref-7846")
    assert down.code == 0, down.output
    assert [(n, o) for n, o, _ in down.outcomes] == [(n, "spooled") for n in ids("7846")], (
        down.output
    )
    assert len(game.spool.read_text().splitlines()) == 2

    # The disk holding the outbox is "nearly full": the relay answers 503 + Retry-After.
    full = await start_relay(min_free_bytes=10**18, db_path=tmp_path / "full.db")
    busy = await game.run(full.url, "7847", "/register?mmref=mmref-7847")
    assert busy.code == 0, busy.output
    respooled = [(n, "spooled") for n in ids("7846") + ids("7847")]
    assert [(n, o) for n, o, _ in busy.outcomes] == respooled, busy.output
    assert all("503" in detail for _, _, detail in busy.outcomes), busy.output
    assert len(game.spool.read_text().splitlines()) == 4

    relay = await start_relay()
    back = await game.run(relay.url, "7848", "/register?mmref=mmref-7848")
    assert back.code == 0, back.output
    resent = [*done("7846", 202), *done("7847", 202), *done("7848", 202)]
    assert back.outcomes == resent, back.output
    assert sorted(p.name for p in game.home.iterdir()) == []  # spool resent and removed

    records = await landed(sandbox, 6)
    for account in ("7846", "7847", "7848"):
        token = f"mmref-{account}"
        assert [r for r in records if r["token"] == token] == accepted(token, account)
    assert len(records) == 6
    assert await settled(relay) == {"delivered": 6}


def test_every_example_is_run_by_these_tests_and_linked_from_the_readme() -> None:
    """A new example must be added to SOURCES, or it would go untested."""
    suffixes = {Path(source).suffix for source in SOURCES.values()}
    programs = {p.name for p in EXAMPLES.iterdir() if p.suffix in suffixes}
    assert programs == set(SOURCES.values())
    readme = README.read_text()
    for source in SOURCES.values():
        assert f"(examples/{source})" in readme


def test_the_readme_shows_the_php_example_as_it_is() -> None:
    """The inline copy cannot drift from the file the tests run."""
    inline = re.search(r"```php\n(.*?)```", README.read_text(), re.DOTALL)
    assert inline is not None
    assert len(inline[1].splitlines()) > 40
    assert inline[1] in (EXAMPLES / SOURCES["php"]).read_text()

"""The command line starts light: ``--help``, the read commands and ``check-config`` run in a
fresh interpreter without importing aiohttp, the daemon, the sandbox, the console or jinja2.

Start-up time is measured by the bench (``python -m bench --only cli``); this checks the cause.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HEAVY = ["aiohttp", "aiohttp.client", "relay.daemon", "relay.sandbox", "relay.console", "jinja2"]

# Runs one command through the console script's entry point, in process, then prints its exit
# code and the modules it imported.
_RUN = """
import contextlib, io, json, sys
from relay.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A loopback port that is bound but not listening: a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["--help"], 0),
        (["status", "--help"], 0),
        (["setup", "--help"], 0),
        (["secret", "set", "--help"], 0),
        (["doctor", "--help"], 0),
        (["status", "--url", "{url}"], 4),
        (["events", "list", "--url", "{url}"], 4),
        (["player", "p1", "--url", "{url}"], 4),
        (["rejected", "--url", "{url}"], 4),
        (["sources", "--url", "{url}"], 4),
        (["sources", "try", "--help"], 0),
        (["check-config"], 0),
    ],
)
def test_command_imports_nothing_heavy(
    command: list[str], code: int, refusing_url: str, tmp_path: Path
) -> None:
    # No outbox file in the working directory, so an unreachable relay ends the command (4)
    # rather than sending it to read the file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMOLOVE")}
    env.pop("STATE_DIRECTORY", None)
    env.update(MMOLOVE_SERVER_ID="srv-1", MMOLOVE_SECRET="secret-1")
    argv = [arg.format(url=refusing_url) for arg in command]
    done = subprocess.run(
        [sys.executable, "-c", _RUN, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["code"] == code
    imported = [name for name in HEAVY if name in result["modules"]]
    assert not imported, f"mmolove-relay {' '.join(argv)} imported {imported}"


def test_the_daemon_loads_no_database_driver_or_template_engine_before_it_needs_one() -> None:
    """Loading what ``serve`` runs (the command module, and with it the daemon, the console
    and the store) imports neither asyncpg nor aiomysql nor Jinja2: those load where a source,
    a PostgreSQL outbox or the console's first page needs them. Together they were a quarter
    of the CPU a relay spent before it was ready, and the tests start hundreds of relays."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, relay.cli.run; print(json.dumps(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    modules = json.loads(done.stdout)
    assert "relay.daemon" in modules  # what serve runs is loaded, so the check means something
    loaded = [name for name in ("asyncpg", "aiomysql", "jinja2") if name in modules]
    assert not loaded, f"serve imported {loaded} before needing them"

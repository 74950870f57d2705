"""``python -m bench.login_guess``: how fast a client off the machine can guess the console's
token. A relay listens on this host's non-loopback address with an ingest token (as a
sidecar does); one client posts wrong tokens to ``/ui/login`` and counts the answers.

A 401 is a guess the relay checked; a 429 is one it refused to check.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import tempfile
import time
from pathlib import Path

import aiohttp

from relay.config.settings import Settings
from relay.config.values import Listen, Secret, ServerConfig
from relay.daemon import RunningRelay, run

CONCURRENCY = 8


def outward_address() -> str:
    """The address this host would use to reach another machine (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routed, never answered
        return str(probe.getsockname()[0])


async def guess(url: str, guesses: int) -> tuple[collections.Counter[int], float]:
    """Post ``guesses`` wrong tokens, CONCURRENCY at a time; the statuses and the seconds."""
    statuses: collections.Counter[int] = collections.Counter()
    left = iter(range(guesses))
    async with aiohttp.ClientSession() as http:

        async def worker() -> None:
            for n in left:
                form = {"token": f"wrong-{n}"}
                async with http.post(url, data=form, allow_redirects=False) as resp:
                    await resp.read()
                    statuses[resp.status] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return statuses, time.perf_counter() - started


async def measure(guesses: int, address: str) -> None:
    with tempfile.TemporaryDirectory(prefix="login-guess-") as tmp:
        settings = Settings(
            servers=(ServerConfig("srv-1", Secret("secret-1-for-bench")),),
            endpoint="http://127.0.0.1:9",  # nothing is delivered in this run
            listen=Listen(address, 0),
            db_path=Path(tmp) / "outbox.db",
            ingest_token=Secret("the-real-ingest-token-for-bench"),
        )
        shutdown = asyncio.Event()
        ready: asyncio.Future[RunningRelay] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run(settings, shutdown=shutdown, on_ready=ready.set_result))
        await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            await task
        try:
            statuses, seconds = await guess(ready.result().url + "/ui/login", guesses)
        finally:
            shutdown.set()
            await task
    checked = statuses[401]
    print(f"{guesses} wrong tokens from {address} in {seconds:.2f} s: {dict(statuses)}")
    print(f"guesses checked: {checked} ({checked / seconds:.0f} a second)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.login_guess", description=__doc__)
    parser.add_argument("--guesses", type=int, default=3000)
    parser.add_argument("--address", help="a non-loopback address of this host (default: found)")
    args = parser.parse_args()
    asyncio.run(measure(args.guesses, args.address or outward_address()))


if __name__ == "__main__":
    main()

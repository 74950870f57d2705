"""The console's login against a client off the machine (issue 25): guessing the token is
throttled per address, logged and counted; the session cookie expires and is signed with a
secret of the installation; it is ``Secure`` behind a TLS proxy (RELIABILITY.md, "Attacks").

A relay listening on this host's non-loopback address sees the test's client as a remote
peer; a client bound to another 127.x.y.z address is a different peer on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from relay.config.settings import Settings
from relay.config.values import Listen, Secret
from relay.console import login, security
from relay.console.login import LOCK_CAP_S, LOCK_S, Throttle
from tests.support import Relay, StartRelay, running_relay
from tests.test_console import host_address

TOKEN = "console-login-test-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def remote_relay(start_relay: StartRelay, **overrides: Any) -> Relay:
    return await start_relay(
        listen=Listen(host_address(), 0), ingest_token=Secret(TOKEN), **overrides
    )


async def post_login(
    http: aiohttp.ClientSession, url: str, token: str, headers: dict[str, str] | None = None
) -> aiohttp.ClientResponse:
    async with http.post(
        url + "/ui/login", data={"token": token}, headers=headers, allow_redirects=False
    ) as resp:
        await resp.read()
        return resp


async def logins_counted(relay: Relay) -> dict[str, float]:
    async with relay.http.get(relay.url + "/metrics", headers=BEARER) as resp:
        text = await resp.text()
    found = re.findall(r'mmolove_relay_console_logins_total\{result="(\w+)"\} (\S+)', text)
    return {result: float(value) for result, value in found}


async def test_the_sixth_wrong_token_from_an_address_within_a_minute_gets_429(
    start_relay: StartRelay,
) -> None:
    """Before: 3,000 wrong tokens all answered 401 at hundreds a second, unlogged."""
    relay = await remote_relay(start_relay)
    with capture_logs() as logs:
        answers = [await post_login(relay.http, relay.url, f"guess-{n}") for n in range(5)]
        locked = await post_login(relay.http, relay.url, "guess-5")
        # The right token gets no answer either while locked: a hit would tell the guesser.
        right = await post_login(relay.http, relay.url, TOKEN)
    assert [answer.status for answer in answers] == [401] * 5
    assert (locked.status, right.status) == (429, 429)
    assert 0 < int(locked.headers["Retry-After"]) <= LOCK_S

    failed = [line for line in logs if line["event"] == "console.login_failed"]
    assert [line["peer"] for line in failed] == [host_address()] * 5
    assert failed[-1]["locked_for_s"] == LOCK_S
    logged = json.dumps(logs, default=str)
    assert "guess-" not in logged
    assert TOKEN not in logged
    assert await logins_counted(relay) == {"wrong_token": 5, "rate_limited": 2}


async def test_a_lockout_is_per_address_and_a_right_token_clears_the_count(
    start_relay: StartRelay,
) -> None:
    relay = await start_relay(ingest_token=Secret(TOKEN))
    # Loopback peers under another host name get the login form like remote ones.
    proxy_like = {"Host": "console.example"}

    async def from_address(address: str, token: str) -> int:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            return (await post_login(http, relay.url, token, proxy_like)).status

    for n in range(4):
        assert await from_address("127.0.0.2", f"guess-{n}") == 401
    assert await from_address("127.0.0.2", TOKEN) == 303  # the operator, after 4 typos
    assert [await from_address("127.0.0.2", "typo") for _ in range(6)] == [401] * 5 + [429]
    assert await from_address("127.0.0.3", TOKEN) == 303  # another address is not locked


async def test_many_addresses_cannot_grow_the_table_past_its_bound(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attacker with more addresses than the table holds pushes out the oldest entries
    (here a lockout) instead of growing the relay's memory."""
    monkeypatch.setattr(login, "TRACKED_ADDRESSES", 20)
    relay = await start_relay(ingest_token=Secret(TOKEN))
    headers = {"Host": "console.example"}

    async def wrong_from(address: str) -> int:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as http:
            return (await post_login(http, relay.url, "guess", headers)).status

    assert [await wrong_from("127.0.1.1") for _ in range(6)][-1] == 429
    for n in range(20):
        assert await wrong_from(f"127.0.2.{n + 1}") == 401
    assert await wrong_from("127.0.1.1") == 401  # forgotten: the table held 20 at most


def test_lockouts_grow_for_repeat_offenders_up_to_a_cap_and_are_forgotten() -> None:
    throttle, address, now = Throttle(), "203.0.113.7", 1000.0
    locks = []
    for _ in range(9):
        lock = [throttle.failed(address, now + n) for n in range(5)]
        assert lock[:4] == [0.0] * 4  # five tries a minute before each lockout
        locks.append(lock[4])
        now += lock[4] + 5
        assert throttle.wait_s(address, now) == 0.0
    assert locks == [LOCK_S * 2**n for n in range(6)] + [LOCK_CAP_S] * 3
    now += LOCK_CAP_S + 1  # an hour without a lockout
    assert [throttle.failed(address, now + n) for n in range(5)][-1] == LOCK_S


def test_failures_older_than_a_minute_do_not_count_and_ipv6_counts_by_64() -> None:
    throttle = Throttle()
    assert {throttle.failed("198.51.100.1", 60.0 * n) for n in range(10)} == {0.0}
    for n in range(4):
        throttle.failed(f"2001:db8:1:2::{n}", 0.0)
    assert throttle.failed("2001:db8:1:2:ffff::1", 0.0) == LOCK_S
    assert throttle.wait_s("2001:db8:1:2::99", 1.0) == LOCK_S - 1
    assert throttle.wait_s("2001:db8:1:3::1", 1.0) == 0.0


async def session_from_login(relay: Relay) -> tuple[str, str]:
    """A login's cookie value and its Set-Cookie header."""
    async with aiohttp.ClientSession() as http:
        answer = await post_login(http, relay.url, TOKEN)
    assert answer.status == 303
    return answer.cookies[security.COOKIE].value, answer.headers["Set-Cookie"]


async def let_in(relay: Relay, cookie: str) -> bool:
    headers = {"Cookie": f"{security.COOKIE}={cookie}"}
    async with relay.http.get(
        relay.url + "/ui/events", headers=headers, allow_redirects=False
    ) as resp:
        assert resp.status in (200, 303)
        return resp.status == 200


async def test_a_session_cookie_differs_per_login_expires_and_is_not_derived_from_the_token(
    start_relay: StartRelay,
) -> None:
    relay = await remote_relay(start_relay)
    first, set_cookie = await session_from_login(relay)
    second, _ = await session_from_login(relay)
    assert first != second
    assert f"Max-Age={security.SESSION_S}" in set_cookie
    assert "Secure" not in set_cookie  # plain HTTP from off the machine
    assert await let_in(relay, first)
    assert await let_in(relay, second)

    # The cookie the relay used to give: the token's HMAC over a constant, valid forever.
    old = hmac.new(TOKEN.encode(), b"mmolove-relay console session", hashlib.sha256)
    assert not await let_in(relay, old.hexdigest())
    key = await security.SessionKey(relay.handle.outbox.records).get()
    now = time.time()
    assert await let_in(relay, security.session_cookie(key, TOKEN, now))
    expired = security.session_cookie(key, TOKEN, now - security.SESSION_S - 1)
    assert not await let_in(relay, expired)
    tampered = first.replace(first.split(".")[0], str(int(now) + 10 * security.SESSION_S), 1)
    assert not await let_in(relay, tampered)


async def test_a_cookie_survives_a_restart_but_not_a_new_token_or_installation(
    settings: Settings, tmp_path: Path
) -> None:
    remote = replace(settings, listen=Listen(host_address(), 0), ingest_token=Secret(TOKEN))
    async with running_relay(remote) as relay:
        cookie, _ = await session_from_login(relay)
    async with running_relay(remote) as restarted:
        assert await let_in(restarted, cookie)  # the installation secret is in the outbox
    async with running_relay(replace(remote, ingest_token=Secret(TOKEN + "-new"))) as rotated:
        assert not await let_in(rotated, cookie)
    async with running_relay(replace(remote, db_path=tmp_path / "other.db")) as other:
        assert not await let_in(other, cookie)


async def test_the_cookie_is_secure_behind_a_tls_proxy_on_this_machine_only(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    tls = {"Host": "console.example", "X-Forwarded-Proto": "https"}
    local = await start_relay(ingest_token=Secret(TOKEN))
    remote = await remote_relay(start_relay, db_path=tmp_path / "remote.db")
    async with aiohttp.ClientSession() as http:
        proxied = await post_login(
            http, local.url, TOKEN, {**tls, "Origin": "https://console.example"}
        )
        assert proxied.status == 303
        assert "Secure" in proxied.headers["Set-Cookie"]
        plain = await post_login(http, local.url, TOKEN, {"Host": "console.example"})
        assert "Secure" not in plain.headers["Set-Cookie"]
        # From off the machine the header is the client's own claim: not believed.
        forged = await post_login(http, remote.url, TOKEN, {"X-Forwarded-Proto": "https"})
        assert forged.status == 303
        assert "Secure" not in forged.headers["Set-Cookie"]


async def test_a_cookie_made_by_one_replica_of_a_postgresql_fleet_lets_in_at_another(
    start_relay: StartRelay, pg_url: str, pg_password: str | None
) -> None:
    database = {"db_url": pg_url, "db_password": Secret(pg_password) if pg_password else None}
    a, b = [await remote_relay(start_relay, **database) for _ in range(2)]
    cookie, _ = await session_from_login(a)
    assert await let_in(b, cookie)
    assert await let_in(a, (await session_from_login(b))[0])


async def test_a_replica_that_lost_the_race_to_create_the_key_reads_it_again(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas that start on a new database may both write the key: the one whose key
    was replaced reads the stored one when a cookie made with it arrives."""
    monkeypatch.setattr(security, "_RELOAD_S", 0.0)
    relay = await remote_relay(start_relay)
    mine, _ = await session_from_login(relay)  # this relay holds the key it wrote
    records = relay.handle.outbox.records
    for n, name in enumerate(security._KEY_MARKS):  # what the other replica wrote
        await records.set_mark(name, float(n))
    theirs = security.session_cookie(await security.SessionKey(records).get(), TOKEN, time.time())
    assert await let_in(relay, theirs)
    assert not await let_in(relay, mine)  # the key this relay wrote is gone


@pytest.mark.parametrize(
    "cookie",
    [b"", b"..", b"x", b"99999999999999.a.b", "١٢٣٤٥٦٧٨٩٠١.n.m".encode(), b"9999999999.\xff.\xfe"],
)
async def test_a_malformed_session_cookie_leads_to_the_login_form(
    start_relay: StartRelay, cookie: bytes
) -> None:
    relay = await remote_relay(start_relay)
    host, port = relay.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(  # raw bytes: a client library would not send a cookie that is not UTF-8
        b"GET /ui/events HTTP/1.1\r\nHost: %s\r\nCookie: %s=%s\r\nConnection: close\r\n\r\n"
        % (host.encode(), security.COOKIE.encode(), cookie)
    )
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.split()[1] == b"303"  # to the login form, not a crash

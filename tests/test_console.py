"""The web console in a real Chromium, against a real relay and the sandbox.

One browser serves the whole module; each test opens its own context (cookies apart) and
saves a screenshot of its page under its tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import shutil
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from relay.config.settings import Settings
from relay.config.values import Listen, Secret, ServerConfig
from relay.console.views import PAGE
from relay.sandbox import RunningSandbox, running_sandbox
from tests.alert_receiver import Receiver, alerting, receiving, wrong_secret
from tests.support import (
    SECRET,
    SERVER,
    Relay,
    StartRelay,
    eventually,
    qualified,
    registered,
    running_relay,
    unavailable,
)
from tests.test_operate import dead_referral
from tests.test_rejected import rejected

# The browser lives as long as the module, so the tests and their fixtures share its loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")
XSS = "<img src=x onerror=alert(1)>"
TOKEN = "console-test-token"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    path = shutil.which("chromium")
    if path is None:
        unavailable("chromium not found; apt-get install chromium (scripts/system-packages.txt)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=path, args=["--no-sandbox", "--headless"]
        )
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox({SERVER: SECRET}) as sb:
        yield sb


@pytest_asyncio.fixture(loop_scope="module")
async def start_relay(settings: Settings) -> AsyncIterator[StartRelay]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(custom: Settings | None = None, **overrides: Any) -> Relay:
            return await stack.enter_async_context(
                running_relay(replace(custom or settings, **overrides))
            )

        yield start


@pytest_asyncio.fixture(loop_scope="module")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    opened = await browser.new_context(viewport={"width": 1100, "height": 800})
    yield opened
    await opened.close()


@pytest_asyncio.fixture(loop_scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as rx:
        yield rx


async def shot(page: Page, tmp_path: Path, name: str) -> None:
    await page.screenshot(path=tmp_path / f"{name}.png", full_page=True)


async def test_the_overview_shows_the_counts_by_status(
    start_relay: StartRelay, sandbox: RunningSandbox, context: BrowserContext, tmp_path: Path
) -> None:
    relay = await start_relay()
    ids = [(await relay.post(registered(f"tok-ok-{n}", f"player-{n}")))[1]["id"] for n in range(3)]
    await relay.wait_finished(ids)
    await dead_referral(relay, sandbox, "tok-dead")

    page = await context.new_page()
    await page.goto(relay.url + "/ui/")
    await expect(page.locator('[data-count="delivered"]')).to_have_text("3")
    await expect(page.locator('[data-count="dead"]')).to_have_text("2")
    await expect(page.locator('[data-count="pending"]')).to_have_text("0")
    server_row = page.get_by_role("row", name=SERVER)
    await expect(server_row).to_contain_text("delivering")
    await expect(page.locator("svg.chart polyline.ingested")).to_have_count(1)
    await expect(page.locator("svg.chart desc")).to_contain_text("5 ingested")
    await expect(page.get_by_text("No alerts configured")).to_be_visible()
    await shot(page, tmp_path, "overview")


async def test_a_dead_event_found_by_search_is_retried_and_delivered(
    start_relay: StartRelay, sandbox: RunningSandbox, context: BrowserContext, tmp_path: Path
) -> None:
    relay = await start_relay()
    await relay.post(registered("tok-other", "someone-else"))
    reg, qual = await dead_referral(relay, sandbox, "tok-late")

    page = await context.new_page()
    await page.goto(relay.url + "/ui/events")
    await page.get_by_label("Token, player or server_event_id").fill("p-tok-late")
    await page.keyboard.press("Enter")
    rows = page.locator("#log tbody tr")
    await expect(rows).to_have_count(2)  # the player's registered and its held-back follower
    await page.get_by_role("link", name=str(reg), exact=True).click()
    await expect(page.locator("#status")).to_have_text("dead")
    await expect(page.locator("dl.facts")).to_contain_text("unknown token")

    sandbox.sandbox.faults.unknown_tokens.clear()  # the cause is fixed upstream
    await page.get_by_role("button", name="Retry").click()
    # The page's script reloads it when the status changes: no manual refresh.
    await expect(page.locator("#status")).to_have_text("delivered", timeout=15_000)
    await expect(page.get_by_role("table")).to_contain_text("accepted")
    await shot(page, tmp_path, "retried")
    records = await relay.wait_finished([reg, qual])
    assert records[qual]["status"] == "delivered"  # the follower went with it


async def test_the_log_filters_by_time_range_and_status(
    start_relay: StartRelay, context: BrowserContext, tmp_path: Path
) -> None:
    relay = await start_relay()
    ids = [(await relay.post(registered(f"tok-t{n}", f"pt-{n}")))[1]["id"] for n in range(4)]
    await relay.wait_finished(ids)
    hour = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 3600))
    page = await context.new_page()
    await page.goto(relay.url + "/ui/events")
    rows = page.locator("#log tbody tr")
    await expect(rows).to_have_count(4)
    await page.get_by_label("From (UTC)").fill(hour)
    await page.get_by_role("button", name="Show").click()
    await expect(rows).to_have_count(0)
    await page.get_by_label("From (UTC)").fill("")
    await page.get_by_label("To (UTC)").fill(hour)
    await page.get_by_label("Status").select_option("delivered")
    await page.get_by_role("button", name="Show").click()
    await expect(rows).to_have_count(4)
    await page.get_by_label("Status").select_option("dead")
    await page.get_by_role("button", name="Show").click()
    await expect(rows).to_have_count(0)
    await shot(page, tmp_path, "filtered")

    missing = await page.goto(relay.url + "/ui/events/999999")
    assert missing is not None
    assert missing.status == 404
    await expect(page.get_by_role("alert")).to_contain_text("no event #999999 in the outbox")


async def test_an_xss_payload_in_referee_identity_shows_as_inert_text(
    start_relay: StartRelay, context: BrowserContext, tmp_path: Path
) -> None:
    relay = await start_relay()
    _, added = await relay.post(registered("tok-xss", XSS))
    await relay.wait_finished([added["id"]])
    dialogs: list[str] = []
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))

    response = await page.goto(relay.url + "/ui/events")
    assert response is not None
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    row = page.locator("#log tbody tr").first
    await expect(row.locator("td").nth(4)).to_have_text(XSS)
    await page.goto(f"{relay.url}/ui/events/{added['id']}")
    await expect(page.locator("pre.body")).to_contain_text(XSS)
    assert await page.locator("main img").count() == 0
    await page.wait_for_timeout(300)  # a broken image's onerror fires at once; give it time
    assert dialogs == []
    await shot(page, tmp_path, "xss")


async def test_a_retry_without_the_csrf_token_or_origin_is_refused(
    start_relay: StartRelay, sandbox: RunningSandbox, context: BrowserContext, tmp_path: Path
) -> None:
    relay = await start_relay()
    reg, _ = await dead_referral(relay, sandbox, "tok-csrf")
    sandbox.sandbox.faults.unknown_tokens.clear()
    page = await context.new_page()
    await page.goto(f"{relay.url}/ui/events/{reg}")
    csrf = await page.locator('input[name="csrf"]').get_attribute("value")
    await page.locator('input[name="csrf"]').evaluate("input => input.remove()")
    await page.get_by_role("button", name="Retry").click()
    await expect(page.get_by_role("alert")).to_contain_text("security token is missing")
    await shot(page, tmp_path, "csrf-refused")

    # The right token, but not sent from the console's page: no Origin header.
    answer = await page.request.post(
        f"{relay.url}/ui/events/{reg}/retry", form={"csrf": csrf or ""}, max_redirects=0
    )
    assert answer.status == 403
    assert "was not sent from the console" in await answer.text()
    _, record = await relay.get(f"/v1/events/{reg}")
    assert record["status"] == "dead"


def host_address() -> str:
    """This machine's first non-loopback IPv4 address: connecting to it is not loopback."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                packed = fcntl.ioctl(  # SIOCGIFADDR
                    probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15])
                )
            except OSError:
                continue
        address = socket.inet_ntoa(packed[20:24])
        if not ipaddress.ip_address(address).is_loopback:
            return address
    unavailable("this machine has no non-loopback IPv4 address to test the console's login on")
    raise AssertionError("unreachable")


async def test_off_loopback_the_console_needs_a_login_and_refuses_a_wrong_token(
    start_relay: StartRelay, sandbox: RunningSandbox, context: BrowserContext, tmp_path: Path
) -> None:
    relay = await start_relay(listen=Listen(host_address(), 0), ingest_token=Secret(TOKEN))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    reg, _ = await dead_referral_with_token(relay, sandbox, headers)
    page = await context.new_page()

    await page.goto(relay.url + "/ui/events")
    await expect(page).to_have_url(relay.url + "/ui/login")
    await page.get_by_label("Ingest token").fill("not-the-token")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_contain_text("that token is wrong")
    await shot(page, tmp_path, "login-refused")
    assert await context.cookies() == []

    await page.get_by_label("Ingest token").fill(TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator('[data-count="dead"]')).to_have_text("2")
    [cookie] = await context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    assert TOKEN not in cookie["value"]

    # Reading is allowed now; acting is not, from off this machine.
    await page.goto(f"{relay.url}/ui/events/{reg}")
    await expect(page.locator("#status")).to_have_text("dead")
    await expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    await shot(page, tmp_path, "logged-in")


async def test_the_sixth_wrong_login_from_one_address_within_a_minute_gets_429(
    start_relay: StartRelay, context: BrowserContext, tmp_path: Path
) -> None:
    """What a browser off the machine sees of the login's lockout (issue 24)."""
    relay = await start_relay(listen=Listen(host_address(), 0), ingest_token=Secret(TOKEN))
    page = await context.new_page()
    await page.goto(relay.url + "/ui/login")
    statuses = []
    for n in range(6):
        await page.get_by_label("Ingest token").fill(f"guess-{n}")
        async with page.expect_response(lambda r: r.url.endswith("/ui/login")) as answer:
            await page.get_by_role("button", name="Log in").click()
        statuses.append((await answer.value).status)
    assert statuses == [401] * 5 + [429]
    await expect(page.get_by_role("alert")).to_contain_text("too many wrong tokens")
    await shot(page, tmp_path, "login-locked")
    # Locked out, even the right token gets no answer but the lockout's.
    await page.get_by_label("Ingest token").fill(TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("alert")).to_contain_text("try again in")
    assert await context.cookies() == []


async def dead_referral_with_token(
    relay: Relay, sandbox: RunningSandbox, headers: dict[str, str]
) -> tuple[int, int]:
    """``dead_referral`` for a relay that wants the bearer token on every API call."""
    relay.http.headers.update(headers)
    return await dead_referral(relay, sandbox, "tok-remote")


async def test_retry_all_of_a_reason_shows_progress_on_a_phone_in_dark_mode(
    start_relay: StartRelay, sandbox: RunningSandbox, browser: Browser, tmp_path: Path
) -> None:
    relay = await start_relay()
    dead = [await dead_referral(relay, sandbox, f"tok-bulk-{n}") for n in range(3)]
    sandbox.sandbox.faults.unknown_tokens.clear()
    phone = await browser.new_context(
        viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True
    )
    try:
        page = await phone.new_page()
        await page.goto(relay.url + "/ui/dead")
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)"  # the dark palette, chosen by the browser
        await page.get_by_role("link", name="not_found", exact=True).click()
        await expect(page.locator("#log tbody tr")).to_have_count(3)  # that reason only
        await page.go_back()
        await page.get_by_role("button", name="Retry all 3 not_found").click()
        await expect(page.locator("#jobs")).to_contain_text(
            "3 of 3 re-queued (and 3 held back behind them), done"
        )
        await shot(page, tmp_path, "dead-letters")
    finally:
        await phone.close()
    records = await relay.wait_finished([i for pair in dead for i in pair])
    assert {r["status"] for r in records.values()} == {"delivered"}


async def test_on_loopback_or_the_socket_only_a_loopback_host_name_is_trusted(
    start_relay: StartRelay, tmp_path: Path
) -> None:
    """A page elsewhere that points its own name at 127.0.0.1 (DNS rebinding) reaches the
    relay as a loopback peer, but under its own Host: it gets the login form."""
    socket_path = tmp_path / "relay.sock"
    on_socket = {"listen": Listen(path=socket_path), "db_path": tmp_path / "socket.db"}
    for relay in (await start_relay(), await start_relay(**on_socket)):
        connector = (
            aiohttp.UnixConnector(path=str(socket_path)) if relay.url.startswith("unix:") else None
        )
        base = "http://relay" if connector else relay.url
        async with aiohttp.ClientSession(connector=connector) as http:
            for host, status in (("localhost:8787", 200), ("rebind.example:8787", 303)):
                async with http.get(
                    base + "/ui/", headers={"Host": host}, allow_redirects=False
                ) as resp:
                    assert resp.status == status, (relay.url, host)


async def test_rejected_inputs_are_listed_as_inert_text_paged_filtered_and_charted(
    start_relay: StartRelay, context: BrowserContext, tmp_path: Path
) -> None:
    relay = await start_relay()
    for n in range(PAGE):
        bad = {"event": "registered", "token": f"tok-r{n}", "server_event_id": f"r{n}"}
        assert (await relay.post(bad))[0] == 422  # no referee_identity
    assert (await relay.post(registered("tok-xss-r", XSS, reffere="x")))[0] == 422
    await rejected(relay, PAGE + 1)
    dialogs: list[str] = []
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))

    await page.goto(relay.url + "/ui/rejected")
    rows = page.locator("#rejected tbody tr")
    await expect(rows).to_have_count(PAGE)
    newest = rows.first
    await expect(newest.locator("td").nth(3)).to_have_text("unknown_field")
    await expect(newest.locator("td").nth(6)).to_have_text(XSS)
    await expect(newest.locator("td.snippet")).to_contain_text(f'"referee_identity": "{XSS}"')
    assert await page.locator("main img").count() == 0
    await page.wait_for_timeout(300)  # a broken image's onerror fires at once; give it time
    assert dialogs == []
    await shot(page, tmp_path, "rejected")

    await page.get_by_role("link", name="Older").click()  # the id cursor: the oldest one
    await expect(rows).to_have_count(1)
    await expect(rows.first.locator("td").nth(5)).to_have_text("tok-r0")
    await page.get_by_label("Code").select_option("unknown_field")
    await page.get_by_role("button", name="Show").click()
    await expect(rows).to_have_count(1)
    hour = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 3600))
    await page.get_by_label("Since (UTC)").fill(hour)
    await page.get_by_role("button", name="Show").click()
    await expect(page.get_by_text("No rejected inputs match")).to_be_visible()

    await page.goto(relay.url + "/ui/")
    await expect(page.locator("svg.chart polyline.rejected")).to_have_count(1)
    await expect(page.locator("svg.chart desc")).to_contain_text(f"{PAGE + 1} rejected")
    await shot(page, tmp_path, "chart")


async def test_a_player_search_tells_a_referral_held_by_a_401_pause_and_a_counted_one(
    start_relay: StartRelay, context: BrowserContext, tmp_path: Path
) -> None:
    # No probe while the pages are read: a probe in flight shows its event in_flight. The
    # probe interval is set at start: a reload changes servers, not pause_probe_s.
    relay = await start_relay(pause_probe_s=60.0)
    _, reg = await relay.post(registered("tok-happy", "happy-1"))
    _, qual = await relay.post(qualified("tok-happy", "happy-1"))
    await relay.wait_finished([reg["id"], qual["id"]])
    wrong = (ServerConfig(SERVER, Secret("wrong!")),)
    relay.handle.reload(replace(relay.handle.settings, servers=wrong))
    _, held = await relay.post(registered("tok-held", "held-1"))
    deadline = time.monotonic() + 10
    while not (await relay.get("/v1/status"))[1]["servers"][0]["paused"]:
        assert time.monotonic() < deadline, "the server never paused"
        await asyncio.sleep(0.05)
    _, follower = await relay.post(qualified("tok-held", "held-1"))

    page = await context.new_page()
    await page.goto(relay.url + "/ui/")
    await page.get_by_label("Find a player").fill("held-1")
    await page.keyboard.press("Enter")
    verdict = page.locator("#verdict")
    await expect(verdict).to_contain_text(
        f"Pending: registered #{held['id']} is held because deliveries for server {SERVER} "
        "are paused"
    )
    await expect(page.locator("#fix")).to_contain_text("systemctl reload mmolove-relay")
    rows = page.locator("#story tbody tr")
    await expect(rows).to_have_count(2)
    for row in (rows.nth(0), rows.nth(1)):
        await expect(row).to_contain_text(f"held: server {SERVER} is paused")
    await shot(page, tmp_path, "player-held")

    await page.get_by_role("link", name=str(follower["id"]), exact=True).click()
    await expect(page.locator("#waits-for")).to_have_text(f"held: server {SERVER} is paused")
    await shot(page, tmp_path, "event-held")

    await page.get_by_label("Find a player").fill("happy-1")
    await page.keyboard.press("Enter")
    await expect(verdict).to_contain_text("Counted: MMOLove has referral")
    await expect(verdict).to_contain_text("in state qualified")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(1)).to_contain_text("accepted")
    await shot(page, tmp_path, "player-counted")


async def test_the_overview_lists_a_firing_alert_with_its_since_time(
    start_relay: StartRelay,
    settings: Settings,
    receiver: Receiver,
    context: BrowserContext,
    tmp_path: Path,
) -> None:
    relay = await start_relay(alerting(wrong_secret(settings), receiver))
    await relay.post(registered("tok-alert", "alert-1"))
    await eventually(lambda: receiver.got.get("webhook"), timeout_s=5.0, what="a pause alert")

    page = await context.new_page()
    await page.goto(relay.url + "/ui/")
    alert = page.locator("#alerts li")
    await expect(alert).to_have_count(1)
    await expect(alert).to_contain_text(f"paused:{SERVER} since 20")
    await expect(alert).to_contain_text(f"deliveries for MMOLove server {SERVER} are paused")
    await shot(page, tmp_path, "alerts")


async def test_an_event_page_says_what_a_held_event_waits_for(
    start_relay: StartRelay, sandbox: RunningSandbox, context: BrowserContext, tmp_path: Path
) -> None:
    relay = await start_relay(backoff_base_s=1000.0, backoff_cap_s=1000.0)
    _, orphan = await relay.post(qualified("tok-orphan", "orphan-1"))  # its registered never came
    await record_until(relay, orphan["id"], lambda r: r["outcome"] == "waiting_for_registered")
    sandbox.sandbox.faults.error_rate = 1.0  # every answer a 500: the registered backs off
    _, reg = await relay.post(registered("tok-slow", "slow-1"))
    _, qual = await relay.post(qualified("tok-slow", "slow-1"))
    await record_until(relay, reg["id"], lambda r: r["attempts"] > 0)

    page = await context.new_page()
    for event_id, waits in (
        (orphan["id"], "waits for a registered of its token to be delivered"),
        (qual["id"], f"waits behind #{reg['id']}"),
        (reg["id"], "next attempt at"),
    ):
        await page.goto(f"{relay.url}/ui/events/{event_id}")
        await expect(page.locator("#waits-for")).to_contain_text(waits)
    await shot(page, tmp_path, "event-backing-off")


async def record_until(relay: Relay, event_id: int, check: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check((await relay.get(f"/v1/events/{event_id}"))[1]):
        assert time.monotonic() < deadline, f"event {event_id} never got there"
        await asyncio.sleep(0.05)


async def test_a_bare_ui_leads_to_the_console_with_its_query(start_relay: StartRelay) -> None:
    """An operator types /ui; the console lives at /ui/ (it answered 404 before)."""
    relay = await start_relay()
    async with aiohttp.ClientSession() as http:
        async with http.get(relay.url + "/ui?status=dead", allow_redirects=False) as response:
            assert response.status == 308
            assert response.headers["Location"] == "/ui/?status=dead"
        async with http.get(relay.url + "/ui") as followed:
            assert followed.status == 200
            assert followed.url.path == "/ui/"

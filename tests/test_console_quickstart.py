"""The console's quickstart in a real Chromium (issue 24): "Send test event" shows MMOLove's
answer (the sandbox's) in place, "Getting started" ticks as events land, and the delivery log
shows ``server_event_id`` whole.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import BrowserContext, expect

from relay.config.settings import Settings
from relay.config.values import Secret, ServerConfig
from relay.console import security
from relay.sandbox import RunningSandbox, running_sandbox
from tests import test_console
from tests.alert_receiver import Receiver, alerting, wrong_secret
from tests.support import SECRET, SERVER, StartRelay, eventually, qualified, registered
from tests.test_console import shot
from tests.test_console_login import remote_relay, session_from_login

pytestmark = pytest.mark.asyncio(loop_scope="module")
# test_console's browser (one per module) and the relay, sandbox and receiver fixtures on its
# loop, used here under the same names.
browser = test_console.browser
context = test_console.context
sandbox = test_console.sandbox
start_relay = test_console.start_relay
receiver = test_console.receiver


async def test_send_test_event_shows_mmoloves_answer_and_ticks_the_checklist(
    start_relay: StartRelay, context: BrowserContext, tmp_path: Path
) -> None:
    relay = await start_relay()
    page = await context.new_page()
    await page.goto(relay.url + "/ui/")
    test_step = page.locator("#getting-started li").nth(1)
    await expect(test_step).to_contain_text("not yet sent for srv-1")
    await expect(test_step).to_contain_text("Press Send test event")

    await page.get_by_role("button", name="Send test event").click()
    answer = page.locator(".proof")
    await expect(answer).to_have_class("proof ok")
    await expect(answer).to_contain_text('Verified 200 {"ok":true,"test":true}')
    await expect(answer).to_contain_text("MMOLove verified the signature")
    await expect(test_step).to_have_class("step done")
    await expect(test_step).to_contain_text(f"{SERVER} at 20")
    await shot(page, tmp_path, "test-event-ok")

    # Remembered in the store: a reload (a plain GET) still shows the step done.
    await page.goto(relay.url + "/ui/")
    await expect(page.locator("#getting-started li").nth(1)).to_have_class("step done")
    await expect(page.locator(".proof")).to_have_count(0)


async def test_a_refused_secret_shows_mmoloves_answer_and_the_fix(
    start_relay: StartRelay, settings: Settings, context: BrowserContext, tmp_path: Path
) -> None:
    relay = await start_relay(wrong_secret(settings))
    page = await context.new_page()
    await page.goto(relay.url + "/ui/")
    await page.get_by_role("button", name="Send test event").click()
    answer = page.locator(".proof")
    await expect(answer).to_have_class("proof failed")
    await expect(answer).to_contain_text("Failed HTTP 401")
    await expect(answer).to_contain_text("MMOLove rejected the signature (401 bad_signature)")
    await expect(answer.locator(".fix")).to_contain_text(
        f"MMOLove refused the signature of server {SERVER}: copy the secret"
    )
    test_step = page.locator("#getting-started li").nth(1)
    await expect(test_step).to_have_class("step open")
    await expect(test_step).to_contain_text(f"failed for {SERVER} at 20")
    await shot(page, tmp_path, "test-event-refused")


async def test_the_checklist_ticks_as_events_land_and_goes_when_all_are_done(
    start_relay: StartRelay,
    settings: Settings,
    receiver: Receiver,
    context: BrowserContext,
    tmp_path: Path,
) -> None:
    relay = await start_relay(alerting(settings, receiver))
    page = await context.new_page()
    await page.goto(relay.url + "/ui/")
    steps = page.locator("#getting-started li")
    await expect(steps).to_have_count(5)
    await expect(steps.nth(0)).to_have_class("step done")  # the secret
    for n in (1, 2, 3, 4):
        await expect(steps.nth(n)).to_have_class("step open")
    await expect(steps.nth(2)).to_contain_text(f"curl -sS -X POST {relay.url}/v1/events")
    await expect(steps.nth(3)).to_contain_text('"event":"qualified","token":"mmref-abc"')
    await expect(steps.nth(4)).to_contain_text("Press Send test alert")

    # The alert first: the events' step then completes the list on a page we load ourselves.
    await page.get_by_role("button", name="Send test alert").click()
    await expect(page.get_by_role("status")).to_contain_text("A test alert was queued")
    await eventually(lambda: receiver.got.get("webhook"), timeout_s=5.0, what="the test alert")
    for _ in range(100):  # the target records that it took it once its answer is read
        _, status = await relay.get("/v1/status")
        if any(t["last_ok_at"] for t in status["alerts"]["targets"]):
            break
        await asyncio.sleep(0.05)
    await page.goto(relay.url + "/ui/")
    await expect(steps.nth(4)).to_have_class("step done")
    await expect(steps.nth(4)).to_contain_text("a target took an alert at 20")
    for n in (1, 2, 3):
        await expect(steps.nth(n)).to_have_class("step open")

    _, probe = await relay.post(registered("tok-probe", test=True))  # as setup sends one
    _, reg = await relay.post(registered("tok-first", "player-first"))
    _, qual = await relay.post(qualified("tok-first", "player-first"))
    await relay.wait_finished([probe["id"], reg["id"], qual["id"]])
    await page.reload()
    await expect(steps.nth(1)).to_have_class("step done")
    await expect(steps.nth(1)).to_contain_text(f"{SERVER} at 20")
    await expect(steps.nth(1)).to_contain_text("through the relay")
    await expect(steps.nth(2)).to_have_class("step done")
    await expect(steps.nth(2)).to_contain_text("for player player-first")
    await expect(steps.nth(2)).to_contain_text("server_event_id reg-player-first")
    await expect(steps.nth(3)).to_have_class("step done")
    await expect(steps.nth(3)).to_contain_text("server_event_id qual-player-first")
    await expect(steps.nth(4)).to_have_class("step done")
    await shot(page, tmp_path, "all-done")

    await page.goto(relay.url + "/ui/")  # every step done: the checklist is gone for good
    await expect(page.locator("#getting-started")).to_have_count(0)
    await expect(page.get_by_role("button", name="Send test event")).to_be_visible()


async def test_the_log_shows_a_long_server_event_id_whole(
    start_relay: StartRelay, settings: Settings, context: BrowserContext, tmp_path: Path
) -> None:
    server = "srv-hidden-1"
    player = "player-with-a-long-name-" + "x" * 40
    async with running_sandbox({server: SECRET}) as upstream:
        relay = await start_relay(
            replace(settings, servers=(ServerConfig(server, Secret(SECRET)),)),
            endpoint=upstream.url,
        )
        _, added = await relay.post(registered("tok-hidden", player))
        await relay.wait_finished([added["id"]])
        page = await context.new_page()
        await page.goto(relay.url + "/ui/events")
        row = page.locator("#log tbody tr").first
        await expect(row.locator("td.snippet")).not_to_contain_text(f"reg-{player}")  # cut off
        await expect(row.locator("td.sid")).to_have_text(f"reg-{player}")
        # The live log adds the column to rows that arrive after the page was drawn.
        _, later = await relay.post(registered("tok-later", player + "-2"))
        await expect(page.locator("#log tbody tr").first.locator("td.sid")).to_have_text(
            f"reg-{player}-2", timeout=10_000
        )
        await relay.wait_finished([later["id"]])
        await shot(page, tmp_path, "log-server-event-id")


async def test_sending_a_test_event_is_refused_without_csrf_or_off_the_machine(
    start_relay: StartRelay, sandbox: RunningSandbox, context: BrowserContext, tmp_path: Path
) -> None:
    relay = await start_relay()
    page = await context.new_page()
    await page.goto(relay.url + "/ui/")
    await page.locator('input[name="csrf"]').first.evaluate("input => input.remove()")
    await page.get_by_role("button", name="Send test event").click()
    await expect(page.get_by_role("alert")).to_contain_text("security token is missing")
    assert sandbox.sandbox.request_log() == []  # nothing went to MMOLove

    # Off the machine, even logged in and with the page's token: no button, and a 403.
    remote = await remote_relay(start_relay, db_path=tmp_path / "remote.db")
    cookie, _ = await session_from_login(remote)
    headers = {"Cookie": f"{security.COOKIE}={cookie}", "Origin": remote.url}
    async with aiohttp.ClientSession() as http:
        async with http.get(remote.url + "/ui/", headers=headers) as resp:
            assert resp.status == 200
            html = await resp.text()
        assert "Send test event</button>" not in html
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        async with http.post(
            remote.url + "/ui/test-event",
            data={"csrf": csrf.group(1) if csrf else "none"},
            headers=headers,
        ) as resp:
            assert resp.status == 403
            assert "only on the relay&#39;s own machine" in await resp.text()
    assert sandbox.sandbox.request_log() == []

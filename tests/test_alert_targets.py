"""The ops channel against hostile neighbours: an upstream whose answer is written to ping
``@everyone``, an alert target that redirects, one that fails or throttles while ``status``
is read. Real relays, real loopback servers, the real CLI."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from relay.alerts.targets import Message, TargetFailed, post
from relay.config.settings import Settings
from relay.config.values import AlertTarget, Secret
from relay.sandbox import RunningSandbox
from tests.alert_receiver import URL_TOKEN, Receiver, alerting
from tests.support import SECRET, SERVER, StartRelay, cli, eventually, registered

# What a captive portal in front of MMOLove could answer a 401 with: mentions, a Slack link
# with its own label, and backticks that would close the code quote around it.
PORTAL = "@everyone <!channel> log in at <https://evil.example/x|MMOLove> ` @here & more"


@dataclass
class Hook:
    """A loopback HTTP server whose answers each test scripts, and what reached it."""

    url: str = ""
    answers: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    got: list[tuple[str, float]] = field(default_factory=list)  # path, wall-clock arrival

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.got.append((request.path, time.time()))
        if request.path.startswith("/landing/") or not self.answers:
            return web.Response(status=200, text="ok")
        status, headers, body = self.answers.pop(0)
        return web.Response(status=status, headers=headers, text=body)

    def target(self, path: str = "hook") -> AlertTarget:
        return AlertTarget("slack", Secret(f"{self.url}/{path}/{URL_TOKEN}"))


@asynccontextmanager
async def serving(handler: Any) -> AsyncIterator[str]:
    """``handler`` on a loopback port for the block's duration; yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook()
    async with serving(h.handle) as url:
        h.url = url
        yield h


def outside_code(text: str) -> str:
    """The parts of a Markdown message that are not in an inline code span."""
    return "".join(text.split("`")[0::2])


async def test_an_upstreams_401_text_pings_nobody_and_links_nowhere(
    start_relay: StartRelay, settings: Settings, receiver: Receiver
) -> None:
    async def portal(request: web.Request) -> web.Response:
        return web.json_response({"error": PORTAL}, status=401)

    async with serving(portal) as upstream:
        relay = await start_relay(alerting(replace(settings, endpoint=upstream), receiver))
        await relay.post(registered("tok-p", "p-portal"))
        await eventually(
            lambda: receiver.got.get("discord") and receiver.got.get("slack"),
            what="the pause alert on Discord and Slack",
        )
    assert receiver.bad == []
    [discord] = receiver.got["discord"]
    assert discord.get("allowed_mentions") == {"parse": []}, "Discord would ping @everyone"
    for text in (discord["content"], receiver.texts("slack")[0]):
        assert "everyone" in text  # the upstream's words are told...
        for word in ("everyone", "channel", "here", "evil.example"):
            assert word not in outside_code(text), f"{word} outside the code quote: {text}"
    slack = receiver.texts("slack")[0]
    assert "<" not in slack, f"Slack would parse {slack}"
    assert ">" not in slack, f"Slack would parse {slack}"
    assert "&lt;!channel&gt;" in slack
    assert "&amp; more" in slack


async def test_a_redirecting_target_fails_naming_the_location_and_is_not_followed(
    hook: Hook, sandbox: RunningSandbox
) -> None:
    landing = f"{hook.url}/landing/{URL_TOKEN}"
    hook.answers.append((307, {"Location": landing}, ""))
    env = {
        "MMOLOVE_SERVER_ID": SERVER,
        "MMOLOVE_SECRET": SECRET,
        "MMOLOVE_ENDPOINT": sandbox.url,
        "MMOLOVE_RELAY_ALERT_URL": hook.target().url.reveal(),
        "MMOLOVE_RELAY_ALERT_KIND": "slack",
    }
    code, out, err = await cli("alert-test", "--json", env=env)
    posted = [path for path, _ in hook.got]
    assert posted == [f"/hook/{URL_TOKEN}"], f"the alert was posted to {posted}"
    assert code == 1, out
    [result] = json.loads(out)["targets"]
    assert result["ok"] is False
    assert result["detail"].startswith("307 redirect to http://127.0.0.1/***")
    assert URL_TOKEN not in out + err


async def _when(shown: Any, accept: Any) -> Any:
    """The awaited value when ``accept`` takes it, else None (for ``eventually``)."""
    value = await shown
    return value if accept(value) else None


async def test_a_targets_answer_is_quoted_on_one_line(hook: Hook) -> None:
    """What ``status`` and ``alert-test`` print of a target's answer cannot fake a line."""
    hook.answers.append((500, {}, "line one\nALERT fake line\r\n"))
    async with aiohttp.ClientSession() as http:
        message = Message("test", "test", "hi", None, time.time())
        with pytest.raises(TargetFailed) as failed:
            await post(http, hook.target(), message)
    assert str(failed.value) == "500 line one ALERT fake line"


async def test_status_shows_a_target_retrying_with_its_error_then_when_it_went_out(
    start_relay: StartRelay, settings: Settings, hook: Hook
) -> None:
    down = (500, {}, "down for maintenance")
    hook.answers += [down, down, (429, {"Retry-After": "3"}, "slow down")]  # 6 s of retrying
    relay = await start_relay(
        replace(settings, alerts=(hook.target(),), alert_every_s=0.1, alert_rejected_count=1)
    )
    await relay.post({"event": "registered", "token": "bad"})  # fires "rejected"

    async def target() -> dict[str, Any]:
        _, status = await relay.get("/v1/status")
        [shown] = status["alerts"]["targets"]
        return dict(shown)

    retrying = await eventually(
        lambda: _when(target(), lambda t: t["last_error"] is not None),
        what="the first failure shown in status",
    )
    assert (retrying["state"], retrying["ok"]) == ("retrying", False), retrying
    assert retrying["last_error"] == "500 down for maintenance"
    assert retrying["last_attempt_at"] is not None
    assert retrying["last_ok_at"] is None
    code, out, err = await cli("status", "--url", relay.url)
    assert code == 0, err
    assert "retrying" in out, out
    assert "500 down for maintenance" in out or "429 rate limited" in out, out

    sent = await eventually(
        lambda: _when(target(), lambda t: t["state"] == "ok"), timeout_s=15, what="delivery"
    )
    went_out = hook.got[-1][1]
    assert len(hook.got) == 4
    assert sent["last_ok_at"] >= went_out, (
        f"status says sent {went_out - sent['last_ok_at']} s early"
    )
    assert sent["last_error"] is None

"""A real alert receiver on loopback: Discord, Slack and webhook endpoints that check each
payload the way the real service documents it (Discord: ``content`` of at most 2,000
characters or ``embeds``; Slack: ``text``; ours: JSON, optionally HMAC-signed), and can be
slow or throttle. Loaded as a pytest plugin by ``tests/conftest.py`` for the ``receiver``
fixture.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web

from relay.config.settings import Settings
from relay.config.values import AlertTarget, Secret, ServerConfig
from relay.signing import parse_header, verify
from tests.support import SERVER

HOOK_SECRET = "hook-secret-5d1c"
URL_TOKEN = "tok3n-in-the-url-8f2a"  # what a real webhook URL hides; must never be shown


@dataclass
class Receiver:
    """Discord, Slack and webhook endpoints; each can be slow or answer 429 first."""

    url: str = ""
    got: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    arrivals: dict[str, list[float]] = field(default_factory=dict)
    throttle: dict[str, int] = field(default_factory=dict)  # kind -> 429s still to answer
    delay_s: dict[str, float] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)  # payloads the real service would refuse

    async def handle(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        assert request.match_info["token"] == URL_TOKEN
        self.arrivals.setdefault(kind, []).append(time.monotonic())
        await asyncio.sleep(self.delay_s.get(kind, 0.0))
        if self.throttle.get(kind, 0) > 0:
            self.throttle[kind] -= 1
            # Discord's shape: the wait in seconds in the JSON body.
            return web.json_response({"retry_after": 0.5, "global": False}, status=429)
        raw = await request.read()
        body = json.loads(raw)
        problem = _shape_problem(kind, body, raw, request.headers)
        if problem:
            self.bad.append(problem)
            return web.json_response({"message": problem}, status=400)
        self.got.setdefault(kind, []).append(body)
        return web.Response(status=204 if kind == "discord" else 200, text="ok")

    def texts(self, kind: str) -> list[str]:
        key = {"discord": "content", "slack": "text", "webhook": "text"}[kind]
        return [str(b[key]) for b in self.got.get(kind, [])]

    def target(self, kind: str, **extra: Any) -> AlertTarget:
        return AlertTarget(kind, Secret(f"{self.url}/{kind}/{URL_TOKEN}"), **extra)


def _shape_problem(kind: str, body: Any, raw: bytes, headers: Any) -> str | None:
    if not isinstance(body, dict):
        return "not an object"
    if kind == "discord":
        content = body.get("content")
        if not (isinstance(content, str) and 0 < len(content) <= 2000) and not body.get("embeds"):
            return "discord needs content of 1-2000 characters or embeds"
    elif kind == "slack":
        if not isinstance(body.get("text"), str) or not body["text"]:
            return "slack needs text"
    else:
        if not {"alert", "status", "text", "since", "at"} <= body.keys():
            return f"webhook fields missing: {sorted(body)}"
        signature = headers.get("X-MMOLove-Relay-Signature")
        if signature is None or not verify(raw, HOOK_SECRET, parse_header(signature)):
            return "webhook signature missing or wrong"
    return None


@asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    """A receiver listening on loopback for the block's duration."""
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/{kind}/{token}", rx.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rx.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield rx
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as rx:
        yield rx


def alerting(settings: Settings, receiver: Receiver, **overrides: Any) -> Settings:
    """Every kind of target, rules evaluated fast, a short hold before "resolved"."""
    targets = (
        receiver.target("discord"),
        receiver.target("slack"),
        receiver.target("webhook", secret=Secret(HOOK_SECRET)),
    )
    values: dict[str, Any] = {
        "alerts": targets,
        "alert_every_s": 0.1,
        "alert_resolve_after_s": 0.5,
        **overrides,
    }
    return replace(settings, **values)


def wrong_secret(settings: Settings) -> Settings:
    return replace(settings, servers=(ServerConfig(SERVER, Secret("not-the-secret")),))

"""What a failed test event tells the operator to change, for each answer MMOLove can give."""

from __future__ import annotations

import pytest

from relay.config.values import Secret, ServerConfig
from relay.proof import fix

SERVER = ServerConfig("srv-7", Secret("s" * 32), kid="k2")


@pytest.mark.parametrize(
    ("http_status", "reason", "skew", "names"),
    [
        (401, "unauthorized", None, "copy the secret and the kid 'k2'"),
        (401, "unauthorized", 600.0, "time sync"),
        (401, "unauthorized", -250.0, "time sync"),
        (401, "unauthorized", 120.0, "copy the secret"),
        (404, "not_found", None, "does not know server srv-7"),
        (301, "redirected", None, "the endpoint redirects"),
        (307, "redirected", None, "the endpoint redirects"),
        (None, "dns", None, "unreachable"),
        (None, "timeout", None, "unreachable"),
        (None, "tls", None, "unreachable"),
        (500, "server_error", None, "read MMOLove's answer"),
    ],
)
def test_each_failure_names_its_fix(
    http_status: int | None, reason: str, skew: float | None, names: str
) -> None:
    assert names in fix(SERVER, http_status, reason, skew)

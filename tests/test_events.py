"""Canonical bytes: the relay's serialisation reproduces MMOLove's signed test vectors."""

from __future__ import annotations

from typing import Any

import pytest

from relay import signing
from relay.errors import InvalidEvent
from relay.events import parse_json, validate
from tests.test_signing import VECTORS


@pytest.mark.parametrize(("secret", "t", "body", "expected"), VECTORS)
def test_validated_event_serialises_to_the_vector_bytes(
    secret: str, t: int, body: str, expected: str
) -> None:
    """Given the same fields in any order, the relay produces the documented bytes."""
    fields: dict[str, Any] = parse_json(body.encode())
    shuffled = dict(reversed(list(fields.items())))
    event = validate(
        shuffled, server_ids=[fields["server_id"]], allow_extra_fields=False, now=float(t)
    )
    assert event.body == body.encode("utf-8")
    assert signing.mac(event.body, secret, t) == expected


def test_missing_ts_is_filled_with_now_and_kept_out_of_the_fingerprint() -> None:
    base = {"event": "qualified", "token": "t", "server_event_id": "q"}
    one = validate(base, server_ids=["s"], allow_extra_fields=False, now=1000.7)
    two = validate(base, server_ids=["s"], allow_extra_fields=False, now=2000.0)
    assert one.body.endswith(b',"ts":1000}')
    assert one.fingerprint == two.fingerprint
    explicit = validate(
        {**base, "ts": 1000}, server_ids=["s"], allow_extra_fields=False, now=1000.0
    )
    assert explicit.fingerprint != one.fingerprint


def test_infinity_is_not_json() -> None:
    with pytest.raises(InvalidEvent, match="Infinity"):
        parse_json(b'{"ts": Infinity}')

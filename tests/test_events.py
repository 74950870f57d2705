"""Canonical bytes: the relay's serialisation reproduces MMOLove's signed test vectors."""

from __future__ import annotations

from typing import Any

import pytest

from relay import signing
from relay.errors import InvalidEvent
from relay.events import parse_json, validate
from tests.test_signing import VECTORS

pytestmark = pytest.mark.unit


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
    one = validate(base, server_ids=["s"], allow_extra_fields=False, now=1733500000.7)
    two = validate(base, server_ids=["s"], allow_extra_fields=False, now=1733600000.0)
    assert one.body.endswith(b',"ts":1733500000}')
    assert one.fingerprint == two.fingerprint
    explicit = validate(
        {**base, "ts": 1733500000}, server_ids=["s"], allow_extra_fields=False, now=1733500000.0
    )
    assert explicit.fingerprint != one.fingerprint


def test_infinity_is_not_json() -> None:
    with pytest.raises(InvalidEvent, match="Infinity"):
        parse_json(b'{"ts": Infinity}')


@pytest.mark.parametrize(
    ("ts", "why"),
    [
        (5e-324, "JSON integer"),
        (1733500000.5, "JSON integer"),
        (1733500000.0, "JSON integer"),
        (0, "before 2001"),
        (5, "before 2001"),
        (1733500000 * 1000, "in the future"),
    ],
)
def test_ts_is_whole_unix_seconds_in_a_sane_range(ts: float, why: str) -> None:
    """5e-324 was once stored as a ts, and a 10,000-digit float silently rounded."""
    event = {"event": "qualified", "token": "t", "server_event_id": "q", "ts": ts}
    with pytest.raises(InvalidEvent, match=why) as caught:
        validate(event, server_ids=["s"], allow_extra_fields=False, now=1733500000.0)
    assert caught.value.field == "ts"


def test_a_ten_thousand_digit_ts_is_refused_not_rounded() -> None:
    raw = b'{"event":"qualified","token":"t","server_event_id":"q","ts":1733500000.' + b"1" * 10_000
    with pytest.raises(InvalidEvent, match="JSON integer"):
        validate(parse_json(raw + b"}"), server_ids=["s"], allow_extra_fields=False, now=1.8e9)


@pytest.mark.parametrize("field", ["token", "server_event_id", "referee_identity"])
@pytest.mark.parametrize("char", ["\x00", "\n", "\r", "\x1b", "\x7f", "\x85"])
def test_control_characters_in_ids_are_refused(field: str, char: str) -> None:
    event = {"event": "qualified", "token": "t", "server_event_id": "q", field: f"a{char}b"}
    with pytest.raises(InvalidEvent, match="control character") as caught:
        validate(event, server_ids=["s"], allow_extra_fields=False, now=1733500000.0)
    assert (caught.value.status, caught.value.field) == (422, field)


def test_a_byte_order_mark_is_named_in_the_error() -> None:
    with pytest.raises(InvalidEvent, match="byte order mark") as caught:
        parse_json(b'\xef\xbb\xbf{"event": "registered"}')
    assert caught.value.status == 400

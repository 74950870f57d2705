"""Ingest validation and the canonical body: the one place an event's bytes are decided.

The body is serialised once, here, as compact UTF-8 JSON; the outbox stores those bytes and
the dispatcher signs and sends exactly them on every attempt.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.errors import InvalidEvent

# Per-referral order: an event waits for every undelivered event of a lower rank.
EVENT_RANK = {"registered": 0, "qualified": 1, "reversed": 2}
REQUIRED_STRINGS = ("event", "token", "server_event_id")
KNOWN_FIELDS = ("event", "token", "server_id", "referee_identity", "server_event_id", "ts", "test")
MAX_FIELD_CHARS = 512
# A ts this far ahead of the relay's clock is almost always milliseconds sent as seconds.
MAX_FUTURE_TS_S = 24 * 3600
# A ts before this (2001-09-09) is not the time of a referral; 0, 5 or 5e-324 are mistakes.
MIN_TS = 1_000_000_000
# Ids are printable text: a NUL or a newline in a token breaks logs, terminals and MMOLove.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event, ready for the outbox."""

    server_id: str
    token: str
    event: str
    server_event_id: str
    test: bool
    body: bytes
    fingerprint: str  # digest of what the client sent: tells an exact repeat from a conflict
    referee_identity: str | None = None  # the player, the anchor the player view finds
    reported_by: str | None = None  # the [[sources]] entry that read it; None: HTTP ingest

    @property
    def rank(self) -> int:
        return EVENT_RANK[self.event]


def parse_json(raw: bytes) -> Any:
    """Decode a request body, refusing what JSON parsers disagree on (NaN, repeated keys)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(
            400, "invalid_json", f"the body is not UTF-8 ({exc.reason}); send UTF-8 encoded JSON."
        ) from exc
    if text.startswith("\ufeff"):
        raise InvalidEvent(
            400, "invalid_json", "the body starts with a byte order mark; send JSON without it."
        )
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(
            400,
            "invalid_json",
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
        ) from exc
    except RecursionError as exc:
        raise InvalidEvent(
            400, "invalid_json", "the body nests too deeply; send a flat event object."
        ) from exc
    except ValueError as exc:  # e.g. an integer longer than Python converts
        raise InvalidEvent(400, "invalid_json", f"the body is not acceptable JSON: {exc}.") from exc


def validate(
    data: Any, *, server_ids: Sequence[str], allow_extra_fields: bool, now: float
) -> Event:
    """Check one event object and build its canonical body; ``InvalidEvent`` names the field."""
    if not isinstance(data, dict):
        raise InvalidEvent(
            422,
            "not_an_object",
            'an event must be a JSON object like {"event": "registered", "token": "...", ...}.',
        )
    unknown = [key for key in data if key not in KNOWN_FIELDS]
    if unknown and not allow_extra_fields:
        raise InvalidEvent(
            422,
            "unknown_field",
            f"unknown field {unknown[0]!r}; the fields are "
            f"{', '.join(KNOWN_FIELDS)} (check the spelling, or allow extra "
            "fields in the relay's configuration).",
            unknown[0],
        )

    fields = {name: _id(data, name) for name in REQUIRED_STRINGS}
    if fields["event"] not in EVENT_RANK:
        raise InvalidEvent(
            422,
            "invalid_field",
            f"event {fields['event']!r} is not one of {', '.join(EVENT_RANK)}.",
            "event",
        )
    server_id = _server_id(data, server_ids)
    referee = None
    if fields["event"] == "registered" or data.get("referee_identity") is not None:
        referee = _id(data, "referee_identity")
    test = data.get("test")
    if test is not None and not isinstance(test, bool):
        raise InvalidEvent(422, "invalid_field", "test must be true or false.", "test")
    ts = _ts(data.get("ts"), now) if "ts" in data else int(now)

    # What the client sent, normalised the way MMOLove reads it (trimmed strings, server_id
    # resolved), but without the ts the relay fills in: a retry of a POST without ts must
    # compare equal to the first one.
    sent = {**data, **fields, "server_id": server_id}
    if referee is not None:
        sent["referee_identity"] = referee
    fingerprint = hashlib.sha256(_dumps(sent, sort_keys=True)).hexdigest()

    body: dict[str, Any] = {
        "event": fields["event"],
        "token": fields["token"],
        "server_id": server_id,
    }
    if referee is not None:
        body["referee_identity"] = referee
    body["server_event_id"] = fields["server_event_id"]
    body["ts"] = ts
    if test is not None:
        body["test"] = test
    body.update((key, data[key]) for key in unknown)
    return Event(
        server_id=server_id,
        token=fields["token"],
        event=fields["event"],
        server_event_id=fields["server_event_id"],
        test=bool(test),
        body=_dumps(body),
        fingerprint=fingerprint,
        referee_identity=referee,
    )


def _dumps(obj: Any, *, sort_keys: bool = False) -> bytes:
    text = (_SORTED if sort_keys else _COMPACT).encode(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON lets a client write a lone surrogate ("\ud800"), which no UTF-8 body can carry.
        raise InvalidEvent(
            422,
            "invalid_text",
            "the event contains a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is "
            "not text; send valid Unicode.",
        ) from exc


def _required_string(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        raise InvalidEvent(422, "missing_field", f"{name} is required.", name)
    if not isinstance(value, str):
        raise InvalidEvent(
            422, "invalid_field", f"{name} must be a string, got {type(value).__name__}.", name
        )
    value = value.strip()
    if not value:
        raise InvalidEvent(422, "invalid_field", f"{name} must not be empty.", name)
    if len(value) > MAX_FIELD_CHARS:
        raise InvalidEvent(
            422,
            "invalid_field",
            f"{name} is {len(value)} characters; the limit is {MAX_FIELD_CHARS}.",
            name,
        )
    return value


def _id(data: dict[str, Any], name: str) -> str:
    """A required string that is printable text: it is shown in logs, the CLI and the console."""
    value = _required_string(data, name)
    found = _CONTROL.search(value)
    if found:
        raise InvalidEvent(
            422,
            "invalid_field",
            f"{name} contains the control character U+{ord(found.group()):04X}; "
            "send printable text.",
            name,
        )
    return value


def _server_id(data: dict[str, Any], server_ids: Sequence[str]) -> str:
    if data.get("server_id") is None:
        if len(server_ids) == 1:
            return server_ids[0]
        raise InvalidEvent(
            422,
            "missing_field",
            "server_id is required because this relay "
            f"serves several servers: {', '.join(server_ids)}.",
            "server_id",
        )
    server_id = _required_string(data, "server_id")
    if server_id not in server_ids:
        raise InvalidEvent(
            422,
            "unknown_server",
            f"server_id {server_id!r} is not configured "
            f"in this relay; it serves {', '.join(server_ids)}.",
            "server_id",
        )
    return server_id


def _ts(value: Any, now: float) -> int:
    # Only a JSON integer: a float is rounded by every parser (5e-324, 10,000 digits) and
    # MMOLove reads whole seconds.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(
            422,
            "invalid_field",
            "ts must be whole Unix seconds as a JSON integer, e.g. 1733500000.",
            "ts",
        )
    if value < MIN_TS:
        raise InvalidEvent(
            422,
            "invalid_field",
            f"ts {value} is before 2001; send the event's time in Unix seconds.",
            "ts",
        )
    if value > now + MAX_FUTURE_TS_S:
        raise InvalidEvent(
            422,
            "invalid_field",
            "ts is more than a day in the future; send Unix seconds, not milliseconds.",
            "ts",
        )
    return value


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidEvent(
                422, "repeated_field", f"field {key!r} appears twice; send it once.", key
            )
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise InvalidEvent(400, "invalid_json", f"{name} is not valid JSON; send a finite number.")


# Built once: json.loads and json.dumps with options build a new decoder or encoder per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_repeated_keys, parse_constant=_no_constant)
# Compact separators and raw UTF-8: the exact byte form MMOLove's examples sign.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_SORTED = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True
)

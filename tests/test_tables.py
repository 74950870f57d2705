"""What the operator commands print, against a real relay fed hostile input over HTTP and the
real CLI run as a subprocess: a client's text never reaches the terminal as control bytes."""

from __future__ import annotations

import json
import re

import pytest

from relay.cli.tables import printable
from tests.support import Relay, StartRelay, cli, eventually, registered

# A JSON key name a hostile game client sends: set the window title (OSC ... BEL), clear the
# screen and home the cursor (ESC [2J ESC [H), a C1 CSI (U+009B), DEL and a right-to-left
# override. Each would be obeyed by the operator's terminal.
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[H\x9b31mred\x7f\u202eevil"
# What a terminal obeys: C0 but the newline, DEL, C1, and the bidi overrides and isolates.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def controls(out: str) -> dict[str, int]:
    """The control characters in a command's output, by name, for a failure message."""
    found: dict[str, int] = {}
    for char in RAW_CONTROL.findall(out):
        name = {"\x1b": "ESC", "\x07": "BEL"}.get(char, f"U+{ord(char):04X}")
        found[name] = found.get(name, 0) + 1
    return found


async def hostile_relay(start_relay: StartRelay) -> Relay:
    """A relay that refused one event whose unknown field's name is ``HOSTILE``."""
    relay = await start_relay()
    status, _ = await relay.post(registered("tok-h", "p-hostile", **{HOSTILE: 1}))
    assert status == 422

    async def recorded() -> bool:
        _, data = await relay.get("/v1/rejected")
        return bool(data["rejected"])

    await eventually(recorded, what="the rejection recorded")
    return relay


@pytest.mark.parametrize(
    "command", [["rejected"], ["player", "p-hostile"], ["status"]], ids=lambda c: c[0]
)
async def test_a_hostile_field_name_is_printed_escaped(
    start_relay: StartRelay, command: list[str]
) -> None:
    relay = await hostile_relay(start_relay)
    code, out, err = await cli(*command, "--url", relay.url)
    assert code == 0, err
    assert controls(out) == {}, f"{command[0]} printed {controls(out)}"
    if command[0] != "status":  # status names the latest rejection by its message only
        assert printable(HOSTILE) in out


@pytest.mark.parametrize("command", [["rejected"], ["player", "p-hostile"]], ids=lambda c: c[0])
async def test_json_output_escapes_every_control_and_keeps_the_value(
    start_relay: StartRelay, command: list[str]
) -> None:
    relay = await hostile_relay(start_relay)
    code, out, err = await cli(*command, "--json", "--url", relay.url)
    assert code == 0, err
    assert controls(out) == {}, f"{command[0]} --json printed {controls(out)}"
    data = json.loads(out)
    assert data["rejected"][0]["field"] == HOSTILE  # escaped on the screen, intact as data


def test_printable_escapes_c0_del_c1_and_bidi_and_keeps_text() -> None:
    assert printable("a\x1b[2Jb\x07") == "a\\x1b[2Jb\\x07"
    assert printable("\x00\t\r\x7f\x85\x9b") == "\\x00\\x09\\x0d\\x7f\\x85\\x9b"
    assert printable("\u202eevil\u2066") == "\\u202eevil\\u2066"
    assert printable("line one\nline two: ünïcode ✅") == "line one\nline two: ünïcode ✅"

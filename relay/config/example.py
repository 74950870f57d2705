"""The example config file, written from the table of settings: every key, with its default
and its help. ``relay/relay.example.toml`` is this text; a test keeps them equal."""

from __future__ import annotations

import textwrap

from relay.config.keys import ARRAYS, TABLE, Row
from relay.config.settings import SECTIONS

HEADER = """\
# mmolove-relay configuration: every key, with its default.
#
# Use it with `mmolove-relay --config relay.toml serve` or MMOLOVE_RELAY_CONFIG=relay.toml.
# Environment variables override the file (`mmolove-relay serve --help` lists them), so a
# container needs no file at all. Unknown keys are an error: a typo never silently falls
# back to a default. `mmolove-relay check-config --example` prints this file.
"""
# What a section's settings share, said once above them.
INTRODUCTIONS = {
    "alerting": "When each condition fires. Each sends one message when it starts, a reminder "
    "at most every alert_reminder_s while it lasts, and one when it has been clear for "
    "alert_resolve_after_s.",
}


def example() -> str:
    """The example file's text."""
    parts = [HEADER]
    for section in SECTIONS:
        rows = [row for row in TABLE if row.key.section == section]
        lines = [] if not section or section in ARRAYS else [f"[{section}]"]
        if section in INTRODUCTIONS:
            lines += _comment(INTRODUCTIONS[section])
        for row in rows:
            lines += _entry(row)
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def _entry(row: Row) -> list[str]:
    lines = _comment(row.key.help[0].upper() + row.key.help[1:] + ".")
    lines += [f"# {line}" for line in row.key.more.splitlines()]
    said = [f"env: {', '.join(row.key.env)}"] if row.key.env else []
    if row.key.example is not None and row.key.default_text:
        said.append(f"default: {row.key.default_text}")
    lines += _comment("; ".join(said)) if said else []
    lines += (row.key.example or f"{row.keys[0]} = {_toml(row.default)}").splitlines()
    return lines


def _comment(text: str) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(text, width=88, break_on_hyphens=False)]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"'

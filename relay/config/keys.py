"""What is derived from the table of settings: its rows, the keys each file section allows,
the environment variables the relay reads, and the warning for one it does not know."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from relay.config.settings import SECTIONS, Key, Settings
from relay.config.values import ConfigNote


@dataclass(frozen=True, slots=True)
class Row:
    """One setting: its ``Settings`` attribute, default and ``Key``."""

    name: str
    default: object
    key: Key

    @property
    def keys(self) -> tuple[str, ...]:
        return self.key.keys or (self.name,)

    @property
    def where(self) -> str:
        """Where it goes in the file: ``endpoint``, ``[ingest] listen`` or ``[[servers]]``."""
        section, key = self.key.section, self.keys[0]
        if section in ARRAYS:
            return f"[[{section}]]"
        return f"[{section}] {key}" if section else key

    @property
    def default_text(self) -> str:
        return self.key.default_text or str(self.default)


TABLE = tuple(Row(f.name, f.default, f.metadata["key"]) for f in fields(Settings) if f.metadata)
ROWS = {row.name: row for row in TABLE}
ARRAYS = ("servers", "sources", "alerts")  # arrays of tables: [[servers]], ...

# Section -> the keys it allows; anything else in the file is a typo, and an error.
SECTION_KEYS: dict[str, frozenset[str]] = {
    section: frozenset(key for row in TABLE if row.key.section == section for key in row.keys)
    | (frozenset(SECTIONS) - {""} if not section else frozenset())
    for section in SECTIONS
}


def _variables() -> dict[tuple[str, ...], tuple[str, str]]:
    """Variable names -> (what they set, their default); one variable may set two settings."""
    out: dict[tuple[str, ...], tuple[str, str]] = {
        ("MMOLOVE_RELAY_CONFIG",): ("the TOML config file", "none")
    }
    for row in TABLE:
        if not row.key.env:
            continue
        what, default = f"{row.where}: {row.key.help}", row.default_text
        if row.key.env in out:  # MMOLOVE_RELAY_DB: the file, or a database; the file's default
            what, default = f"{out[row.key.env][0]}; or {what}", out[row.key.env][1]
        out[row.key.env] = (what, default)
    return out


# The variables serve reads, by what they set (serve --help), and one by one.
VARIABLES = _variables()
ENVIRONMENT = {name: value for names, value in VARIABLES.items() for name in names}
# Every MMOLOVE_* variable something reads: the settings' and what the CLI and the examples
# read (MMOLOVE_RELAY_URL, MMOLOVE_SPOOL), since one environment may serve both. Any other
# is a typo or a setting this version ignores.
KNOWN_VARIABLES = frozenset(ENVIRONMENT) | {"MMOLOVE_RELAY_URL", "MMOLOVE_SPOOL"}


def unknown_variables(environ: Mapping[str, str]) -> list[ConfigNote]:
    """A warning for each MMOLOVE_* variable no setting reads: a typo would go unnoticed."""
    return [
        ConfigNote(
            "config.unknown_variable",
            f"{name} is set but no setting of this relay has that name, so it is ignored; "
            "check its spelling against `mmolove-relay serve --help`.",
        )
        for name in sorted(environ)
        if name.startswith("MMOLOVE_") and name not in KNOWN_VARIABLES
    ]

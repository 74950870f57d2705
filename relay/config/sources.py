"""``[[sources]]``: the game databases the relay watches, each entry checked into one
``SourceConfig`` whose errors name the source. The watchers themselves are ``relay.sources``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from relay.config.secrets import read_secret_file
from relay.config.values import ConfigNote, Secret, mask_url
from relay.errors import ConfigError
from relay.sources.statements import dialect_of, parameter_names, single_select

Produces = Literal["registered", "qualified"]
PRODUCES: tuple[Produces, ...] = ("registered", "qualified")
SOURCE_KEYS = (
    "name",
    "produces",
    "url",
    "password_file",
    "query",
    "interval_s",
    "server_id",
    "milestone",
    "statement_timeout_s",
    "start_cursor",
    "players_per_poll",
)
# The parameters each kind of query must use: what the watcher binds.
NEEDS: dict[Produces, frozenset[str]] = {
    "registered": frozenset({"cursor", "limit"}),
    "qualified": frozenset({"players"}),
}
# A milestone poll's share of the watched players: two statements of 500, about 23 ms on
# MariaDB (docs/sources.md, "The load on the game's database").
PLAYERS_PER_POLL = 1000
# A name goes into metric labels, alert keys and the command line; a milestone into keys.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MILESTONE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """One watcher over a game's database; ``password`` is read from ``password_file``."""

    name: str
    produces: Produces
    url: str
    query: str
    server_id: str
    password: Secret | None = None
    password_file: Path | None = None
    interval_s: float = 10.0
    statement_timeout_s: float = 5.0
    milestone: str | None = None  # qualified only: the key's last part
    start_cursor: int | str = 0  # registered only: the cursor of the very first poll
    # qualified only: how many watched players one poll asks about; the next poll asks about
    # the next ones, so each is asked about once every ceil(watched / this) polls.
    players_per_poll: int = PLAYERS_PER_POLL

    @property
    def masked_url(self) -> str:
        # A SQLite URL is a path: no secret in it, and the operator needs to see it whole.
        return self.url if self.url.startswith("sqlite:") else mask_url(self.url)

    def describe(self) -> dict[str, Any]:
        """The entry as plain data, the URL masked: for check-config and status."""
        return {
            "name": self.name,
            "produces": self.produces,
            "url": self.masked_url,
            "password_file": str(self.password_file) if self.password_file else None,
            "server_id": self.server_id,
            "milestone": self.milestone,
            "interval_s": self.interval_s,
            "statement_timeout_s": self.statement_timeout_s,
            "players_per_poll": self.players_per_poll if self.produces == "qualified" else None,
        }


def parse_sources(
    entries: object, server_ids: Sequence[str], *, notes: list[ConfigNote]
) -> tuple[SourceConfig, ...]:
    """Every ``[[sources]]`` entry, checked; ``ConfigError`` names the source and the fix."""
    if not isinstance(entries, list):
        raise ConfigError("sources must be an array of tables: write [[sources]].")
    sources = [_source(entry, i, server_ids, notes) for i, entry in enumerate(entries)]
    names = [s.name for s in sources]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(
            f"source names repeat in [[sources]]: {', '.join(twice)}; give each its own name "
            "(it labels its status, metrics and cursor)."
        )
    return tuple(sources)


def _source(
    entry: dict[str, Any], i: int, server_ids: Sequence[str], notes: list[ConfigNote]
) -> SourceConfig:
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"sources[{i}] has name {name!r}; give each source a name of letters, digits, "
            "'_', '.' or '-' (at most 64), e.g. name = \"registrations\"."
        )
    where = f"source {name}"
    produces = entry.get("produces")
    if produces not in PRODUCES:
        raise ConfigError(
            f'{where} has produces = {produces!r}; use "registered" (a registration '
            'watcher) or "qualified" (a milestone watcher).'
        )
    url = entry.get("url")
    if not isinstance(url, str) or dialect_of(url) is None:
        shown = mask_url(url) if isinstance(url, str) else url
        raise ConfigError(
            f"{where} has url {shown!r}; use mysql://user@host:port/db (MariaDB too), "
            "postgresql://user@host:port/db or sqlite:////path/game.db."
        )
    dialect = dialect_of(url)
    assert dialect is not None
    query = entry.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ConfigError(f'{where} has no query; give the SELECT it runs as query = "...".')
    if (why := single_select(query, dialect)) is not None:
        raise ConfigError(
            f"the query of {where} is not a single SELECT: {why}. A source only reads; give "
            "it one SELECT, and its database user SELECT rights only."
        )
    needs = NEEDS[produces]
    if missing := sorted(needs - parameter_names(query, dialect)):
        example = (
            "WHERE id > :cursor ORDER BY id LIMIT :limit"
            if produces == "registered"
            else "WHERE account IN (:players)"
        )
        raise ConfigError(
            f"the query of {where} does not use :{', :'.join(missing)}; a {produces} source's "
            f"query is written like ... {example}."
        )
    milestone = entry.get("milestone")
    if produces == "qualified":
        if not isinstance(milestone, str) or not _MILESTONE.fullmatch(milestone):
            raise ConfigError(
                f"{where} produces qualified but has milestone {milestone!r}; give a short "
                'name for the key qual-<player>-<milestone>, e.g. milestone = "level20".'
            )
    else:
        for key in ("milestone", "players_per_poll"):
            if key in entry:
                raise ConfigError(f"{where}: only a qualified source takes {key}; remove it.")
    players_per_poll = entry.get("players_per_poll", PLAYERS_PER_POLL)
    if (
        isinstance(players_per_poll, bool)
        or not isinstance(players_per_poll, int)
        or players_per_poll < 1
    ):
        raise ConfigError(
            f"{where} has players_per_poll = {players_per_poll!r}; give a whole number of "
            f"players above 0 (default {PLAYERS_PER_POLL})."
        )
    server_id = _server_id(entry.get("server_id"), server_ids, where)
    password_file = entry.get("password_file")
    password = None
    if password_file:
        password_file = Path(str(password_file)).absolute()
        password = read_secret_file(password_file, what=f"password of {where}", notes=notes)
    start = entry.get("start_cursor", 0)
    if isinstance(start, bool) or not isinstance(start, int | str):
        raise ConfigError(f"{where} has start_cursor {start!r}; give an integer or a string.")
    return SourceConfig(
        name=name,
        produces=produces,
        url=url,
        query=query,
        server_id=server_id,
        password=password,
        password_file=password_file or None,
        interval_s=_positive(entry, "interval_s", 10.0, where),
        statement_timeout_s=_positive(entry, "statement_timeout_s", 5.0, where),
        milestone=milestone,
        start_cursor=start,
        players_per_poll=players_per_poll,
    )


def _server_id(given: object, server_ids: Sequence[str], where: str) -> str:
    if given is None or given == "":
        if len(server_ids) == 1:
            return server_ids[0]
        if not server_ids:
            return ""  # commands that need no server (check-config --example, status)
        raise ConfigError(
            f"{where} has no server_id and the relay signs for {len(server_ids)} servers; "
            f"give it server_id = one of {', '.join(server_ids)}."
        )
    if server_ids and given not in server_ids:
        raise ConfigError(
            f"{where} has server_id {given!r}, which no [[servers]] entry has; use one of "
            f"{', '.join(server_ids)}."
        )
    return str(given)


def _positive(entry: dict[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where} has {key} = {value!r}; give a number of seconds above 0.")
    return float(value)

"""Loading: a TOML file overridden by environment variables, validated into one frozen
``Settings``, with where each value came from (``check-config`` prints it).

``load_settings(environ, path)`` is pure apart from reading the files it is pointed at; only
the CLI passes it the real ``os.environ``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relay.config.keys import ARRAYS, ROWS, SECTION_KEYS, TABLE, Row, unknown_variables
from relay.config.secrets import read_secret_file, secret_from, secret_value
from relay.config.settings import SECTIONS, Settings
from relay.config.sources import parse_sources
from relay.config.values import (
    ALERT_KINDS,
    CREDENTIAL_NAME,
    MIN_SECRET_CHARS,
    AlertTarget,
    ConfigNote,
    Secret,
    ServerConfig,
    mask_url,
)
from relay.errors import ConfigError

_KID = re.compile(r"[!-+\--~]{1,128}")  # visible ASCII except the header's "," separator
DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Loaded:
    """The settings and, by attribute, where each came from: ``default``, ``file PATH``,
    ``environment NAME`` or ``systemd ...``; the servers' secrets say it themselves."""

    settings: Settings
    sources: Mapping[str, str]


def load_settings(
    environ: Mapping[str, str], path: Path | None = None, *, require_servers: bool = True
) -> Settings:
    """Build settings from the TOML file at ``path`` (or ``MMOLOVE_RELAY_CONFIG``) and ``environ``.

    Raises ``ConfigError`` naming the first problem and where the value may come from.
    ``require_servers=False`` serves commands that only read the outbox or call the daemon.
    """
    return load(environ, path, require_servers=require_servers).settings


def load(
    environ: Mapping[str, str], path: Path | None = None, *, require_servers: bool = True
) -> Loaded:
    """``load_settings``, with where each setting came from."""
    notes = unknown_variables(environ)
    if path is None and environ.get("MMOLOVE_RELAY_CONFIG"):
        path = Path(environ["MMOLOVE_RELAY_CONFIG"])
    doc = _read_toml(path) if path else {}
    _reject_unknown_keys(doc)
    given = _Given(environ, doc, path)
    values: dict[str, Any] = {}
    sources = {row.name: DEFAULT for row in TABLE}
    for row in TABLE:
        found = None if row.key.composite else given.first(row)
        if found is not None:
            raw, sources[row.name] = found
            values[row.name] = (row.key.parse or _scalar(row))(raw, sources[row.name])
    values["ingest_token"] = _ingest_token(given, sources, notes)
    values.update(_database(given, sources, notes))
    values["servers"] = _servers(given, sources, require=require_servers, notes=notes)
    values["alerts"] = _alerts(given, sources, notes=notes)
    entries = given.doc.get("sources", [])
    sources["game_sources"] = given.in_file if entries else DEFAULT
    server_ids = [s.server_id for s in values["servers"]]
    values["game_sources"] = parse_sources(entries, server_ids, notes=notes)
    settings = replace(Settings(), **values, notes=tuple(notes))
    if not settings.listen.is_loopback and settings.ingest_token is None:
        raise ConfigError(
            f"ingest would listen on {settings.listen}, which is not loopback, without a token; "
            "set MMOLOVE_RELAY_INGEST_TOKEN (or MMOLOVE_RELAY_INGEST_TOKEN_FILE, or [ingest] "
            "token_file) or listen on 127.0.0.1."
        )
    return Loaded(settings, sources)


@dataclass(frozen=True, slots=True)
class _Given:
    """What the environment and the file give, each value with the source it is credited to."""

    environ: Mapping[str, str]
    doc: dict[str, Any]
    path: Path | None

    @property
    def in_file(self) -> str:
        return f"file {self.path.absolute() if self.path else None}"

    def table(self, section: str) -> dict[str, Any]:
        table: dict[str, Any] = self.doc.get(section, {}) if section else self.doc
        return table

    def env(self, *names: str) -> tuple[str, str] | None:
        """The first of the variables set (an empty one counts as unset)."""
        return next(
            ((self.environ[n], f"environment {n}") for n in names if self.environ.get(n)), None
        )

    def file(self, section: str, *keys: str) -> tuple[Any, str] | None:
        table = self.table(section)
        present = [k for k in keys if table.get(k, "") != ""]
        return (table[present[0]], self.in_file) if present else None

    def first(self, row: Row) -> tuple[Any, str] | None:
        """The setting's variable over its key in the file; None: the default."""
        return self.env(*row.key.env) or self.file(row.key.section, row.keys[0])


def _scalar(row: Row) -> Any:
    """The parser for an int, float or bool setting: its default's type, and positive."""
    expected = type(row.default)

    def parse(value: object, where: str) -> object:
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            kind = {int: "an integer", float: "a number", bool: "true or false"}[expected]
            raise ConfigError(f"{row.name} must be {kind}, got {value!r} (from {where}).")
        if expected in (int, float) and value <= 0:  # type: ignore[operator]
            raise ConfigError(f"{row.name} must be greater than 0, got {value!r} (from {where}).")
        return value

    return parse


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}.") from exc


def _reject_unknown_keys(doc: dict[str, Any]) -> None:
    def check(section: str, table: object, where: str) -> None:
        if not isinstance(table, dict):
            raise ConfigError(
                f"{where} must be a table; see `mmolove-relay check-config --example`."
            )
        for key in table:
            if key not in SECTION_KEYS[section]:
                raise ConfigError(
                    f"unknown config key {where}.{key}; `mmolove-relay check-config --example` "
                    "prints the keys that exist."
                )

    check("", doc, "(top level)")
    for section in SECTIONS:
        if section in ARRAYS:
            entries = doc.get(section, [])
            if not isinstance(entries, list):
                raise ConfigError(f"{section} must be an array of tables: write [[{section}]].")
            for i, entry in enumerate(entries):
                check(section, entry, f"{section}[{i}]")
        elif section in doc:
            check(section, doc[section], f"[{section}]")


def _ingest_token(given: _Given, sources: dict[str, str], notes: list[ConfigNote]) -> Secret | None:
    # Either variable overrides both keys of the file, as for every other setting.
    env = ("MMOLOVE_RELAY_INGEST_TOKEN", "MMOLOVE_RELAY_INGEST_TOKEN_FILE")
    found = given.env(*env)
    if found:
        value, file = (given.environ.get(name) for name in env)
    else:
        found = given.file("ingest", "token", "token_file")
        value, file = (given.table("ingest").get(key) for key in ("token", "token_file"))
    sources["ingest_token"] = found[1] if found else DEFAULT
    token = secret_from(value, file, what="ingest token", notes=notes)
    if token is not None and len(token.reveal()) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"the ingest token is too short to resist guessing ({len(token.reveal())} of at "
            f"least {MIN_SECRET_CHARS} characters); use a long random one, e.g. the output of "
            "`openssl rand -hex 24`."
        )
    return token


def _database(given: _Given, sources: dict[str, str], notes: list[ConfigNote]) -> dict[str, Any]:
    """Where the outbox lives: a SQLite file (a path), or PostgreSQL (a postgresql:// URL).

    One variable names either, so it overrides both keys of the file; the one not in use
    stays at its default."""
    found = given.env("MMOLOVE_RELAY_DB") or given.file("outbox", "url", "path")
    password = given.env("MMOLOVE_RELAY_DB_PASSWORD_FILE") or given.file("outbox", "password_file")
    # The password stays with a SQLite outbox: migrate-outbox reads it and writes to a database.
    out: dict[str, Any] = {
        "db_password": secret_from(
            None, password and password[0], what="outbox database password", notes=notes
        )
    }
    if password:
        sources["db_password"] = password[1]
    where, source = (str(found[0]), found[1]) if found else ("", DEFAULT)
    if where.startswith(("postgresql://", "postgres://")):
        out["db_url"], sources["db_url"] = where, source
        where = ""
    elif "://" in where:
        raise ConfigError(
            f"MMOLOVE_RELAY_DB {mask_url(where)!r} ({source}) is neither a file path nor a "
            "postgresql:// URL; use a path for SQLite or postgresql://user@host/db."
        )
    state = given.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if where:
        path = Path(where)
        sources["db_path"] = source
    elif state:
        path = Path(state) / "outbox.db"
        sources["db_path"] = "systemd StateDirectory"
    else:
        path = ROWS["db_path"].default  # type: ignore[assignment]
    # Absolute, so logs and check-config say where the outbox is, wherever it started.
    out["db_path"] = path.absolute()
    return out


def _servers(
    given: _Given, sources: dict[str, str], *, require: bool, notes: list[ConfigNote]
) -> tuple[ServerConfig, ...]:
    entries: list[dict[str, Any]] = given.doc.get("servers", [])
    sources["servers"] = given.in_file if entries else DEFAULT
    env_id = given.environ.get("MMOLOVE_SERVER_ID", "").strip()
    if env_id:
        # The environment describes the single server; a file entry with the same id may
        # still provide its secret file or kid.
        base = next((e for e in entries if e.get("id") == env_id), {})
        entries = [{**base, "id": env_id}]
        sources["servers"] = "environment MMOLOVE_SERVER_ID"
    if not entries:
        if not require:
            return ()
        raise ConfigError(
            "no MMOLove server id: set MMOLOVE_SERVER_ID or add a [[servers]] entry with an id "
            "to the config file."
        )
    single = len(entries) == 1
    servers = []
    for entry in entries:
        server_id = str(entry.get("id", "")).strip()
        if not server_id:
            raise ConfigError('a [[servers]] entry has no id; give each one id = "<server id>".')
        servers.append(
            _server(given.environ, entry, server_id, single=single, require=require, notes=notes)
        )
    ids = [s.server_id for s in servers]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"server ids repeat in [[servers]]: {ids}; give each server once.")
    return tuple(servers)


def _server(
    environ: Mapping[str, str],
    entry: dict[str, Any],
    server_id: str,
    *,
    single: bool,
    require: bool,
    notes: list[ConfigNote],
) -> ServerConfig:
    kid = (environ.get("MMOLOVE_KID") if single else None) or entry.get("kid") or None
    if kid is not None and not _KID.fullmatch(str(kid)):
        raise ConfigError(
            f"kid of server {server_id} must be 1-128 visible ASCII characters without commas "
            "or spaces (it goes into the signature header); check MMOLOVE_KID or its entry."
        )
    secret_file: Path | None = None
    secret: Secret | None = None
    what = f"signing secret of server {server_id}"
    # Precedence: environment (single server only), then the file entry, then systemd.
    source = "nowhere"
    if single and environ.get("MMOLOVE_SECRET"):
        secret = secret_value(environ["MMOLOVE_SECRET"], what=what, notes=notes)
        source = "environment MMOLOVE_SECRET"
    elif single and environ.get("MMOLOVE_SECRET_FILE"):
        secret_file = Path(environ["MMOLOVE_SECRET_FILE"])
        source = "environment MMOLOVE_SECRET_FILE"
    elif entry.get("secret"):
        secret = secret_value(str(entry["secret"]), what=what, notes=notes)
        source = "the config file's secret"
    elif entry.get("secret_file"):
        secret_file, source = Path(str(entry["secret_file"])), "the config file's secret_file"
    elif environ.get("CREDENTIALS_DIRECTORY"):
        name = CREDENTIAL_NAME if single else f"{CREDENTIAL_NAME}-{server_id}"
        candidate = Path(environ["CREDENTIALS_DIRECTORY"]) / name
        secret_file = candidate if candidate.exists() else None
        source = f"systemd credential {name}"
    if secret_file is not None:
        secret = read_secret_file(secret_file, what=what, notes=notes)
    if secret is not None and len(secret.reveal()) < MIN_SECRET_CHARS:
        notes.append(
            ConfigNote(
                "config.short_secret",
                f"the {what} is short ({len(secret.reveal())} of the {MIN_SECRET_CHARS} or "
                "more characters MMOLove's secrets have); check it is the whole secret. Logs "
                "mask it only where it appears whole.",
            )
        )
    if secret is None:
        if require:
            raise ConfigError(
                f"no {what}: set MMOLOVE_SECRET or MMOLOVE_SECRET_FILE, give its [[servers]] "
                f"entry secret_file, or pass a systemd credential named {CREDENTIAL_NAME}."
            )
        secret = Secret("")
    return ServerConfig(
        server_id=server_id,
        secret=secret,
        kid=kid,
        secret_file=secret_file.absolute() if secret_file else None,
        secret_from=source,
    )


def _alerts(
    given: _Given, sources: dict[str, str], *, notes: list[ConfigNote]
) -> tuple[AlertTarget, ...]:
    """``[[alerts]]`` entries, plus one target from ``MMOLOVE_RELAY_ALERT_URL`` (or ``_FILE``)."""
    entries: list[dict[str, Any]] = list(given.doc.get("alerts", []))
    credits = [given.in_file] if entries else []
    env = given.env("MMOLOVE_RELAY_ALERT_URL", "MMOLOVE_RELAY_ALERT_URL_FILE")
    if env:
        entries.append(
            {
                "kind": given.environ.get("MMOLOVE_RELAY_ALERT_KIND") or "webhook",
                "url": given.environ.get("MMOLOVE_RELAY_ALERT_URL"),
                "url_file": given.environ.get("MMOLOVE_RELAY_ALERT_URL_FILE"),
                "name": "from the environment",
            }
        )
        credits.append(env[1])
    sources["alerts"] = " and ".join(credits) or DEFAULT
    targets = []
    for i, entry in enumerate(entries):
        where = entry.get("name") or f"alerts[{i}]"
        kind = entry.get("kind", "webhook")
        if kind not in ALERT_KINDS:
            raise ConfigError(
                f"alert target {where} has kind {kind!r}; use one of {', '.join(ALERT_KINDS)} "
                "(MMOLOVE_RELAY_ALERT_KIND or kind = in [[alerts]])."
            )
        url = secret_from(
            entry.get("url"), entry.get("url_file"), what=f"URL of {where}", notes=notes
        )
        if url is None:
            raise ConfigError(f"alert target {where} has no url; give url or url_file.")
        parts = urlsplit(url.reveal())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Never echo the URL: it holds the target's token.
            raise ConfigError(f"the URL of alert target {where} is not an http(s) URL.")
        secret = secret_from(
            entry.get("secret"), entry.get("secret_file"), what=f"{where} secret", notes=notes
        )
        if secret is not None and kind != "webhook":
            raise ConfigError(f"alert target {where}: only a webhook target takes a secret.")
        targets.append(AlertTarget(kind, url, secret, str(entry.get("name") or "")))
    return tuple(targets)

"""Settings: a TOML file overridden by environment variables, validated into one frozen object.

``load_settings(environ, path)`` is pure apart from reading the files it is pointed at; only
the CLI passes it the real ``os.environ``. ``mmolove-relay check-config --example`` prints
every key.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from relay.credentials import read_small_text, trim
from relay.errors import ConfigError

DEFAULT_ENDPOINT = "https://mmolove.com/api/referral/events"
DEFAULT_LISTEN = "127.0.0.1:8787"
CREDENTIAL_NAME = "mmolove-secret"
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,252}[a-z0-9])?")
_KID = re.compile(r"[!-+\--~]{1,128}")  # visible ASCII except the header's "," separator
# Shorter than this, a secret is guessable and too common a string for the log scrubber to
# mask wherever it appears: tokens are refused, signing secrets (MMOLove issues them) warned.
MIN_SECRET_CHARS = 16
# The variables serve reads, what each sets and its default when unset (serve --help).
ENVIRONMENT = {
    "MMOLOVE_RELAY_CONFIG": ("the TOML config file", "none"),
    "MMOLOVE_SERVER_ID": ("servers", "none: set it or write [[servers]] in the file"),
    "MMOLOVE_SECRET": ("servers", "none: this, MMOLOVE_SECRET_FILE or a systemd credential"),
    "MMOLOVE_SECRET_FILE": ("servers", f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}"),
    "MMOLOVE_KID": ("servers", "none"),
    "MMOLOVE_ENDPOINT": ("endpoint", DEFAULT_ENDPOINT),
    "MMOLOVE_RELAY_LISTEN": ("listen", DEFAULT_LISTEN),
    "MMOLOVE_RELAY_INGEST_TOKEN": ("ingest_token", "none; required when not on loopback"),
    "MMOLOVE_RELAY_INGEST_TOKEN_FILE": ("ingest_token", "none"),
    "MMOLOVE_RELAY_ALLOWED_HOSTS": ("allowed_hosts", "none: loopback names and the listen address"),
    "MMOLOVE_RELAY_DB": ("db_path", "$STATE_DIRECTORY/outbox.db, else ./mmolove-relay.db"),
    "MMOLOVE_RELAY_LOG_FORMAT": ("log_format", "json, or console on a terminal"),
}
# Every MMOLOVE_* variable something reads: SPEC.md's table, the file variants, and what the
# CLI and the examples read (MMOLOVE_RELAY_URL, MMOLOVE_SPOOL), since one environment may
# serve both. Any other is a typo or a setting this version ignores.
KNOWN_VARIABLES = frozenset(ENVIRONMENT) | {
    "MMOLOVE_RELAY_DB_PASSWORD_FILE",
    "MMOLOVE_RELAY_ALERT_URL",
    "MMOLOVE_RELAY_ALERT_URL_FILE",
    "MMOLOVE_RELAY_ALERT_KIND",
    "MMOLOVE_RELAY_URL",
    "MMOLOVE_SPOOL",
}


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class ConfigNote:
    """Something about the configuration worth a warning at start-up, but not fatal."""

    event: str  # the log event, e.g. config.unknown_variable
    message: str  # what happened and what to do; never a secret's value
    level: str = "warning"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One MMOLove server the relay signs for; ``secret_file`` is kept so it can be re-read."""

    server_id: str
    secret: Secret
    kid: str | None = None
    secret_file: Path | None = None
    secret_from: str = "the environment or config file"  # noqa: S105 - a source, not a secret


ALERT_KINDS = ("discord", "slack", "webhook")


@dataclass(frozen=True, slots=True)
class AlertTarget:
    """Where alerts go; the URL holds the target's token, so it is a secret too."""

    kind: str  # discord, slack or webhook
    url: Secret
    secret: Secret | None = None  # webhook only: signs each body with HMAC-SHA256
    name: str = ""

    @property
    def masked_url(self) -> str:
        """Scheme and host only: enough to tell targets apart, nothing to post with."""
        parts = urlsplit(self.url.reveal())
        return f"{parts.scheme}://{parts.hostname or ''}/***"

    @property
    def label(self) -> str:
        return self.name or f"{self.kind} {self.masked_url}"


@dataclass(frozen=True, slots=True)
class Listen:
    """Where ingest listens: a TCP ``host``/``port`` or a Unix socket ``path``."""

    host: str = "127.0.0.1"
    port: int = 8787
    path: Path | None = None

    @property
    def is_loopback(self) -> bool:
        if self.path is not None or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.path else host_port(self.host, self.port)


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets so the port stays apart."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def base_url(host: str, port: int, scheme: str = "http") -> str:
    """The URL to dial a listener bound to ``host``; a wildcard bind is dialled on loopback."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"{scheme}://{host_port(host, port)}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the daemon needs, validated; setting names carry their units."""

    servers: tuple[ServerConfig, ...] = ()
    endpoint: str = DEFAULT_ENDPOINT
    listen: Listen = field(default_factory=Listen)
    db_path: Path = Path("mmolove-relay.db")
    db_url: str | None = None  # postgresql://…: a fleet's shared outbox (db_path is unused)
    db_password: Secret | None = None
    ingest_token: Secret | None = None
    # Host names ingest answers under besides loopback ones and the listen address (relay.origins)
    allowed_hosts: tuple[str, ...] = ()
    log_format: str | None = None  # "json", "console", or None: decided by the terminal
    ca_file: Path | None = None
    # ingest
    max_body_bytes: int = 1024 * 1024  # single events and batches alike
    max_batch: int = 500
    allow_extra_fields: bool = False
    min_free_bytes: int = 64 * 1024 * 1024
    # hostile clients (relay.guard)
    max_connections: int = 4096
    header_timeout_s: float = 15.0  # also how long an idle keep-alive connection stays open
    body_timeout_s: float = 30.0
    max_body_bytes_in_flight: int = 16 * 1024 * 1024
    lock_timeout_s: float = 1.0  # a write's wait for a lock another process holds
    # delivery
    concurrency: int = 4
    connect_timeout_s: float = 5.0
    send_timeout_s: float = 15.0
    max_age_s: float = 7 * 24 * 3600.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 600.0
    retry_after_cap_s: float = 3600.0
    breaker_retry_after_cap_s: float = 300.0
    max_send_rate_per_s: float = 100.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 10.0
    pause_probe_s: float = 60.0
    drain_timeout_s: float = 10.0
    # outbox
    retention_s: float = 7 * 24 * 3600.0
    # warnings found while loading, logged by the daemon at start-up and on reload
    notes: tuple[ConfigNote, ...] = ()
    ledger_retention_s: float = 180 * 24 * 3600.0
    max_outbox_bytes: int = 0  # 0: unlimited
    rejected_keep: int = 10_000
    # alerts: the targets, then when each condition fires
    alerts: tuple[AlertTarget, ...] = ()
    alert_after_s: float = 300.0  # circuit open this long
    alert_pending_age_s: float = 900.0  # oldest pending this old
    alert_rejected_count: int = 10  # this many rejected inputs ...
    alert_rejected_window_s: float = 300.0  # ... within this window
    alert_reminder_s: float = 3600.0  # while a condition stays firing
    alert_resolve_after_s: float = 120.0  # clear this long before "resolved": no flapping
    alert_every_s: float = 1.0  # how often the rules are evaluated
    reserve_bytes: int = 8 * 1024 * 1024  # disk kept back for outcomes and purge

    def server(self, server_id: str) -> ServerConfig | None:
        return next((s for s in self.servers if s.server_id == server_id), None)


# TOML section -> {key in the file: Settings attribute}; anything else in the file is a typo.
_TUNABLES: dict[str, dict[str, str]] = {
    "ingest": {
        "max_body_bytes": "max_body_bytes",
        "max_batch": "max_batch",
        "allow_extra_fields": "allow_extra_fields",
        "min_free_bytes": "min_free_bytes",
        "max_connections": "max_connections",
        "header_timeout_s": "header_timeout_s",
        "body_timeout_s": "body_timeout_s",
        "max_body_bytes_in_flight": "max_body_bytes_in_flight",
        "lock_timeout_s": "lock_timeout_s",
    },
    "delivery": {
        name: name
        for name in (
            "concurrency",
            "connect_timeout_s",
            "send_timeout_s",
            "max_age_s",
            "backoff_base_s",
            "backoff_cap_s",
            "retry_after_cap_s",
            "breaker_retry_after_cap_s",
            "max_send_rate_per_s",
            "breaker_failures",
            "breaker_cooldown_s",
            "pause_probe_s",
            "drain_timeout_s",
        )
    },
    "outbox": {
        name: name
        for name in (
            "retention_s",
            "ledger_retention_s",
            "max_outbox_bytes",
            "rejected_keep",
            "reserve_bytes",
        )
    },
    "alerting": {
        name: name
        for name in (
            "alert_after_s",
            "alert_pending_age_s",
            "alert_rejected_count",
            "alert_rejected_window_s",
            "alert_reminder_s",
            "alert_resolve_after_s",
        )
    },
}
_SECTION_KEYS = {
    "": {
        "endpoint",
        "log_format",
        "ca_file",
        "ingest",
        "delivery",
        "outbox",
        "servers",
        "alerting",
        "alerts",
    },
    "ingest": {"listen", "token", "token_file", "allowed_hosts", *_TUNABLES["ingest"]},
    "delivery": set(_TUNABLES["delivery"]),
    "outbox": {"path", "url", "password_file", *_TUNABLES["outbox"]},
    "servers": {"id", "secret", "secret_file", "kid"},
    "alerting": set(_TUNABLES["alerting"]),
    "alerts": {"kind", "url", "url_file", "secret", "secret_file", "name"},
}


def load_settings(
    environ: Mapping[str, str], path: Path | None = None, *, require_servers: bool = True
) -> Settings:
    """Build settings from the TOML file at ``path`` (or ``MMOLOVE_RELAY_CONFIG``) and ``environ``.

    Raises ``ConfigError`` naming the first problem and where the value may come from.
    ``require_servers=False`` serves commands that only read the outbox or call the daemon.
    """
    notes = [
        ConfigNote(
            "config.unknown_variable",
            f"{name} is set but no setting of this relay has that name, so it is ignored; "
            "check its spelling against the table of variables in the README.",
        )
        for name in sorted(environ)
        if name.startswith("MMOLOVE_") and name not in KNOWN_VARIABLES
    ]
    if path is None and environ.get("MMOLOVE_RELAY_CONFIG"):
        path = Path(environ["MMOLOVE_RELAY_CONFIG"])
    doc = _read_toml(path) if path else {}
    _reject_unknown_keys(doc)
    ingest, outbox = doc.get("ingest", {}), doc.get("outbox", {})

    overrides: dict[str, Any] = {}
    for section, keys in _TUNABLES.items():
        for key, attr in keys.items():
            if key in doc.get(section, {}):
                overrides[attr] = doc[section][key]
    settings = replace(Settings(), **_typed(overrides))

    endpoint = environ.get("MMOLOVE_ENDPOINT") or doc.get("endpoint") or DEFAULT_ENDPOINT
    listen = parse_listen(
        environ.get("MMOLOVE_RELAY_LISTEN") or ingest.get("listen", DEFAULT_LISTEN)
    )
    # Either variable overrides both keys of the file, as for every other setting.
    env_token = (
        environ.get("MMOLOVE_RELAY_INGEST_TOKEN"),
        environ.get("MMOLOVE_RELAY_INGEST_TOKEN_FILE"),
    )
    token = _secret_from(
        *(env_token if any(env_token) else (ingest.get("token"), ingest.get("token_file"))),
        what="ingest token",
        notes=notes,
    )
    if token is not None and len(token.reveal()) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"the ingest token is too short to resist guessing ({len(token.reveal())} of at "
            f"least {MIN_SECRET_CHARS} characters); use a long random one, e.g. the output of "
            "`openssl rand -hex 24`."
        )
    log_format = environ.get("MMOLOVE_RELAY_LOG_FORMAT") or doc.get("log_format")
    if log_format not in (None, "json", "console"):
        raise ConfigError(f"log_format is {log_format!r}; use 'json' or 'console'.")
    settings = replace(
        settings,
        endpoint=_check_endpoint(str(endpoint)),
        listen=listen,
        ingest_token=token,
        allowed_hosts=_allowed_hosts(
            environ.get("MMOLOVE_RELAY_ALLOWED_HOSTS"), ingest.get("allowed_hosts", [])
        ),
        log_format=log_format,
        **_database(environ, outbox, notes),
        ca_file=Path(doc["ca_file"]) if doc.get("ca_file") else None,
        servers=_servers(environ, doc.get("servers", []), require=require_servers, notes=notes),
        alerts=_alerts(environ, doc.get("alerts", []), notes=notes),
    )
    settings = replace(settings, notes=tuple(notes))
    if not listen.is_loopback and settings.ingest_token is None:
        raise ConfigError(
            f"ingest would listen on {listen}, which is not loopback, without a token; "
            "set MMOLOVE_RELAY_INGEST_TOKEN (or MMOLOVE_RELAY_INGEST_TOKEN_FILE, or [ingest] "
            "token_file) or listen on 127.0.0.1."
        )
    return settings


def _allowed_hosts(env: str | None, entries: object) -> tuple[str, ...]:
    """Bare host names: ``MMOLOVE_RELAY_ALLOWED_HOSTS`` (comma-separated) over the file's list."""
    if env is not None:
        entries = [name for name in env.split(",") if name.strip()]
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ConfigError('[ingest] allowed_hosts is a list of host names, e.g. ["relay.lan"].')
    names = tuple(name.strip().lower() for name in entries)
    for name in names:
        if not _HOST_NAME.fullmatch(name):
            raise ConfigError(
                f"allowed host {name[:100]!r} is not a bare host name; give the name only, "
                'without scheme, port or path, e.g. "relay.lan".'
            )
    return names


def parse_listen(text: str) -> Listen:
    """``host:port``, ``[v6]:port`` or ``unix:/path``; ``ConfigError`` explains anything else."""
    if text.startswith("unix:"):
        return Listen(path=Path(text.removeprefix("unix:")))
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"listen address {text!r} is not host:port or unix:/path; e.g. 127.0.0.1:8787."
        )
    return Listen(host=host, port=int(port))


def read_secret_file(path: Path, *, what: str, notes: list[ConfigNote] | None = None) -> Secret:
    """Read a secret from a small regular file, trimmed like every secret.

    ``notes`` collects a trim, if one happens; without it the trim is silent (rotation).
    """
    text = read_small_text(path, what=f"{what} file")
    value = clean_secret(text, what=what, notes=notes)
    if not value:
        raise ConfigError(f"the {what} file {path} is empty; put the secret in it.")
    return Secret(value)


def clean_secret(raw: str, *, what: str, notes: list[ConfigNote] | None = None) -> str:
    """The one trim for secrets from any source (file or variable), noted when it happens."""
    value, removed = trim(raw)
    if removed and notes is not None:
        notes.append(
            ConfigNote(
                "config.secret_trimmed",
                f"removed {', '.join(removed)} from the {what}; the rest is used as the secret.",
                level="info",
            )
        )
    return value


def mask_url(url: str) -> str:
    """``url`` with its user and password, if any, replaced by ***: safe to print and log."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"  # unparseable: it may hold anything
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])
    # A libpq URL may carry its password as a query parameter as well.
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit(parts._replace(query=query))


def reread_secret(server: ServerConfig) -> ServerConfig:
    """The server with its secret read again from its file; unchanged when it has none."""
    if server.secret_file is None:
        return server
    secret = read_secret_file(server.secret_file, what=f"secret of server {server.server_id}")
    return replace(server, secret=secret)


def describe(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, secrets masked, for ``check-config`` and logs."""
    out: dict[str, Any] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name == "servers":
            value = [
                {
                    "id": s.server_id,
                    "kid": s.kid,
                    "secret": "***",
                    "secret_file": str(s.secret_file) if s.secret_file else None,
                    "secret_from": s.secret_from,
                }
                for s in value
            ]
        elif f.name == "endpoint":
            value = mask_url(value)
        elif f.name == "notes":
            value = [note.message for note in value]
        elif f.name == "alerts":
            value = [
                {"kind": a.kind, "name": a.name, "url": a.masked_url, "signed": bool(a.secret)}
                for a in value
            ]
        elif isinstance(value, Secret):
            value = "***"
        elif f.name == "db_url" and value:
            value = mask_url(value)
        elif isinstance(value, Path | Listen):
            value = str(value)
        out[f.name] = value
    return out


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
            if key not in _SECTION_KEYS[section]:
                raise ConfigError(
                    f"unknown config key {where}.{key}; `mmolove-relay check-config --example` "
                    "prints the keys that exist."
                )

    check("", doc, "(top level)")
    for section in ("ingest", "delivery", "outbox", "alerting"):
        if section in doc:
            check(section, doc[section], f"[{section}]")
    alerts = doc.get("alerts", [])
    if not isinstance(alerts, list):
        raise ConfigError("alerts must be an array of tables: write [[alerts]].")
    for i, entry in enumerate(alerts):
        check("alerts", entry, f"alerts[{i}]")
    servers = doc.get("servers", [])
    if not isinstance(servers, list):
        raise ConfigError("servers must be an array of tables: write [[servers]].")
    for i, entry in enumerate(servers):
        check("servers", entry, f"servers[{i}]")


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """Check each tunable against the type of its default and that numbers are positive."""
    defaults = Settings()
    for name, value in values.items():
        expected = type(getattr(defaults, name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = values[name] = float(value)
        if type(value) is not expected:
            kind = {int: "an integer", float: "a number", bool: "true or false"}[expected]
            raise ConfigError(f"{name} must be {kind}, got {value!r}.")
        if expected in (int, float) and value <= 0:
            raise ConfigError(f"{name} must be greater than 0, got {value!r}.")
    return values


def _check_endpoint(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"MMOLOVE_ENDPOINT {mask_url(url)!r} is not an http(s) URL; e.g. {DEFAULT_ENDPOINT}."
        )
    return url


def _database(
    environ: Mapping[str, str], outbox: dict[str, Any], notes: list[ConfigNote]
) -> dict[str, Any]:
    """Where the outbox lives: a SQLite file (a path), or PostgreSQL (a postgresql:// URL)."""
    where = environ.get("MMOLOVE_RELAY_DB") or outbox.get("url") or outbox.get("path")
    password_file = environ.get("MMOLOVE_RELAY_DB_PASSWORD_FILE") or outbox.get("password_file")
    password = _secret_from(None, password_file, what="outbox database password", notes=notes)
    if where and str(where).startswith(("postgresql://", "postgres://")):
        return {"db_url": str(where), "db_password": password}
    if where and "://" in str(where):
        raise ConfigError(
            f"MMOLOVE_RELAY_DB {mask_url(str(where))!r} is neither a file path nor a "
            "postgresql:// URL; use a path for SQLite or postgresql://user@host/db."
        )
    # The password stays: migrate-outbox reads a SQLite file and writes to a database.
    # Absolute, so logs and check-config say where the outbox is, wherever it started.
    path = Path(where) if where else _default_db(environ)
    return {"db_path": path.absolute(), "db_password": password}


def _default_db(environ: Mapping[str, str]) -> Path:
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / "outbox.db" if state else Path("mmolove-relay.db")


def _secret_from(
    value: object, file: object, *, what: str, notes: list[ConfigNote]
) -> Secret | None:
    if value:
        return _secret_value(str(value), what=what, notes=notes)
    if file:
        return read_secret_file(Path(str(file)), what=what, notes=notes)
    return None


def _secret_value(raw: str, *, what: str, notes: list[ConfigNote]) -> Secret:
    value = clean_secret(raw, what=what, notes=notes)
    if not value:
        raise ConfigError(f"the {what} is only whitespace; set the secret itself.")
    return Secret(value)


def _servers(
    environ: Mapping[str, str],
    entries: list[dict[str, Any]],
    *,
    require: bool,
    notes: list[ConfigNote],
) -> tuple[ServerConfig, ...]:
    env_id = environ.get("MMOLOVE_SERVER_ID", "").strip()
    if env_id:
        # The environment describes the single server; a file entry with the same id may
        # still provide its secret file or kid.
        base = next((e for e in entries if e.get("id") == env_id), {})
        entries = [{**base, "id": env_id}]
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
            _server(environ, entry, server_id, single=single, require=require, notes=notes)
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
        secret = _secret_value(environ["MMOLOVE_SECRET"], what=what, notes=notes)
        source = "environment MMOLOVE_SECRET"
    elif single and environ.get("MMOLOVE_SECRET_FILE"):
        secret_file = Path(environ["MMOLOVE_SECRET_FILE"])
        source = "environment MMOLOVE_SECRET_FILE"
    elif entry.get("secret"):
        secret = _secret_value(str(entry["secret"]), what=what, notes=notes)
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
    environ: Mapping[str, str], entries: list[dict[str, Any]], *, notes: list[ConfigNote]
) -> tuple[AlertTarget, ...]:
    """``[[alerts]]`` entries, plus one target from ``MMOLOVE_RELAY_ALERT_URL`` (or ``_FILE``)."""
    entries = list(entries)
    if environ.get("MMOLOVE_RELAY_ALERT_URL") or environ.get("MMOLOVE_RELAY_ALERT_URL_FILE"):
        entries.append(
            {
                "kind": environ.get("MMOLOVE_RELAY_ALERT_KIND") or "webhook",
                "url": environ.get("MMOLOVE_RELAY_ALERT_URL"),
                "url_file": environ.get("MMOLOVE_RELAY_ALERT_URL_FILE"),
                "name": "from the environment",
            }
        )
    targets = []
    for i, entry in enumerate(entries):
        where = entry.get("name") or f"alerts[{i}]"
        kind = entry.get("kind", "webhook")
        if kind not in ALERT_KINDS:
            raise ConfigError(
                f"alert target {where} has kind {kind!r}; use one of {', '.join(ALERT_KINDS)} "
                "(MMOLOVE_RELAY_ALERT_KIND or kind = in [[alerts]])."
            )
        url = _secret_from(
            entry.get("url"), entry.get("url_file"), what=f"URL of {where}", notes=notes
        )
        if url is None:
            raise ConfigError(f"alert target {where} has no url; give url or url_file.")
        parts = urlsplit(url.reveal())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Never echo the URL: it holds the target's token.
            raise ConfigError(f"the URL of alert target {where} is not an http(s) URL.")
        secret = _secret_from(
            entry.get("secret"), entry.get("secret_file"), what=f"{where} secret", notes=notes
        )
        if secret is not None and kind != "webhook":
            raise ConfigError(f"alert target {where}: only a webhook target takes a secret.")
        targets.append(AlertTarget(kind, url, secret, str(entry.get("name") or "")))
    return tuple(targets)


# Settings read from the file outside the [ingest]/[delivery]/[outbox] tunables.
_FILE_KEYS = {
    "endpoint": ("", "endpoint"),
    "log_format": ("", "log_format"),
    "ca_file": ("", "ca_file"),
    "listen": ("ingest", "listen"),
    "ingest_token": ("ingest", "token"),
    "allowed_hosts": ("ingest", "allowed_hosts"),
    "db_path": ("outbox", "path"),
}


def sources(environ: Mapping[str, str], path: Path | None = None) -> dict[str, str]:
    """Where each setting in force came from (environment over file over default), by name;
    the servers' secrets say it themselves (``ServerConfig.secret_from``)."""
    if path is None and environ.get("MMOLOVE_RELAY_CONFIG"):
        path = Path(environ["MMOLOVE_RELAY_CONFIG"])
    doc = _read_toml(path) if path else {}
    where = {f.name: "default" for f in fields(Settings)}
    if environ.get("STATE_DIRECTORY"):
        where["db_path"] = "systemd StateDirectory"
    for section, keys in _TUNABLES.items():
        for key, attr in keys.items():
            if key in doc.get(section, {}):
                where[attr] = f"file {path}"
    for attr, (section, key) in _FILE_KEYS.items():
        table = doc.get(section, {}) if section else doc
        if table.get(key) or (attr == "ingest_token" and table.get("token_file")):
            where[attr] = f"file {path}"
    for name, (attr, _) in ENVIRONMENT.items():
        if environ.get(name) and attr in where and attr != "servers":
            where[attr] = f"environment {name}"
    where["servers"] = (
        "environment MMOLOVE_SERVER_ID"
        if environ.get("MMOLOVE_SERVER_ID")
        else (f"file {path}" if doc.get("servers") else "nowhere")
    )
    return where

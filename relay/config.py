"""Settings: a TOML file overridden by environment variables, validated into one frozen object.

``load_settings(environ, path)`` is pure apart from reading the files it is pointed at; only
the CLI passes it the real ``os.environ``. See ``config/relay.example.toml`` for every key.
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

from relay.errors import ConfigError

DEFAULT_ENDPOINT = "https://mmolove.com/api/referral/events"
DEFAULT_LISTEN = "127.0.0.1:8787"
CREDENTIAL_NAME = "mmolove-secret"
_KID = re.compile(r"[!-+\--~]{1,128}")  # visible ASCII except the header's "," separator


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
class ServerConfig:
    """One MMOLove server the relay signs for; ``secret_file`` is kept so it can be re-read."""

    server_id: str
    secret: Secret
    kid: str | None = None
    secret_file: Path | None = None


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
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


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
    log_format: str | None = None  # "json", "console", or None: decided by the terminal
    ca_file: Path | None = None
    # ingest
    max_body_bytes: int = 1024 * 1024  # single events and batches alike
    max_batch: int = 500
    allow_extra_fields: bool = False
    min_free_bytes: int = 64 * 1024 * 1024
    # delivery
    concurrency: int = 4
    connect_timeout_s: float = 5.0
    send_timeout_s: float = 15.0
    max_age_s: float = 7 * 24 * 3600.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 600.0
    retry_after_cap_s: float = 3600.0
    max_send_rate_per_s: float = 100.0
    breaker_failures: int = 5
    breaker_cooldown_s: float = 10.0
    pause_probe_s: float = 60.0
    drain_timeout_s: float = 10.0
    # outbox
    retention_s: float = 7 * 24 * 3600.0

    def server(self, server_id: str) -> ServerConfig | None:
        return next((s for s in self.servers if s.server_id == server_id), None)


# TOML section -> {key in the file: Settings attribute}; anything else in the file is a typo.
_TUNABLES: dict[str, dict[str, str]] = {
    "ingest": {
        "max_body_bytes": "max_body_bytes",
        "max_batch": "max_batch",
        "allow_extra_fields": "allow_extra_fields",
        "min_free_bytes": "min_free_bytes",
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
            "max_send_rate_per_s",
            "breaker_failures",
            "breaker_cooldown_s",
            "pause_probe_s",
            "drain_timeout_s",
        )
    },
    "outbox": {"retention_s": "retention_s"},
}
_SECTION_KEYS = {
    "": {"endpoint", "log_format", "ca_file", "ingest", "delivery", "outbox", "servers"},
    "ingest": {"listen", "token", "token_file", *_TUNABLES["ingest"]},
    "delivery": set(_TUNABLES["delivery"]),
    "outbox": {"path", "url", "password_file", *_TUNABLES["outbox"]},
    "servers": {"id", "secret", "secret_file", "kid"},
}


def load_settings(
    environ: Mapping[str, str], path: Path | None = None, *, require_servers: bool = True
) -> Settings:
    """Build settings from the TOML file at ``path`` (or ``MMOLOVE_RELAY_CONFIG``) and ``environ``.

    Raises ``ConfigError`` naming the first problem and where the value may come from.
    ``require_servers=False`` serves commands that only read the outbox or call the daemon.
    """
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
    token = _secret_from(
        environ.get("MMOLOVE_RELAY_INGEST_TOKEN") or ingest.get("token"),
        ingest.get("token_file"),
        what="ingest token",
    )
    log_format = environ.get("MMOLOVE_RELAY_LOG_FORMAT") or doc.get("log_format")
    if log_format not in (None, "json", "console"):
        raise ConfigError(f"log_format is {log_format!r}; use 'json' or 'console'.")
    settings = replace(
        settings,
        endpoint=_check_endpoint(str(endpoint)),
        listen=listen,
        ingest_token=token,
        log_format=log_format,
        **_database(environ, outbox),
        ca_file=Path(doc["ca_file"]) if doc.get("ca_file") else None,
        servers=_servers(environ, doc.get("servers", []), require=require_servers),
    )
    if not listen.is_loopback and settings.ingest_token is None:
        raise ConfigError(
            f"ingest would listen on {listen}, which is not loopback, without a token; "
            "set MMOLOVE_RELAY_INGEST_TOKEN (or [ingest] token_file) or listen on 127.0.0.1."
        )
    return settings


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


def read_secret_file(path: Path, *, what: str) -> Secret:
    """Read a secret from a file, ignoring surrounding whitespace (files end with a newline)."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} from {path}: {exc.strerror}.") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the {what} file {path} is not UTF-8 text; write the secret as plain text."
        ) from exc
    if not value:
        raise ConfigError(f"the {what} file {path} is empty; put the secret in it.")
    return Secret(value)


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
                }
                for s in value
            ]
        elif isinstance(value, Secret):
            value = "***"
        elif f.name == "db_url" and value:
            value = masked_url(value)
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
            raise ConfigError(f"{where} must be a table; see config/relay.example.toml.")
        for key in table:
            if key not in _SECTION_KEYS[section]:
                raise ConfigError(
                    f"unknown config key {where}.{key}; see config/relay.example.toml for "
                    "the keys that exist."
                )

    check("", doc, "(top level)")
    for section in ("ingest", "delivery", "outbox"):
        if section in doc:
            check(section, doc[section], f"[{section}]")
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
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"MMOLOVE_ENDPOINT {url!r} is not an http(s) URL; e.g. {DEFAULT_ENDPOINT}."
        )
    return url


def masked_url(url: str) -> str:
    """The URL with any password in it replaced by ``***``, for logs and operators."""
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit(parts._replace(query=query))


def _database(environ: Mapping[str, str], outbox: dict[str, Any]) -> dict[str, Any]:
    """Where the outbox lives: a SQLite file (a path), or PostgreSQL (a postgresql:// URL)."""
    where = environ.get("MMOLOVE_RELAY_DB") or outbox.get("url") or outbox.get("path")
    password_file = environ.get("MMOLOVE_RELAY_DB_PASSWORD_FILE") or outbox.get("password_file")
    password = _secret_from(None, password_file, what="outbox database password")
    if where and str(where).startswith(("postgresql://", "postgres://")):
        return {"db_url": str(where), "db_password": password}
    if where and "://" in str(where):
        raise ConfigError(
            f"MMOLOVE_RELAY_DB {masked_url(str(where))!r} is neither a file path nor a "
            "postgresql:// URL; use a path for SQLite or postgresql://user@host/db."
        )
    # The password stays: migrate-outbox reads a SQLite file and writes to a database.
    return {"db_path": Path(where) if where else _default_db(environ), "db_password": password}


def _default_db(environ: Mapping[str, str]) -> Path:
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / "outbox.db" if state else Path("mmolove-relay.db")


def _secret_from(value: object, file: object, *, what: str) -> Secret | None:
    if value:
        return Secret(str(value))
    if file:
        return read_secret_file(Path(str(file)), what=what)
    return None


def _servers(
    environ: Mapping[str, str], entries: list[dict[str, Any]], *, require: bool
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
        servers.append(_server(environ, entry, server_id, single=single, require=require))
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
) -> ServerConfig:
    kid = (environ.get("MMOLOVE_KID") if single else None) or entry.get("kid") or None
    if kid is not None and not _KID.fullmatch(str(kid)):
        raise ConfigError(
            f"kid of server {server_id} must be 1-128 visible ASCII characters without commas "
            "or spaces (it goes into the signature header); check MMOLOVE_KID or its entry."
        )
    secret_file: Path | None = None
    secret: Secret | None = None
    # Precedence: environment (single server only), then the file entry, then systemd.
    if single and environ.get("MMOLOVE_SECRET"):
        secret = Secret(environ["MMOLOVE_SECRET"])
    elif single and environ.get("MMOLOVE_SECRET_FILE"):
        secret_file = Path(environ["MMOLOVE_SECRET_FILE"])
    elif entry.get("secret"):
        secret = Secret(str(entry["secret"]))
    elif entry.get("secret_file"):
        secret_file = Path(str(entry["secret_file"]))
    elif environ.get("CREDENTIALS_DIRECTORY"):
        name = CREDENTIAL_NAME if single else f"{CREDENTIAL_NAME}-{server_id}"
        candidate = Path(environ["CREDENTIALS_DIRECTORY"]) / name
        secret_file = candidate if candidate.exists() else None
    what = f"signing secret of server {server_id}"
    if secret_file is not None:
        secret = read_secret_file(secret_file, what=what)
    if secret is None:
        if require:
            raise ConfigError(
                f"no {what}: set MMOLOVE_SECRET or MMOLOVE_SECRET_FILE, give its [[servers]] "
                f"entry secret_file, or pass a systemd credential named {CREDENTIAL_NAME}."
            )
        secret = Secret("")
    return ServerConfig(server_id=server_id, secret=secret, kid=kid, secret_file=secret_file)

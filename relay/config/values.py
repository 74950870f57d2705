"""The small values settings are made of (secrets, listen addresses, servers, alert targets)
and the parsers that turn a file's or a variable's text into them, each with a clear error."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from relay.errors import ConfigError

DEFAULT_ENDPOINT = "https://mmolove.com/api/referral/events"
CREDENTIAL_NAME = "mmolove-secret"
# Shorter than this, a secret is guessable and too common a string for the log scrubber to
# mask wherever it appears: tokens are refused, signing secrets (MMOLove issues them) warned.
MIN_SECRET_CHARS = 16
ALERT_KINDS = ("discord", "slack", "webhook")
LogFormat = Literal["json", "console"]


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


# Parsers: (the value as the file or variable gives it, where it came from) -> the setting.
# ``where`` names the source in errors: "environment MMOLOVE_ENDPOINT" or "file relay.toml".


def parse_listen(text: object, where: str = "") -> Listen:
    """``host:port``, ``[v6]:port`` or ``unix:/path``; ``ConfigError`` explains anything else."""
    text = _text(text, "listen", where)
    if text.startswith("unix:"):
        return Listen(path=Path(text.removeprefix("unix:")).absolute())
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"listen address {text!r}{_from(where)} is not host:port or unix:/path; "
            "e.g. 127.0.0.1:8787."
        )
    return Listen(host=host, port=int(port))


def parse_endpoint(url: object, where: str = "") -> str:
    url = _text(url, "endpoint", where)
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"endpoint {mask_url(url)!r}{_from(where)} is not an http(s) URL; "
            f"e.g. {DEFAULT_ENDPOINT}."
        )
    return url


def parse_log_format(value: object, where: str = "") -> LogFormat:
    if value == "json" or value == "console":
        return value
    raise ConfigError(f"log_format is {value!r}{_from(where)}; use 'json' or 'console'.")


def parse_path(value: object, where: str = "") -> Path:
    """A file's path, absolute so logs and check-config say where it is wherever we started."""
    return Path(_text(value, "a path", where)).absolute()


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\.?")


def parse_hosts(value: object, where: str = "") -> tuple[str, ...]:
    """Host names, lower-cased, from a TOML array or a comma-separated variable."""
    if isinstance(value, str):  # the variable: empty pieces ("a,b,") are a harmless typo
        entries: list[object] = [piece.strip() for piece in value.split(",") if piece.strip()]
    elif isinstance(value, list):
        entries = value
    else:
        raise ConfigError(f"allowed_hosts{_from(where)} must be an array of host names.")
    return tuple(_host(entry, where) for entry in entries)


def _host(entry: object, where: str) -> str:
    if not isinstance(entry, str):
        raise ConfigError(f"allowed_hosts{_from(where)} holds {entry!r}; give host names.")
    host = entry.lower()
    if "://" in host:
        problem = "has a scheme"
    elif not host or any(c.isspace() for c in host):
        problem = "is empty or has whitespace"
    elif "/" in host:
        problem = "has a path"
    elif ":" in host and not _is_ip(host.strip("[]")):  # IPv6 is all colons; else a port
        problem = "has a port"
    elif ":" not in host and not (_HOST_NAME.fullmatch(host) or _is_ip(host)):
        problem = "is not a host name"
    else:
        return host.strip("[]")
    raise ConfigError(
        f"allowed_hosts entry {entry!r}{_from(where)} {problem}; give the bare host name "
        "clients put in the Host header, without scheme, port or path, e.g. relay.example.com."
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _text(value: object, what: str, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what}{_from(where)} must be a string, got {value!r}.")
    return value


def _from(where: str) -> str:
    return f" (from {where})" if where else ""

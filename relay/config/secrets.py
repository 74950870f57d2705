"""The one way a secret is read, from a variable, the config file or a file it names:
trimmed alike, refused when empty, and re-read from its file on reload."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from relay.config.values import ConfigNote, Secret, ServerConfig
from relay.credentials import read_small_text, trim
from relay.errors import ConfigError


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


def secret_value(raw: str, *, what: str, notes: list[ConfigNote]) -> Secret:
    value = clean_secret(raw, what=what, notes=notes)
    if not value:
        raise ConfigError(f"the {what} is only whitespace; set the secret itself.")
    return Secret(value)


def secret_from(
    value: object, file: object, *, what: str, notes: list[ConfigNote]
) -> Secret | None:
    """The secret given inline (``value``), else read from ``file``; None when neither is."""
    if value:
        return secret_value(str(value), what=what, notes=notes)
    if file:
        return read_secret_file(Path(str(file)), what=what, notes=notes)
    return None


def reread_secret(server: ServerConfig) -> ServerConfig:
    """The server with its secret read again from its file; unchanged when it has none."""
    if server.secret_file is None:
        return server
    secret = read_secret_file(server.secret_file, what=f"secret of server {server.server_id}")
    return replace(server, secret=secret)

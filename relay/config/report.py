"""The settings as plain data, every secret masked: for ``check-config``, the start-up log
line and the console's configuration page."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from relay.config.settings import Settings
from relay.config.values import Listen, Secret, mask_url


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
        elif f.name in ("endpoint", "db_url") and value:
            value = mask_url(value)
        elif f.name == "notes":
            value = [note.message for note in value]
        elif f.name == "alerts":
            value = [
                {"kind": a.kind, "name": a.name, "url": a.masked_url, "signed": bool(a.secret)}
                for a in value
            ]
        elif f.name == "game_sources":
            value = [source.describe() for source in value]
        elif f.name == "allowed_hosts":
            value = list(value)
        elif isinstance(value, Secret):
            value = "***"
        elif isinstance(value, Path | Listen):
            value = str(value)
        out[f.name] = value
    return out

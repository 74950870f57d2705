"""Logging: structlog configured once, JSON lines off a terminal, and a redaction step.

``configure`` is called by the CLI only. Secrets registered with ``redact`` are replaced in
every rendered line: a secret of ``MIN_SECRET_CHARS`` or more wherever it hides in a field or
message; a shorter one (warned about at start-up) only where it is a field's whole value,
since as a substring it would mangle unrelated words (an outbox path once printed as
``/tmp/x/***.db``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from relay.config.values import MIN_SECRET_CHARS

REDACTED = "***"
_secrets: set[str] = set()


def redact(values: Iterable[str]) -> None:
    """Never let these strings reach a log line (the signing secrets, the ingest token)."""
    _secrets.update(v for v in values if v)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        if value in _secrets:
            return REDACTED
        for secret in _secrets:
            if len(secret) >= MIN_SECRET_CHARS and secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, BaseException):
        return _scrub(repr(value))
    return value


def redaction(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: scrub registered secrets from every field."""
    if not _secrets:
        return event_dict
    return {key: _scrub(value) for key, value in event_dict.items()}


def configure(
    log_format: str | None = None, *, level: str = "info", stream: TextIO | None = None
) -> None:
    """Route structlog (and stdlib logging, e.g. aiohttp's) to ``stream`` as JSON or console."""
    stream = stream or sys.stderr
    if log_format is None:
        log_format = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if log_format == "console"
        else structlog.processors.JSONRenderer(ensure_ascii=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redaction, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        # Configured once per process, before the first line: a logger built per call cost
        # a few per cent of every ingest and delivery.
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redaction,
                renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)

"""Logging: JSON lines off a terminal, and secrets scrubbed from every field."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from relay import logs

pytestmark = pytest.mark.unit


def test_registered_secrets_never_reach_a_line() -> None:
    stream = io.StringIO()
    logs.configure("json", stream=stream)
    try:
        _log_and_check(stream)
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()


def _log_and_check(stream: io.StringIO) -> None:
    logs.redact(["hunter2-secret-long", "ingest-tok-4f9e2d71"])
    log = structlog.get_logger("t")
    log.info(
        "x.happened",
        header="t=1,v1=sha256=ab,hunter2-secret-long",
        nested={"a": ["ingest-tok-4f9e2d71 and more"]},
        exc=ValueError("hunter2-secret-long"),
    )
    try:
        raise RuntimeError("boom hunter2-secret-long")
    except RuntimeError:
        log.exception("x.failed")
    text = stream.getvalue()
    assert "hunter2-secret-long" not in text
    assert "ingest-tok-4f9e2d71" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["event"] == "x.happened"
    assert lines[0]["nested"] == {"a": ["*** and more"]}
    assert "***" in lines[1]["exception"]


def test_a_short_secret_is_masked_as_a_whole_value_not_inside_other_words() -> None:
    """A 1-character secret "x" once turned an outbox path into /tmp/***/***.db."""
    stream = io.StringIO()
    logs.configure("json", stream=stream)
    try:
        logs.redact(["x"])
        structlog.get_logger("t").info("x.opened", outbox="/srv/x/x.db", secret="x")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        logs._secrets.discard("x")
    line = json.loads(stream.getvalue())
    assert (line["outbox"], line["secret"]) == ("/srv/x/x.db", "***")

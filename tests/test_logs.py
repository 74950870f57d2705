"""Logging: JSON lines off a terminal, and secrets scrubbed from every field."""

from __future__ import annotations

import io
import json
import logging

import structlog

from relay import logs


def test_registered_secrets_never_reach_a_line() -> None:
    stream = io.StringIO()
    logs.configure("json", stream=stream)
    try:
        _log_and_check(stream)
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()


def _log_and_check(stream: io.StringIO) -> None:
    logs.redact(["hunter2-secret", "ingest-tok"])
    log = structlog.get_logger("t")
    log.info(
        "x.happened",
        header="t=1,v1=sha256=ab,hunter2-secret",
        nested={"a": ["ingest-tok and more"]},
        exc=ValueError("hunter2-secret"),
    )
    try:
        raise RuntimeError("boom hunter2-secret")
    except RuntimeError:
        log.exception("x.failed")
    text = stream.getvalue()
    assert "hunter2-secret" not in text
    assert "ingest-tok" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["event"] == "x.happened"
    assert lines[0]["nested"] == {"a": ["*** and more"]}
    assert "***" in lines[1]["exception"]

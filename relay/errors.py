"""Every exception the relay raises, arranged by what the caller does next.

    RelayError
    ├── ConfigError            fix the configuration; the daemon refuses to start (exit 3)
    ├── OutboxError            the outbox could not do what was asked
    │   └── OutboxUnavailable  cannot take writes now (disk full, locked, shutting down):
    │       │                  answer 503 with Retry-After, keep everything already stored
    │       └── OutboxDown     its database is unreachable: the store logs the outage once
    │                          (outbox.lost, outbox.back), so callers retry without a word
    ├── InvalidEvent           bad input from a client: answer 4xx, store nothing
    ├── SourceError            a game database a source watches failed or refused its query:
    │                          mark the source failing (``reason`` says how), back off, poll again
    └── DeliveryError          one attempt to reach MMOLove did not deliver
        ├── RetryableDelivery  network, timeout, 5xx, 408, 429: back off and try again
        ├── PermanentDelivery  400, 404, 422: dead-letter with MMOLove's answer
        └── SenderPaused       401 or a redirect: the whole server is misconfigured, so pause
                               it instead of burning each event's retries

Foreign exceptions (``aiohttp.ClientError``, ``TimeoutError``, ``sqlite3.Error``, the game
databases' drivers' errors) are translated where they enter, always with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Literal

# How a source's poll failed, for its status and its metric's label.
SourceFailure = Literal["unavailable", "credentials", "timeout", "write", "query"]


class RelayError(Exception):
    """Base class of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration is missing or wrong; the message names the key and where it comes from."""


class OutboxError(RelayError):
    """The SQLite outbox failed."""


class OutboxUnavailable(OutboxError):
    """The outbox cannot take writes right now; the client should retry after ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OutboxDown(OutboxUnavailable):
    """The outbox's database cannot be reached; the store has logged it (``outbox.lost``)."""


class InvalidEvent(RelayError):
    """A client sent something the relay will not store.

    ``status`` is the HTTP status to answer, ``code`` a stable machine-readable code and
    ``field`` the offending field, when there is one.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def as_json(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class SourceError(RelayError):
    """A source's database could not be read: the message names the source, its masked URL
    and the database's own error, never a password; ``reason`` is one ``SourceFailure``."""

    def __init__(self, message: str, reason: SourceFailure) -> None:
        super().__init__(message)
        self.reason: SourceFailure = reason


class DeliveryError(RelayError):
    """One delivery attempt failed; ``reason`` is a short stable label for metrics and logs.

    ``http_status`` and ``response`` carry MMOLove's answer when there was one.
    """

    def __init__(
        self, reason: str, message: str, *, http_status: int | None = None, response: str = ""
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.http_status = http_status
        self.response = response


class RetryableDelivery(DeliveryError):
    """Try the event again later, not before ``retry_after_s`` when MMOLove asked for that."""

    retry_after_s: float | None = None


class PermanentDelivery(DeliveryError):
    """MMOLove refused this event for good; it is dead-lettered with the answer kept."""


class SenderPaused(DeliveryError):
    """The server's credentials or endpoint are wrong; deliveries for it pause until fixed.

    ``clock_skew_s`` is MMOLove's clock minus ours, from its ``Date`` header, when known.
    """

    clock_skew_s: float | None = None

"""The HTTP client to MMOLove: posts signed bytes and turns each answer into an outcome.

The only module that touches aiohttp's client. MMOLove's 200 with ``"ok": true`` becomes a
``Delivered``; everything else becomes one of the ``DeliveryError`` classes, following
``mmolove-api.md``.
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp

from relay import __version__
from relay.errors import PermanentDelivery, RetryableDelivery, SenderPaused
from relay.signing import HEADER
from relay.store.contract import DeliveredOutcome

SNIPPET_CHARS = 500  # how much of MMOLove's answer the outbox and logs keep
_DETAIL_CHARS = 200  # how much of an answer an error message quotes
_READ_LIMIT = 16 * 1024


@dataclass(frozen=True, slots=True)
class Delivered:
    """MMOLove took the event: ``outcome`` is accepted, duplicate, ignored or test."""

    outcome: DeliveredOutcome
    http_status: int
    response: str
    referral_id: str | None = None
    state: str | None = None
    clock_skew_s: float | None = None  # MMOLove's clock minus ours, from its Date header


class Sender:
    """One pooled client session posting to one endpoint."""

    def __init__(
        self,
        endpoint: str,
        *,
        concurrency: int,
        connect_timeout_s: float,
        send_timeout_s: float,
        ca_file: Path | None = None,
    ) -> None:
        self.endpoint = endpoint
        ssl_context: ssl.SSLContext | bool = True
        if ca_file is not None:
            ssl_context = ssl.create_default_context(cafile=str(ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, ssl=ssl_context),
            timeout=aiohttp.ClientTimeout(total=send_timeout_s, connect=connect_timeout_s),
            headers={"User-Agent": f"mmolove-relay/{__version__}"},
        )

    async def close(self) -> None:
        await self._session.close()

    async def deliver(self, body: bytes, signature: str) -> Delivered:
        """Post the bytes once; raise the ``DeliveryError`` that says what to do next."""
        headers = {"Content-Type": "application/json", HEADER: signature}
        try:
            async with self._session.post(
                self.endpoint, data=body, headers=headers, allow_redirects=False
            ) as resp:
                raw = await _read_answer(resp)
                status, resp_headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise RetryableDelivery("timeout", "MMOLove did not answer in time") from exc
        except aiohttp.ClientConnectorCertificateError as exc:
            raise RetryableDelivery("tls", f"TLS certificate not trusted: {exc}") from exc
        except aiohttp.ClientConnectorDNSError as exc:
            raise RetryableDelivery("dns", f"cannot resolve MMOLove's host: {exc}") from exc
        except aiohttp.ClientConnectorError as exc:
            raise RetryableDelivery("connect", f"cannot connect to MMOLove: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise RetryableDelivery("network", f"connection to MMOLove failed: {exc!r}") from exc
        text = raw.decode("utf-8", "replace")[:SNIPPET_CHARS]
        return classify(
            status,
            text,
            resp_headers.get("Date"),
            resp_headers.get("Retry-After"),
            resp_headers.get("Location"),
        )


async def _read_answer(resp: aiohttp.ClientResponse) -> bytes:
    """The answer's body up to ``_READ_LIMIT``: all of it, not just what has arrived so far."""
    raw = b""
    # read(n) returns whatever is buffered; an answer arriving in pieces would be cut short
    # and misread (a duplicate taken for accepted, the referral id lost).
    while len(raw) < _READ_LIMIT and (chunk := await resp.content.read(_READ_LIMIT - len(raw))):
        raw += chunk
    return raw


def classify(
    status: int,
    text: str,
    date: str | None = None,
    retry_after: str | None = None,
    location: str | None = None,
) -> Delivered:
    """Map one MMOLove answer to ``Delivered`` or raise the matching ``DeliveryError``."""
    answer = _json_object(text)
    detail = _detail(answer, text)
    if 200 <= status < 300 and (status != 200 or answer.get("ok") is not True):
        # MMOLove answers every success with 200 and "ok": true; a 2xx without it is a
        # captive portal, a CDN maintenance page or a cut answer, which proves no delivery.
        raise SenderPaused(
            "unexpected_answer",
            f"the endpoint answered {status} with {detail}, which is not MMOLove's answer "
            '(200 with "ok": true), so the event was not taken as delivered; a captive '
            "portal, proxy or maintenance page is likely: check MMOLOVE_ENDPOINT and the "
            "network path to it",
            http_status=status,
            response=text,
        )
    if status == 200:
        outcome: DeliveredOutcome
        if answer.get("duplicate"):
            outcome = "duplicate"
        elif answer.get("ignored"):
            outcome = "ignored"
        elif answer.get("test"):
            outcome = "test"
        else:
            outcome = "accepted"
        return Delivered(
            outcome=outcome,
            http_status=status,
            response=text,
            referral_id=_str_or_none(answer.get("referral_id")),
            state=_str_or_none(answer.get("state")),
            clock_skew_s=clock_skew(date),
        )
    if 300 <= status < 400:
        raise SenderPaused(
            "redirect",
            f"MMOLove's endpoint answered {status} redirecting to "
            f"{location or '(no Location)'}; the relay does not follow redirects "
            "on POST: set MMOLOVE_ENDPOINT to the final URL",
            http_status=status,
            response=text,
        )
    if status == 401:
        paused = SenderPaused(
            "unauthorized",
            f"MMOLove rejected the signature (401 {detail})",
            http_status=status,
            response=text,
        )
        paused.clock_skew_s = clock_skew(date)
        raise paused
    if status in (400, 404, 422):
        reason = {400: "bad_request", 404: "not_found", 422: "illegal_transition"}[status]
        raise PermanentDelivery(
            reason,
            f"MMOLove refused the event ({status} {detail})",
            http_status=status,
            response=text,
        )
    if 400 <= status < 500 and status not in (408, 429):
        # MMOLove documents no such answer (403, 405, 410, 413, ...): a proxy or a wrong URL
        # stands between us, which no retry of one event can fix.
        raise SenderPaused(
            "unexpected_status",
            f"MMOLove's endpoint answered {status} ({detail}), which its API never answers; "
            "a proxy or a wrong MMOLOVE_ENDPOINT is likely: check the URL",
            http_status=status,
            response=text,
        )
    retry = RetryableDelivery(
        f"http_{status}", f"MMOLove answered {status} ({detail})", http_status=status, response=text
    )
    retry.retry_after_s = parse_retry_after(retry_after)
    raise retry


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` of delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when = _http_date(value)
    if when is None:
        return None
    return max(0.0, when - (time.time() if now is None else now))


def clock_skew(date: str | None, now: float | None = None) -> float | None:
    """MMOLove's clock minus ours, in seconds, from its ``Date`` header."""
    when = _http_date(date) if date else None
    return None if when is None else when - (time.time() if now is None else now)


@functools.lru_cache(maxsize=4)
def _http_date(value: str) -> float | None:
    # Cached: a Date header names whole seconds, so at a thousand answers a second nearly
    # every one repeats the last, and parsing it is a tenth of an answer's cost.
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _detail(answer: dict[str, Any], text: str) -> str:
    """A short quote of an answer for an error message: MMOLove's error, else the body."""
    quoted = str(answer.get("error") or " ".join(text.split()))
    return quoted[:_DETAIL_CHARS] if quoted else "(empty body)"


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None

"""The MMOLove signature: HMAC-SHA256 over ``"<t>.<raw body>"``, as the ingest API defines it.

Pure functions only; the dispatcher signs at send time and the sandbox verifies.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

HEADER = "X-MMOLove-Signature"


def mac(body: bytes, secret: str, t: int) -> str:
    """The lower-case hex HMAC-SHA256 of ``"<t>.<body>"`` keyed by the secret's UTF-8 bytes."""
    message = str(t).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signature_header(body: bytes, secret: str, t: int, kid: str | None = None) -> str:
    """The value of ``X-MMOLove-Signature`` for these exact body bytes at signing time ``t``."""
    value = f"t={t},v1=sha256={mac(body, secret, t)}"
    if kid:
        value += f",kid={kid}"
    return value


@dataclass(frozen=True, slots=True)
class ParsedSignature:
    t: int
    v1: str
    kid: str | None


def parse_header(value: str) -> ParsedSignature:
    """Split a signature header into its parts; ``ValueError`` says what is malformed."""
    parts: dict[str, str] = {}
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep or not key:
            raise ValueError(f"signature header part {item!r} is not key=value")
        parts[key] = val
    t_text = parts.get("t", "")
    if not t_text.isdigit() or int(t_text) <= 0:
        raise ValueError("signature header needs t=<positive Unix seconds>")
    v1 = parts.get("v1", "")
    if not v1.startswith("sha256="):
        raise ValueError("signature header needs v1=sha256=<hex mac>")
    return ParsedSignature(t=int(t_text), v1=v1.removeprefix("sha256="), kid=parts.get("kid"))


def verify(body: bytes, secret: str, signature: ParsedSignature) -> bool:
    """True when the signature's mac matches these body bytes, compared in constant time."""
    return hmac.compare_digest(mac(body, secret, signature.t), signature.v1)

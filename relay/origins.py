"""Where a request comes from: its peer, the host name it was sent to, and the web page
that sent it, if any.

The API serves programs on the game host, which send no ``Origin`` and name the relay by a
loopback address. A web page in a browser on that host can reach the same port, so without
these checks any site could purge dead events with a ``text/plain`` form POST, or, under a
name of its own that it re-resolves to 127.0.0.1 (DNS rebinding), read ``/v1/events`` and
post a forged ``qualified`` that the relay would sign. The rules, for every path outside the
console (which checks its own, with a CSRF token):

- a state-changing ``/v1`` request must be ``application/json``: a browser cannot send that
  cross-site without a CORS preflight, and the relay grants none;
- a request naming a foreign ``Origin`` (any web page but the relay's own) is refused 403;
- a relay without an ingest token answers only under a loopback name (``localhost``,
  ``127.0.0.1``, ``[::1]``), its listen address, or a name in ``[ingest] allowed_hosts``;
  any other ``Host`` gets 421. With a token, every request but the probes needs the bearer
  token, which no web page has, so a sidecar may be reached under any service name. The
  Unix socket's file mode decides who connects and no browser can open it, so its clients
  may send any ``Host`` (curl sends ``localhost``, others the name in their URL).
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

from relay.config.settings import Settings
from relay.errors import InvalidEvent

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON = "application/json"
CONSOLE_PREFIX = "/ui"  # the console applies its own rules (relay.console.security)


def local_peer(request: web.Request) -> bool:
    """Whether the request comes from this machine: a loopback peer or the Unix socket."""
    peer = request.remote
    if not peer:  # the Unix socket: its file permissions decide who gets here
        return True
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return True
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def hostname(host: str) -> str:
    """The name in a Host header, lower-cased, without its port: ``[::1]:8787`` gives ``::1``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0].lower()
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).lower()


def loopback_name(name: str) -> bool:
    """``localhost`` or a loopback address: names no other site can take over."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def console_path(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


def check(request: web.Request, settings: Settings) -> None:
    """Raise ``InvalidEvent`` (403, 415 or 421) for a request a web page may have sent."""
    if console_path(request.path):
        return
    _check_origin(request)
    _check_host(request, settings)
    routed = request.match_info.http_exception is None  # else the 404 or 405 says more
    if routed and request.method not in _SAFE_METHODS and request.content_type != JSON:
        raise InvalidEvent(
            415,
            "unsupported_media_type",
            "send the request with Content-Type: "
            f"application/json (got {request.content_type or 'none'}).",
        )


def _check_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin is None or origin == f"{request.scheme}://{request.host}":
        return
    raise InvalidEvent(
        403,
        "cross_origin",
        f"a web page ({origin[:100]!r}) may not call the relay's API; game servers and "
        "scripts send no Origin header. Use the console at /ui/ in a browser.",
    )


def _check_host(request: web.Request, settings: Settings) -> None:
    if settings.ingest_token is not None or settings.listen.path is not None:
        return
    sent = request.headers.get("Host")
    if sent is None:  # an HTTP/1.0 client: no browser sends a request without one
        return
    name = hostname(sent)
    if loopback_name(name) or name == settings.listen.host.lower():
        return
    if name in settings.allowed_hosts:
        return
    raise InvalidEvent(
        421,
        "unknown_host",
        f"this relay answers only under loopback names and its listen address, not under "
        f"{sent[:100]!r}; call it as http://127.0.0.1:{settings.listen.port}, or add the name "
        "to [ingest] allowed_hosts (MMOLOVE_RELAY_ALLOWED_HOSTS).",
    )

"""The running relay's HTTP API as the operator commands call it, and the exit codes they end
with: 0 done, 1 the relay or MMOLove refused, 2 usage, 3 configuration or start-up failure,
4 the relay is unreachable or unavailable (try again later).

Plain ``urllib``: a command is one process making a request or two, so it needs no event
loop, and the outbox-file fallback (``relay.offline``, which builds the daemon's API) is
imported only when that fallback is taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from relay.config.loading import load_settings
from relay.config.values import Listen, base_url

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE
Environ = Mapping[str, str]


class CommandFailed(Exception):
    """Ends a command with ``message`` on stderr and exit code ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class DaemonClient:
    """The running relay's HTTP API, found from the configuration's listen setting."""

    def __init__(self, args: argparse.Namespace, environ: Environ) -> None:
        settings = load_settings(environ, args.config, require_servers=False)
        # Read commands take --db, and fall back to the configured file when no daemon answers.
        self._settings, self._db = settings, getattr(args, "db", None)
        self._reads_file = hasattr(args, "db")
        if self._db is not None:
            return
        self.base = (args.url or _listen_url(settings.listen)).rstrip("/")
        self._token = settings.ingest_token.reveal() if settings.ingest_token else None

    def call(self, method: str, path: str, body: Any = None, *, wait_s: float = 0.0) -> Any:
        """One request; a failure raises ``CommandFailed`` saying what to do."""
        if self._db is not None:
            return self._from_file(self._db, path)
        request = (method, self.base + path, body, self._token)
        try:
            status, answer = _patiently(wait_s, *request) if wait_s else http_json(*request)
        except OSError as exc:
            if self._reads_file and method == "GET" and self._settings.db_path.is_file():
                return self._from_file(self._settings.db_path, path)
            raise self._unreachable(exc) from exc
        return _answer(status, answer)

    def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        """``GET path`` once: the status and answer as they came, a 503 too (``/readyz`` says
        in it why the relay is not ready); ``CommandFailed`` when nothing answers."""
        try:
            return http_json("GET", self.base + path, None, self._token)
        except OSError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: OSError) -> CommandFailed:
        return CommandFailed(
            EXIT_UNAVAILABLE,
            f"cannot reach the relay at {self.base} ({exc}); is `mmolove-relay serve` "
            "running (systemctl status mmolove-relay), and is --url or "
            "MMOLOVE_RELAY_LISTEN right? (retry and purge need the daemon; read "
            "commands also work with --db PATH)",
        )

    def _from_file(self, db: Path, path: str) -> Any:
        from relay import offline  # the daemon's API on the file: aiohttp and the store

        print(
            f"(read from the outbox file {db}, read-only: the daemon is not answering, so "
            "pauses and the circuit are not known)",
            file=sys.stderr,
        )
        return _answer(*offline.read(self._settings, db, path))


def _patiently(wait_s: float, *request: Any) -> tuple[int, dict[str, Any]]:
    """``http_json`` again for up to ``wait_s`` while the relay is unreachable or answers 503,
    as it does for a moment while restarting; then its last answer or error."""
    import tenacity

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_delay(wait_s),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=2.0),
        retry=tenacity.retry_if_exception_type(OSError)
        | tenacity.retry_if_result(lambda answer: answer[0] == 503),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    return retrying(http_json, *request)


def _answer(status: int, answer: dict[str, Any]) -> Any:
    if status >= 400:
        error = answer.get("error", {})
        raise CommandFailed(
            EXIT_UNAVAILABLE if status == 503 else EXIT_REFUSED,
            f"{status} {error.get('code')}: {error.get('message')}",
        )
    return answer


def _listen_url(listen: Listen) -> str:
    if listen.path is not None:
        raise CommandFailed(
            EXIT_USAGE,
            "the relay listens on a Unix socket; pass --url http://host:port of a "
            "TCP listener, or use curl --unix-socket.",
        )
    return base_url(listen.host, listen.port)


def http_json(
    method: str, url: str, body: Any = None, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """One JSON request with the standard library (the CLI needs no event loop for it)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http(s) only
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            return exc.code, json.loads(raw or b"{}")
        except ValueError:
            return exc.code, {
                "error": {"code": "http_error", "message": raw.decode(errors="replace")}
            }


def query(params: Mapping[str, Any]) -> str:
    """A query string of the parameters that are set."""
    return urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})

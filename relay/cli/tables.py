"""What the operator commands print: tables padded for people, JSON for scripts, ages,
times and sizes in words, a progress line and the confirmation question.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO, cast

from relay.cli.client import EXIT_OK, EXIT_REFUSED, CommandFailed

# A game client's text (a JSON key name, a token, a player's id) and an upstream's answer
# reach these tables, and a terminal obeys the control characters in them: clear the screen,
# set the window title, move the cursor to fake a line. Each is printed escaped instead, as
# the console escapes HTML: C0 but the newline, DEL, C1 (U+009B is a CSI on its own) and the
# bidi overrides and isolates, which reorder what the operator reads.
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\u202e``)."""
    return _UNSAFE.sub(_escape, text)


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


class _Printable:
    """A text stream that writes through ``printable``: the one gate to the terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(printable(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def printable_stdout() -> Iterator[None]:
    """Whatever a command prints (tables, lines, JSON) reaches stdout through ``printable``."""
    real = sys.stdout
    sys.stdout = cast(TextIO, _Printable(real))
    try:
        yield
    finally:
        sys.stdout = real


def confirm(args: argparse.Namespace, action: str) -> None:
    """Ask on stderr, read the answer from stdin; anything but yes stops the command."""
    if args.yes:
        return
    print(f"{action}? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if not sys.stdin.isatty():
        print(file=sys.stderr)  # the answer came from a pipe: end the prompt's line
    if answer not in ("y", "yes"):
        raise CommandFailed(EXIT_REFUSED, "nothing done (pass --yes to skip the question).")


class Progress:
    """``retry: 1500/4000 (37%)`` on stderr, redrawn in place on a terminal."""

    def __init__(self, what: str, total: int) -> None:
        self._what, self._total = what, total
        self._tty = sys.stderr.isatty()

    def show(self, done: int) -> None:
        line = f"{self._what}: {done}/{self._total} ({100 * done // max(self._total, 1)}%)"
        print(("\r" + line) if self._tty else line, end="" if self._tty else "\n", file=sys.stderr)

    def end(self) -> None:
        if self._tty:
            print(file=sys.stderr)


def done(args: argparse.Namespace, data: dict[str, Any], message: str) -> int:
    if args.json:
        print_json(data)
    else:
        print(message)
    return EXIT_OK


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell; numbers right-aligned; long text cut at 60."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], int) for r in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = (
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        )
        return "  ".join(padded).rstrip()

    print(line(headers))
    for row in cells:
        print(line(row))


def _cell(value: Any) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def print_json(data: Any) -> None:
    # JSON escapes C0 only; DEL, C1 and the bidi controls get the same \\u form, so the
    # text stays valid JSON with the same value and nothing for stdout to escape.
    text = json.dumps(data, indent=2, ensure_ascii=False)
    print(_UNSAFE.sub(lambda found: f"\\u{ord(found.group()):04x}", text))


def id_list(ids: Sequence[int]) -> str:
    return ", ".join(f"#{i}" for i in ids)


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))
    delta = time.time() - timestamp
    return f"{stamp} UTC ({age(abs(delta))} {'ago' if delta >= 0 else 'from now'})"


def size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def rejected(rows: Sequence[dict[str, Any]]) -> None:
    """Rejected inputs, newest first: when, the answer, and what identified the sender."""
    table(
        ["AT", "HTTP", "CODE", "FIELD", "SERVER EVENT ID", "TOKEN", "PEER", "MESSAGE"],
        [
            [
                when(r["at"]),
                r["http_status"],
                r["code"],
                r["field"] or "-",
                r["server_event_id"] or "-",
                r["token"] or "-",
                r["peer"] or "-",
                r["message"],
            ]
            for r in rows
        ],
    )

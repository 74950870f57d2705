"""Reading secrets safely: from small regular files only, trimmed one way.

A secret file of ``/dev/zero`` once read 1.1 GB and died with a ``MemoryError``; a FIFO hung
start-up; a UTF-8 byte-order mark written by an editor stayed in the secret and every
signature failed. Secret files, token files and URL files all come through here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from relay.errors import ConfigError

# A secret file holds one short line; anything larger is the wrong path.
MAX_SECRET_FILE_BYTES = 4096
_BOM = "\ufeff"
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def read_small_text(path: Path, *, what: str) -> str:
    """The UTF-8 text of a regular file of at most 4 KiB; ``ConfigError`` for anything else.

    The file is checked before it is read, so a device or a FIFO is refused at once.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}.") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a file")
            raise ConfigError(
                f"the {what} {path} is {kind}, not a regular file; point it at a file "
                "holding the secret."
            )
        raw = os.read(fd, MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}.") from exc
    finally:
        os.close(fd)
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise ConfigError(
            f"the {what} {path} is larger than {MAX_SECRET_FILE_BYTES} bytes, and a secret "
            "is one short line; check the path."
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the {what} {path} is not UTF-8 text; write the secret as plain text."
        ) from exc


def trim(raw: str) -> tuple[str, list[str]]:
    """``raw`` without a UTF-8 byte-order mark and surrounding whitespace (a file's final
    newline, a variable set from ``echo``), and what was removed, in words."""
    unmarked = raw.removeprefix(_BOM)
    removed = [
        label
        for label, found in (
            ("a UTF-8 byte-order mark", unmarked != raw),
            ("leading whitespace", unmarked[:1].isspace()),
            ("trailing whitespace or newline", unmarked[-1:].isspace()),
        )
        if found
    ]
    return unmarked.strip(), removed

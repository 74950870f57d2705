"""Notices the outbox file deleted or replaced under a running relay.

The relay's open descriptors then reach a file no one else can see: every event stored
after that is gone at the next restart. What the file is, is its device and inode, so the
check compares those of the open file with those its path names now.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """One file as the kernel knows it, whatever it is called."""

    path: Path
    device: int
    inode: int

    @classmethod
    def of(cls, path: Path, stat: os.stat_result) -> FileIdentity:
        return cls(path, stat.st_dev, stat.st_ino)


def identities(fd: int, path: Path) -> tuple[FileIdentity, ...]:
    """The outbox held open as ``fd`` at ``path``, and its WAL if there is one yet."""
    found = [FileIdentity.of(path, os.fstat(fd))]
    wal = path.with_name(path.name + "-wal")
    with contextlib.suppress(FileNotFoundError):
        found.append(FileIdentity.of(wal, os.stat(wal)))
    return tuple(found)


def vanished(fd: int, expected: tuple[FileIdentity, ...]) -> str | None:
    """What happened to the outbox open as ``fd`` since ``expected`` was taken; None if
    nothing. Blocking (stat calls): run it in a thread."""
    if os.fstat(fd).st_nlink == 0:
        return f"{expected[0].path} was deleted (its last link is gone)"
    for known in expected:
        try:
            now = os.stat(known.path)
        except FileNotFoundError:
            return f"{known.path} was deleted"
        if (now.st_dev, now.st_ino) != (known.device, known.inode):
            return f"{known.path} was replaced by another file"
    return None

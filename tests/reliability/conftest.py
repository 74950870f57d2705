"""The reliability scenarios' shared fixture: a small disk to fill."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import SMALL_DISK_SIZE
from tests.support import require_tools, unavailable


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SMALL_DISK_SIZE mounted under tmp_path (needs root), always unmounted after."""
    require_tools("mount", "umount", why="the disk-full scenario mounts a small tmpfs")
    if os.geteuid() != 0:
        unavailable("the disk-full scenario mounts a tmpfs and must run as root (CI does)")
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    size = f"size={SMALL_DISK_SIZE},mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)

"""The files and ``systemctl`` steps that put the relay on a machine as a service: where
``setup`` writes the secret, the unit and its drop-in, and how each file is put in place.

Every file is compared before it is written, so a second ``setup`` changes nothing and says
so; each write is atomic (a temporary file beside it, fsynced, renamed over it), so a crash
leaves the old file or the new one, never half of one.

Choices, written down:

- The secret goes to ``/etc/mmolove-relay/secret`` (0600 root, in a 0700 directory) and
  reaches the service as the credential ``mmolove-secret``: the shipped unit's
  ``LoadCredential=``. The service's private copy is made when it starts, so a new secret
  needs a restart, not a reload.
- The unit is copied from the package to ``/etc/systemd/system/``, not linked: a ``pip
  install --upgrade`` then cannot change a running service's hardening behind the operator's
  back; running ``setup`` again after an upgrade takes the new unit and says so. Its
  ``ExecStart`` names the entry point of the installation that ran ``setup``.
- What the operator chose goes into one drop-in, ``mmolove-relay.service.d/setup.conf``:
  the server id, and the endpoint, listen address and ``kid`` when given. An alert URL holds
  the target's token, so it is a file of its own (0600) handed over as a credential too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from relay.packaged import SYSTEMD_UNIT, packaged_file

SERVICE = "mmolove-relay"
CONFIG_DIR = Path("/etc/mmolove-relay")
SECRET_FILE = CONFIG_DIR / "secret"
ALERT_URL_FILE = CONFIG_DIR / "alert-url"
ALERT_CREDENTIAL = "alert-url"
UNIT_FILE = Path("/etc/systemd/system") / f"{SERVICE}.service"
DROPIN_FILE = Path("/etc/systemd/system") / f"{SERVICE}.service.d" / "setup.conf"
# ProtectHome=yes hides these from the service: an entry point there cannot start.
_HIDDEN = ("/home/", "/root/", "/run/user/")

Change = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True, slots=True)
class Wanted:
    """A file as ``setup`` wants it; ``secret`` keeps its text out of every message."""

    path: Path
    text: str
    mode: int
    secret: bool = False

    def state(self) -> Change:
        """What ``place`` would do, without doing it."""
        try:
            now = self.path.read_text()
            mode = self.path.stat().st_mode & 0o7777
        except FileNotFoundError:
            return "created"
        return "unchanged" if (now, mode) == (self.text, self.mode) else "updated"

    def place(self) -> Change:
        change = self.state()
        if change != "unchanged":
            write_atomically(self.path, self.text, self.mode)
        return change


def systemd_is_init() -> bool:
    """systemd's own test (sd_booted): it runs as PID 1 when this directory exists."""
    return Path("/run/systemd/system").is_dir()


def write_atomically(path: Path, text: str, mode: int, *, keep_previous: bool = False) -> None:
    """``text`` at ``path`` with ``mode`` from its first byte, replacing the file in one
    rename; with ``keep_previous``, the file it replaces stays beside it as ``.previous``."""
    path.parent.mkdir(mode=0o700 if mode & 0o077 == 0 else 0o755, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask narrowed what open() gave
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if keep_previous and path.exists():
        previous = path.with_name(path.name + ".previous")
        previous.unlink(missing_ok=True)
        os.link(path, previous)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def entry_point() -> Path:
    """The ``mmolove-relay`` of the installation running now, for the unit's ``ExecStart``."""
    found = Path(sys.executable).parent / SERVICE
    if not found.is_file():
        raise SetupError(
            f"no {found} beside this Python: run setup through the installed command "
            f"(e.g. /opt/mmolove-relay/.venv/bin/mmolove-relay setup)."
        )
    if str(found).startswith(_HIDDEN):
        raise SetupError(
            f"{found} is under a home directory, which the service cannot see "
            "(ProtectHome=yes): install the relay into /opt/mmolove-relay/.venv and run setup "
            "from there."
        )
    return found


def unit_text(executable: Path) -> str:
    """The packaged unit, its ``ExecStart`` pointed at ``executable``."""
    shipped = packaged_file(SYSTEMD_UNIT).read_text()
    text, count = re.subn(
        r"^ExecStart=\S+ serve$", f"ExecStart={executable} serve", shipped, flags=re.MULTILINE
    )
    if count != 1:
        raise SetupError("the packaged unit has no single ExecStart line; reinstall the package.")
    return text


def dropin_text(
    server_id: str,
    *,
    endpoint: str | None,
    listen: str | None,
    kid: str | None,
    alert_kind: str | None,
) -> str:
    lines = [
        "# Written by `mmolove-relay setup`; run it again to change these.",
        "[Service]",
        f"Environment=MMOLOVE_SERVER_ID={server_id}",
    ]
    if kid:
        lines.append(f"Environment=MMOLOVE_KID={kid}")
    if endpoint:
        lines.append(f"Environment=MMOLOVE_ENDPOINT={endpoint}")
    if listen:
        lines.append(f"Environment=MMOLOVE_RELAY_LISTEN={listen}")
    if alert_kind:
        lines += [
            f"LoadCredential={ALERT_CREDENTIAL}:{ALERT_URL_FILE}",
            # %d: the service's credentials directory.
            f"Environment=MMOLOVE_RELAY_ALERT_URL_FILE=%d/{ALERT_CREDENTIAL}",
            f"Environment=MMOLOVE_RELAY_ALERT_KIND={alert_kind}",
        ]
    return "\n".join(lines) + "\n"


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # From PATH, as the operator's shell finds it; the arguments are this module's own.
    done = subprocess.run(  # noqa: S603
        ["systemctl", *args],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if check and done.returncode != 0:
        raise SetupError(
            f"systemctl {' '.join(args)} failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()}; see journalctl -u {SERVICE}."
        )
    return done


def unit_state() -> tuple[str, str]:
    """Whether the service is enabled and active, as systemctl words it."""
    enabled = systemctl("is-enabled", SERVICE, check=False).stdout.strip() or "not-found"
    active = systemctl("is-active", SERVICE, check=False).stdout.strip() or "unknown"
    return enabled, active


def service_environment() -> dict[str, str]:
    """The environment the installed service gets from its unit and drop-ins."""
    shown = systemctl("show", "--value", "-p", "Environment", SERVICE).stdout.strip()
    environment: dict[str, str] = {}
    for assignment in shown.split():
        name, _, value = assignment.partition("=")
        environment[name] = value
    return environment


def credential_source(name: str) -> Path | None:
    """The file the installed service's credential ``name`` is loaded from, if it has one."""
    shown = systemctl("show", "--value", "-p", "LoadCredential", SERVICE, check=False).stdout
    for found in re.finditer(r"(?:^|\s|\()([\w.-]+)[: ](/\S+?)[)\s]?(?=\s|\)|$)", shown):
        if found.group(1) == name:
            return Path(found.group(2))
    return None


class SetupError(Exception):
    """``setup`` or ``secret set`` stops here; the message says what to do."""

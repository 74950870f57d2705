"""Real machines for the deployment tests: cached Debian roots, a systemd booted as PID 1 of
its own namespaces, and network namespaces joined by veth pairs.

Everything here needs root. Roots are built once with debootstrap and cached under
``~/.cache/mmolove-relay`` behind a file lock, so test runs of several checkouts share them;
remove a root's directory there to rebuild it. Every namespace and booted system is torn
down when its context ends, also when the test failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import require_tools, unavailable

ROOT = Path(__file__).parent.parent
MIRROR = os.environ.get("DEBOOTSTRAP_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"  # systemd 252 and Python 3.11, as on the machines the README targets


def sh(
    *args: str,
    timeout_s: float,
    what: str,
    input: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a command; on failure, fail the test with the tail of what it printed."""
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            input=input,
            cwd=cwd,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{what} took more than {timeout_s} s:\n{tail(exc.stdout, exc.stderr)}")
    if done.returncode != 0:
        pytest.fail(f"{what} failed (exit {done.returncode}):\n{tail(done.stdout, done.stderr)}")
    return done.stdout


def tail(*outputs: str | bytes | None, lines: int = 40) -> str:
    text = "".join(o.decode() if isinstance(o, bytes) else (o or "") for o in outputs)
    return "\n".join(text.splitlines()[-lines:])


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"{what} needs root; run the tests as root (scripts/test does on CI).")


# -- cached roots ------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmolove-relay"


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Keeps test runs of several checkouts from building the same cache entry at once."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def debootstrap(root: Path, packages: str) -> None:
    """A minimal Debian root at ``root`` with ``packages`` (comma-separated) on top."""
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    sh(
        "debootstrap",
        "--variant=minbase",
        f"--include={packages}",
        SUITE,
        str(root),
        MIRROR,
        timeout_s=1200,
        what="debootstrap",
    )
    shutil.rmtree(root / "var/cache/apt/archives")
    (root / "var/cache/apt/archives").mkdir()


def systemd_root() -> Path:
    """A Debian root that boots systemd; read-only to its users (they boot it on an overlay)."""
    root = cache_dir() / f"systemd-{SUITE}.root"
    with cache_lock():
        if not root.is_dir():
            partial = root.with_suffix(".partial")
            debootstrap(partial, "systemd,systemd-sysv,dbus,python3,python3-venv")
            # No logins: a getty would open the host's terminals, which /dev is bound from,
            # and one on the host's serial console would wait forever for its device.
            for masked in (
                "etc/systemd/system/getty.target",
                "etc/systemd/system/getty@.service",
                "etc/systemd/system-generators/systemd-getty-generator",
            ):
                (partial / masked).parent.mkdir(exist_ok=True)
                (partial / masked).symlink_to("/dev/null")
            partial.rename(root)
    return root


def wheelhouse() -> Path:
    """The relay's dependencies and build backend as wheels, for pip inside a root that has
    no index configured; one directory per dependency list."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    wheels = cache_dir() / f"wheels-{key}"
    with cache_lock():
        if not wheels.is_dir():
            partial = wheels.with_suffix(".partial")
            shutil.rmtree(partial, ignore_errors=True)
            sh(
                *(sys.executable, "-m", "pip", "wheel", "--quiet"),
                *("--wheel-dir", str(partial), str(ROOT), "setuptools"),
                timeout_s=600,
                what="pip wheel",
            )
            partial.rename(wheels)
    return wheels


def copy_checkout(dest: Path) -> None:
    """What ``pip install .`` needs from a checkout of this repository (as the Dockerfile);
    the systemd unit is in the package."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "relay", dest / "relay", ignore=shutil.ignore_patterns("__pycache__"))


# -- systemd as PID 1 --------------------------------------------------------------------

# pivot_root, not chroot: a chrooted systemd cannot create the user namespaces that
# PrivateUsers= asks for. The overlay keeps the cached root untouched.
_BOOT = """set -e
mount -t overlay overlay -o "lowerdir=$2,upperdir=$3,workdir=$4" "$1"
mount -t proc proc "$1/proc"
mount -t sysfs sysfs "$1/sys"
mount --rbind /dev "$1/dev"
mount -t tmpfs tmpfs "$1/run"
cd "$1"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
exec /lib/systemd/systemd --system
"""
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True)
class Booted:
    """A running systemd; ``pid`` is its pid on the host, ``root`` its filesystem."""

    pid: int

    @property
    def root(self) -> Path:
        return Path(f"/proc/{self.pid}/root")

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout_s: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside, as root in a clean environment, like a login shell would."""
        command = [
            *("nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-i", "-r", "-w"),
            *("env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8"),
            *(f"{k}={v}" for k, v in (env or {}).items()),
            *args,
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check and done.returncode != 0:
            output = tail(done.stdout, done.stderr)
            pytest.fail(f"{' '.join(args)} failed (exit {done.returncode}):\n{output}")
        return done

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "--value", "-p", prop, unit).stdout.strip()


@contextlib.contextmanager
def booted_systemd(tmp_path: Path) -> Iterator[Booted]:
    """Boot the cached systemd root as PID 1 of new pid, mount, UTS and IPC namespaces; the
    host's network is shared, so loopback is too. Powered off (or killed) on leaving."""
    require_root("booting systemd")
    require_tools(
        "debootstrap", "unshare", "nsenter", why="apt-get install debootstrap util-linux."
    )
    lower = systemd_root()
    dirs = [tmp_path / name for name in ("merged", "upper", "work")]
    for path in dirs:
        path.mkdir()
    console = (tmp_path / "console.log").open("w")
    unshare = subprocess.Popen(
        [
            *(
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--uts",
                "--ipc",
                "--propagation",
                "private",
            ),
            *("sh", "-c", _BOOT, "boot", str(dirs[0]), str(lower), str(dirs[1]), str(dirs[2])),
        ],
        stdin=subprocess.DEVNULL,
        stdout=console,
        stderr=subprocess.STDOUT,
    )
    init = 0
    try:
        init = _wait_for_init(unshare)
        booted = Booted(init)
        state = booted.run("systemctl", "is-system-running", "--wait", check=False).stdout.strip()
        if state not in ("running", "degraded"):
            failed = booted.run("systemctl", "--failed", "--no-pager", check=False).stdout
            pytest.fail(f"systemd did not come up ({state}):\n{failed}")
        yield booted
    finally:
        if init and unshare.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                Booted(init).run("systemctl", "poweroff", check=False, timeout_s=10)
        try:
            unshare.wait(timeout=20)
        except subprocess.TimeoutExpired:
            # Killing PID 1 of a pid namespace kills every process in it.
            for pid in (init, unshare.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            unshare.wait(timeout=20)
        console.close()


def _wait_for_init(unshare: subprocess.Popen[bytes]) -> int:
    """The host pid of the namespace's PID 1 once it is systemd."""
    deadline = time.monotonic() + 30
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
    while time.monotonic() < deadline:
        if unshare.poll() is not None:
            pytest.fail(f"the boot script exited with {unshare.returncode}; see console.log")
        with contextlib.suppress(OSError, ValueError):
            [child] = children.read_text().split()
            # systemctl talks to it over its private socket, there once it is up.
            is_systemd = Path(f"/proc/{child}/exe").resolve().name == "systemd"
            if is_systemd and Path(f"/proc/{child}/root/run/systemd/private").exists():
                return int(child)
        time.sleep(0.1)
    pytest.fail("systemd did not start within 30 s; see console.log")


# -- network namespaces ------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True, slots=True)
class Host:
    """A network namespace with a name unique to this run."""

    name: str

    def exec_args(self) -> list[str]:
        """A prefix that runs a command in this namespace."""
        return ["ip", "netns", "exec", self.name]

    def socket(self) -> socket.socket:
        """A TCP socket that lives in this namespace, made by a thread that joins it."""
        made: list[socket.socket | BaseException] = []

        def make() -> None:
            try:
                with open(f"/run/netns/{self.name}") as ns:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                    made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            except BaseException as exc:  # handed to the caller
                made.append(exc)

        # The thread's namespace changes, and the thread ends with it; the socket stays.
        thread = threading.Thread(target=make)
        thread.start()
        thread.join()
        [result] = made
        if isinstance(result, BaseException):
            raise result
        return result


@contextlib.contextmanager
def hosts(*names: str) -> Iterator[dict[str, Host]]:
    """One network namespace per name, each with loopback up; all deleted on leaving."""
    require_root("ip netns")
    require_tools("ip", why="apt-get install iproute2.")
    run_id = uuid.uuid4().hex[:8]
    made: dict[str, Host] = {}
    try:
        for name in names:
            host = Host(f"mmolove-{run_id}-{name}")
            sh("ip", "netns", "add", host.name, timeout_s=30, what="ip netns add")
            made[name] = host
            sh("ip", "-n", host.name, "link", "set", "lo", "up", timeout_s=30, what="lo up")
        yield made
    finally:
        for host in made.values():
            subprocess.run(["ip", "netns", "del", host.name], check=False, timeout=30)


def link(a: Host, a_addr: str, b: Host, b_addr: str, *, name: str) -> None:
    """A veth pair between two hosts, ``name`` on both ends, addresses in CIDR form."""
    sh(
        *("ip", "-n", a.name, "link", "add", name, "type", "veth"),
        *("peer", "name", name, "netns", b.name),
        timeout_s=30,
        what="ip link add veth",
    )
    for host, addr in ((a, a_addr), (b, b_addr)):
        sh("ip", "-n", host.name, "addr", "add", addr, "dev", name, timeout_s=30, what="ip addr")
        sh("ip", "-n", host.name, "link", "set", name, "up", timeout_s=30, what="ip link up")


def set_link(host: Host, name: str, state: str) -> None:
    sh("ip", "-n", host.name, "link", "set", name, state, timeout_s=30, what=f"link {state}")

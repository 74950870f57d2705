"""Processes under test: the relay, the sandbox and the baselines, each in its own process.

Separate processes keep the load generator, the upstream and the server from sharing one
event loop; on a 2-core machine they still share the CPU, as they would in production.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from relay.sandbox import DEMO_SECRET, DEMO_SERVER_ID

BENCH_DIR = Path(__file__).resolve().parent
PYTHON = sys.executable
# Set by ``python -m bench --relay-src DIR``: the relay under test runs from that source tree
# (another checkout), everything else from this one. Interleaved runs of two trees are how a
# change is measured against its parent.
relay_src: Path | None = None
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    """A started server process and the base URL it answers on."""

    popen: subprocess.Popen[bytes]
    url: str
    started_s: float  # from spawn until /healthz answered

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_s(self) -> float:
        """CPU seconds (user + system, every thread) the process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of stat(5); the split starts at field 3.
        return (int(fields[11]) + int(fields[12])) * _TICK_S

    def rss_mb(self) -> tuple[float, float]:
        """Resident memory now and its peak so far, in MB (from /proc)."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value
        return _kb(fields["VmRSS"]) / 1024, _kb(fields["VmHWM"]) / 1024


def _kb(text: str) -> float:
    return float(text.split()[0])


@contextlib.contextmanager
def spawn(
    argv: list[str],
    url: str,
    *,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/healthz",
    log: Path | None = None,
    timeout_s: float = 30.0,
    cwd: Path | None = None,
) -> Iterator[Proc]:
    """Start ``argv``, wait until ``url + ready_path`` answers, and stop it on exit."""
    out = log.open("ab") if log else subprocess.DEVNULL
    started = time.monotonic()
    popen = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
        argv, env={**os.environ, **(env or {})}, stdout=out, stderr=out, cwd=cwd
    )
    try:
        _wait_ready(popen, url + ready_path, timeout_s)
        yield Proc(popen, url, time.monotonic() - started)
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def _wait_ready(popen: subprocess.Popen[bytes], url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{popen.args} exited with {popen.returncode} before ready")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(url, timeout=1),  # noqa: S310 (loopback http only)
        ):
            return
        time.sleep(0.005)
    raise RuntimeError(f"{popen.args} not ready within {timeout_s} s")


def preload_env(shim: Path | None, fsync_ms: float) -> dict[str, str]:
    """Environment that slows every fsync of the child to ``fsync_ms`` (None: untouched)."""
    if shim is None:
        return {}
    return {"LD_PRELOAD": str(shim), "SLOW_FSYNC_MS": str(fsync_ms)}


def build_shim(workdir: Path) -> Path:
    """Compile the slow-fsync LD_PRELOAD shim with gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the slow-fsync shim: apt-get install gcc")
    target = workdir / "slow_fsync.so"
    subprocess.run(  # noqa: S603
        [
            gcc,
            "-O2",
            "-shared",
            "-fPIC",
            "-o",
            str(target),
            str(BENCH_DIR / "slow_fsync.c"),
            "-ldl",
        ],
        check=True,
    )
    return target


@contextlib.contextmanager
def baseline(
    mode: str, workdir: Path, env: Mapping[str, str], *, uvloop: bool = False
) -> Iterator[Proc]:
    port = free_port()
    argv = [PYTHON, "-m", "bench.baseline", mode, "--port", str(port)]
    if uvloop:
        argv.append("--uvloop")
    if mode == "naive":
        db = workdir / "naive.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        argv += ["--db", str(db)]
    with spawn(argv, f"http://127.0.0.1:{port}", env={**env, "PYTHONPATH": _pythonpath()}) as p:
        yield p


@contextlib.contextmanager
def sandbox(latency_ms: float, log: Path) -> Iterator[Proc]:
    port = free_port()
    argv = [
        PYTHON, "-m", "relay.cli", "sandbox",
        "--listen", f"127.0.0.1:{port}", "--latency-ms", str(latency_ms),
    ]  # fmt: skip
    with spawn(argv, f"http://127.0.0.1:{port}", ready_path="/_sandbox/state", log=log) as p:
        yield p


def relay_config(workdir: Path, *, concurrency: int, rate_per_s: float) -> Path:
    path = workdir / "relay.toml"
    path.write_text(
        f"[delivery]\nconcurrency = {concurrency}\nmax_send_rate_per_s = {rate_per_s}\n"
        # Ingest benchmarks fill a disk quickly; the check itself stays on.
        "[ingest]\nmin_free_bytes = 1048576\n"
    )
    return path


@contextlib.contextmanager
def relay(
    db: Path,
    endpoint: str,
    config: Path,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> Iterator[Proc]:
    """``mmolove-relay serve`` on a free port with the sandbox's demo server."""
    port = free_port()
    relay_env = {
        "MMOLOVE_SERVER_ID": DEMO_SERVER_ID,
        "MMOLOVE_SECRET": DEMO_SECRET,
        "MMOLOVE_ENDPOINT": endpoint,
        "MMOLOVE_RELAY_LISTEN": f"127.0.0.1:{port}",
        "MMOLOVE_RELAY_DB": str(db),
        "MMOLOVE_RELAY_CONFIG": str(config),
        "MMOLOVE_RELAY_LOG_FORMAT": "json",
        **(env or {}),
        **relay_src_env(),
    }
    argv = [PYTHON, "-m", "relay.cli", "serve"]
    with spawn(argv, f"http://127.0.0.1:{port}", env=relay_env, log=log, cwd=relay_src) as p:
        yield p


def relay_src_env() -> dict[str, str]:
    """Environment that makes ``python -m relay...`` import the tree under test."""
    return {"PYTHONPATH": str(relay_src)} if relay_src else {}


def _pythonpath() -> str:
    root = str(BENCH_DIR.parent)
    existing = os.environ.get("PYTHONPATH")
    return f"{root}:{existing}" if existing else root

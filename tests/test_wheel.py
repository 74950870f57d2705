"""The wheel is the relay: every file of ``relay/`` goes into it, and installed into a fresh
venv outside the repository it runs ``demo`` on its own.

The other tests run an editable install, which reads ``relay/`` in place and so hides a
module, sub-package or data file the wheel leaves out. Building the wheel is a pip run of
its own (9 s of a default-run worker), so all of this is a CI step: ``pytest -m wheel``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from relay.packaged import SYSTEMD_UNIT
from tests.support import assert_demo_landed
from tests.systems import ROOT, copy_checkout, sh


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built by pip from a copy of what a build needs (as the Dockerfile copies),
    so the build writes nothing into the repository and no stale ``build/`` leaks into it."""
    checkout = tmp_path_factory.mktemp("checkout")
    copy_checkout(checkout / "src")
    out = checkout / "dist"
    sh(
        *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
        *("--wheel-dir", str(out), str(checkout / "src")),
        timeout_s=600,
        what="pip wheel",
    )
    [built] = out.glob("mmolove_relay-*.whl")
    return built


def package_files(checkout: Path) -> set[str]:
    """Every file under the checkout's ``relay/``, code and data, as the wheel names it."""
    return {
        path.relative_to(checkout).as_posix()
        for path in (checkout / "relay").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def left_out(wheel: Path, checkout: Path) -> dict[str, set[str]]:
    """What the package's files and the wheel's ``relay/`` differ by."""
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name for name in archive.namelist() if name.startswith("relay/")}
    source = package_files(checkout)
    return {"missing": source - packaged, "extra": packaged - source}


@pytest.mark.wheel
@pytest.mark.timeout(900)
def test_the_wheel_holds_every_file_of_the_package(wheel: Path) -> None:
    """Modules, sub-packages and data (the unit, the example configuration, the console's
    templates and static files): what is missing or extra is named."""
    assert f"relay/{SYSTEMD_UNIT}" in package_files(ROOT)
    differ = left_out(wheel, ROOT)
    assert differ == {"missing": set(), "extra": set()}, (
        f"the wheel and relay/ differ: {differ}; a data file needs a package-data glob in "
        "pyproject.toml"
    )


@pytest.mark.wheel
@pytest.mark.timeout(900)
def test_a_file_the_wheel_lacks_is_named(wheel: Path, tmp_path: Path) -> None:
    """The comparison can fail: a file added to the package after the build (as a file no
    package-data glob matches would be left out of it) is reported missing."""
    copy_checkout(tmp_path / "src")
    (tmp_path / "src/relay/systemd/README.txt").write_text("no glob matches me\n")
    assert left_out(wheel, tmp_path / "src") == {
        "missing": {"relay/systemd/README.txt"},
        "extra": set(),
    }


@pytest.mark.wheel
@pytest.mark.timeout(900)
def test_installed_into_a_fresh_venv_the_demo_runs_outside_the_repository(
    wheel: Path, tmp_path: Path
) -> None:
    """pip installs the wheel and its dependencies into a new venv; ``demo`` runs there with
    a bare environment and a working directory holding no ``relay/``, and the relay it
    imports, and the unit it finds, are the venv's."""
    venv = tmp_path / "venv"
    # pip's own settings (an index, a cache) stay; nothing that points Python at this checkout.
    pip_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    sh(sys.executable, "-m", "venv", str(venv), timeout_s=300, what="python -m venv")
    sh(
        *(str(venv / "bin/pip"), "install", "--quiet", str(wheel)),
        timeout_s=600,
        what="pip install of the wheel",
        env=pip_env,
    )
    bare = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.defpath}"}
    assert not (tmp_path / "relay").exists()

    found = json.loads(
        sh(
            str(venv / "bin/python"),
            "-c",
            "import json, relay, relay.packaged as p; unit = p.packaged_file(p.SYSTEMD_UNIT); "
            "print(json.dumps([relay.__file__, str(unit), unit.read_text()]))",
            timeout_s=60,
            what="importing the installed relay",
            cwd=tmp_path,
            env=bare,
        )
    )
    imported, unit_path, unit_text = found
    assert Path(imported).is_relative_to(venv), imported
    assert Path(unit_path).is_relative_to(venv), unit_path
    assert unit_text == (ROOT / "relay" / SYSTEMD_UNIT).read_text()

    demo = subprocess.run(
        [venv / "bin/mmolove-relay", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env=bare,
    )
    assert_demo_landed(demo.returncode, demo.stdout, demo.stderr)

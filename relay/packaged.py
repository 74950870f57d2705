"""The files the package carries beside its code, found where pip installed them.

The wheel holds what setting a server up needs without a checkout of the repository: the
systemd unit, the example configuration, the console's templates and static files. Found
through ``importlib.resources``, so a lookup does not depend on the working directory or on
how the package was installed.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

SYSTEMD_UNIT = "systemd/mmolove-relay.service"


def packaged_file(name: str) -> Traversable:
    """The packaged file ``name``, a '/'-separated path relative to the ``relay`` package."""
    found = resources.files("relay").joinpath(*name.split("/"))
    if not found.is_file():
        raise FileNotFoundError(
            f"{name} is missing from the installed mmolove-relay ({resources.files('relay')}): "
            "the installation is incomplete; reinstall it with pip (`pip install "
            "--force-reinstall` and the same wheel or checkout)"
        )
    return found

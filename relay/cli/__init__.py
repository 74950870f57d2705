"""The ``mmolove-relay`` command: the daemon, the sandbox, the demo and the operator tools.

``main`` (in ``relay.cli.parser``) is the console script's entry point.
"""

from relay.cli.parser import main

__all__ = ["main"]

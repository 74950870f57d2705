"""``python -m relay.cli``: the ``mmolove-relay`` command."""

import sys

from relay.cli.parser import main

sys.exit(main())

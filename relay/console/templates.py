"""The console's Jinja2 templates, loaded when the first page is rendered.

A relay whose console nobody opens never imports Jinja2 (about 0.05 s of every start), and a
process compiles each template once, however many relays it runs.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING

from relay.console import overview

if TYPE_CHECKING:
    import jinja2

_HERE = Path(__file__).parent


@functools.cache
def templates() -> jinja2.Environment:
    import jinja2  # here, not at the top: see the docstring

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,  # every value is HTML-escaped unless a template says otherwise
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = lambda t: (
        "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
    )
    env.filters["age"] = _age
    env.filters["count"] = overview.count
    return env


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"

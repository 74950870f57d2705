"""The HTTP API's published description (OpenAPI 3.1), shipped as package data.

``relay/openapi.json`` is the document; ``GET /v1/openapi.json`` serves it, and the tests
hold it to the routes the app registers and to the answers they give.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from aiohttp import web


@functools.cache
def _raw() -> bytes:
    return resources.files("relay").joinpath("openapi.json").read_bytes()


def document() -> dict[str, Any]:
    """The OpenAPI document, parsed."""
    parsed: dict[str, Any] = json.loads(_raw())
    return parsed


async def serve(request: web.Request) -> web.Response:
    return web.Response(body=_raw(), content_type="application/json")

"""The keys by which every route of the relay's one aiohttp app finds what the daemon wired
into it: the outbox, the live settings, the delivery snapshot and the metrics.

A feature's own keys (alert rules, rejections, the console's) live beside that feature.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from relay.metrics import Metrics
from relay.snapshot import DeliverySnapshot, Live
from relay.store.contract import Outbox

OUTBOX = web.AppKey("outbox", Outbox)
StateProvider = Callable[[], DeliverySnapshot]
# What the dispatcher tells of delivery right now: called per request, never kept.
DELIVERY_STATE: web.AppKey[StateProvider] = web.AppKey("delivery_state")
METRICS = web.AppKey("metrics", Metrics)
# The live settings and draining flag, shared with the dispatcher and the daemon.
INGEST = web.AppKey("ingest", Live)

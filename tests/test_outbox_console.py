"""The outbox's reads for the web console, on both backends (a real SQLite file, a real
PostgreSQL): time to id, hourly counts, the id-window log page, capped counts and search."""

from __future__ import annotations

from relay.events import Event, validate
from relay.store.contract import Attempt, EventFilter, Outbox, Outcome
from tests.support import SERVER, Backend, qualified, registered

NOW = 1_800_000_000.0


def event(body: dict[str, object]) -> Event:
    return validate(body, server_ids=[SERVER], allow_extra_fields=False, now=NOW)


async def fill(box: Outbox, count: int, every_s: float) -> list[int]:
    ids = []
    for n in range(count):
        [added] = await box.add([event(registered(f"t{n}", f"p{n}"))], NOW + n * every_s)
        ids.append(added.id)
    return ids


async def test_first_ids_at_matches_a_full_scan_with_gaps_and_edges(
    outbox: Outbox, backend: Backend
) -> None:
    raw = backend.raw
    assert await outbox.first_ids_at([NOW]) == [1]  # empty: everything starts at 1
    await fill(outbox, 60, every_s=10)
    # Pruned rows leave gaps in the ids.
    await raw("DELETE FROM events WHERE id BETWEEN 20 AND 35 OR id IN (1, 2, 60)")
    times = [NOW - 5 + 2.5 * k for k in range(260)]
    expected = [
        (await raw("SELECT COALESCE(MAX(id), 0) + 1 FROM events WHERE created_at < ?", t))[0][0]
        for t in times
    ]
    got = await outbox.first_ids_at(times)
    # Below the lowest surviving id the search stops at that id; every id from the answer
    # on came at or after the time, and the one before it (if any) came before.
    assert [max(e, 3) for e in expected] == got


async def test_hourly_counts_ingested_events_and_attempts_per_hour(outbox: Outbox) -> None:
    ids = await fill(outbox, 6, every_s=1200)  # two events an hour for three hours
    records = [await outbox.get(i) for i in ids]
    for n, record in enumerate(records[:3]):
        assert record is not None
        ok = n != 1
        await outbox.finish(
            record,
            Outcome(status="delivered" if ok else "pending", outcome="accepted" if ok else None),
            Attempt(
                record.id,
                NOW + 3600 + n,
                1.0,
                200 if ok else 503,
                "accepted" if ok else "http_503",
                None,
            ),
        )
    hours = await outbox.hourly(NOW, 4)
    assert [h.ingested for h in hours] == [3, 3, 0, 0]
    assert [(h.delivered, h.failed) for h in hours] == [(0, 0), (2, 1), (0, 0), (0, 0)]
    assert [h.start for h in hours] == [NOW + 3600 * k for k in range(4)]


async def test_log_page_looks_through_a_bounded_window_and_pages_older(outbox: Outbox) -> None:
    await fill(outbox, 30, every_s=1)
    [old] = await outbox.add([event(qualified("t0", "p0"))], NOW)
    await outbox.add([event(registered(f"late{n}", f"q{n}")) for n in range(20)], NOW + 100)

    page = await outbox.log_page(EventFilter(), older_than=None, scan=1000, limit=5)
    assert [r.id for r in page.records] == [51, 50, 49, 48, 47]
    assert page.older_than == 47

    # A rare filter: the first window holds no match, and says where to look next.
    rare = EventFilter(event="qualified")
    page = await outbox.log_page(rare, older_than=None, scan=10, limit=5)
    assert (page.records, page.older_than, page.scanned_from) == ((), 42, 42)
    seen: list[int] = []
    cursor: int | None = 42
    while cursor is not None:
        page = await outbox.log_page(rare, older_than=cursor, scan=10, limit=5)
        seen += [r.id for r in page.records]
        cursor = page.older_than
    assert seen == [old.id]

    newer = await outbox.log_page(EventFilter(after_id=49), older_than=None, scan=1000, limit=50)
    assert [r.id for r in newer.records] == [51, 50]

    by_player = await outbox.log_page(
        EventFilter(player="p0"), older_than=None, scan=1000, limit=50
    )
    assert [r.id for r in by_player.records] == [old.id, 1]  # the referral of player p0


async def test_counts_up_to_stop_past_the_cap(outbox: Outbox) -> None:
    await fill(outbox, 7, every_s=1)
    assert await outbox.oldest_pending_by_server([SERVER, "other"]) == {SERVER: NOW}
    assert await outbox.counts_up_to(100) == await outbox.counts_by_server()
    assert (await outbox.counts_up_to(3))[SERVER] == {
        "pending": 4,  # read: more than 3
        "in_flight": 0,
        "delivered": 0,
        "dead": 0,
    }


async def test_search_finds_by_token_or_server_event_id(outbox: Outbox) -> None:
    await fill(outbox, 3, every_s=1)
    await outbox.add([event(qualified("t1", "p1"))], NOW)
    assert [r.id for r in await outbox.search("t1", 10)] == [4, 2]
    assert [r.id for r in await outbox.search("reg-p2", 10)] == [3]
    assert await outbox.search("nobody", 10) == []

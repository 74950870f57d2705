"""The circuit breaker and backoff, with an explicit clock."""

from __future__ import annotations

import pytest

from relay.breaker import Breaker, backoff_s

pytestmark = pytest.mark.unit


def test_opens_after_consecutive_failures_then_lets_one_probe_through() -> None:
    breaker = Breaker(failures=3, cooldown_s=10, cap_s=100, retry_after_cap_s=300)
    for _ in range(2):
        breaker.failure(now=0)
    assert breaker.allowance(0, 4) == 4  # two failures: still closed
    breaker.failure(now=0)
    assert breaker.state == "open"
    assert breaker.allowance(9.9, 4) == 0
    assert breaker.allowance(10, 4) == 1  # the probe
    assert breaker.state == "half_open"
    assert breaker.allowance(10, 4) == 0  # only one probe at a time
    breaker.success()
    assert (breaker.state, breaker.allowance(10, 4)) == ("closed", 4)


def test_failed_probe_doubles_the_cooldown_up_to_the_cap() -> None:
    breaker = Breaker(failures=1, cooldown_s=10, cap_s=25, retry_after_cap_s=300)
    breaker.failure(now=0)
    holds = []
    now = 0.0
    for _ in range(3):
        now = breaker.open_until or now
        assert breaker.allowance(now, 1) == 1
        breaker.failure(now=now)
        holds.append((breaker.open_until or 0) - now)
    assert holds == [20, 25, 25]


def test_retry_after_opens_at_once_for_at_least_that_long() -> None:
    breaker = Breaker(failures=5, cooldown_s=1, cap_s=100, retry_after_cap_s=300)
    breaker.failure(now=0, retry_after_s=30)
    assert breaker.state == "open"
    assert breaker.open_until == 30
    assert breaker.reopens_at == 30


def test_retry_after_holds_the_shared_circuit_no_longer_than_its_cap() -> None:
    """One 429 with Retry-After: 3600 must not halt every other event for an hour."""
    breaker = Breaker(failures=5, cooldown_s=1, cap_s=100, retry_after_cap_s=300)
    breaker.failure(now=1000, retry_after_s=3600)
    assert (breaker.state, breaker.reopens_at) == ("open", 1300)
    assert breaker.allowance(1299, 4) == 0
    assert breaker.allowance(1300, 4) == 1  # the probe
    assert breaker.reopens_at is None  # half-open: the probe is under way


def test_released_probe_can_be_taken_again() -> None:
    breaker = Breaker(failures=1, cooldown_s=1, cap_s=10, retry_after_cap_s=300)
    breaker.failure(now=0)
    assert breaker.allowance(1, 1) == 1
    breaker.release_probe()
    assert breaker.allowance(1, 1) == 1


@pytest.mark.parametrize("attempts", [1, 2, 5, 30])
def test_backoff_is_full_jitter_under_the_cap(attempts: int) -> None:
    ceiling = min(60.0, 2.0 * 2 ** (attempts - 1))
    samples = [backoff_s(attempts, base_s=2.0, cap_s=60.0) for _ in range(200)]
    assert all(0 <= s <= ceiling for s in samples)
    assert max(samples) > ceiling / 2  # spread over the range, not pinned at zero

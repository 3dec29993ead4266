from __future__ import annotations

import pytest

from attune.api.breaker import CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_then_half_opens_then_closes() -> None:
    clock = Clock()
    changes: list[str] = []
    b = CircuitBreaker("m", 3, 5.0, clock, on_change=lambda _n, s: changes.append(s))
    for _ in range(2):
        b.before_call()
        b.failure()
    b.before_call()
    b.success()  # a success resets the count: two more failures do not open it
    for _ in range(2):
        b.before_call()
        b.failure()
    assert b.state == "closed"
    b.before_call()
    b.failure()  # third consecutive failure
    assert b.state == "open"
    with pytest.raises(CircuitOpen):
        b.before_call()
    clock.now += 4.9  # still within reset_timeout_s = 5
    with pytest.raises(CircuitOpen):
        b.before_call()
    clock.now += 0.2
    assert b.state == "half_open"
    b.before_call()  # the one trial call
    with pytest.raises(CircuitOpen):
        b.before_call()  # others wait for its outcome
    b.success()
    assert b.state == "closed"
    assert changes == ["open", "half_open", "closed"]


def test_a_failed_trial_reopens_for_another_timeout() -> None:
    clock = Clock()
    b = CircuitBreaker("m", 1, 2.0, clock)
    b.before_call()
    b.failure()
    clock.now += 2.0
    b.before_call()  # half-open trial
    b.failure()
    assert b.state == "open"
    clock.now += 1.9
    with pytest.raises(CircuitOpen):
        b.before_call()
    clock.now += 0.1
    assert b.state == "half_open"

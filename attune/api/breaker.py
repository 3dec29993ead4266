"""A circuit breaker, so the API stops waiting on a dependency that is down.

States:

``closed``
    calls go through; ``failure_threshold`` consecutive failures (errors or timeouts) open it.
``open``
    calls are refused at once (the caller falls back) for ``reset_timeout_s``.
``half_open``
    after that, exactly one trial call goes through while the others are still refused; its
    success closes the breaker, its failure opens it again for another ``reset_timeout_s``.

One breaker guards one dependency (the model server). It is used from one event loop, so it
needs no lock; ``clock`` is injectable for tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitOpen(Exception):
    """The breaker refused the call; the dependency is considered down."""


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failure_threshold: int,
        reset_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, State], None] | None = None,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._on_change = on_change or (lambda name, state: None)
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    @property
    def state(self) -> State:
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._set("half_open")
        return self._state

    def before_call(self) -> None:
        """Raise :class:`CircuitOpen` unless a call may go through now."""
        state = self.state
        if state == "closed":
            return
        if state == "half_open" and not self._trial_running:
            self._trial_running = True
            return
        raise CircuitOpen(f"{self.name} circuit is {state}")

    def success(self) -> None:
        self._failures = 0
        self._trial_running = False
        if self._state != "closed":
            self._set("closed")

    def failure(self) -> None:
        self._trial_running = False
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()
            self._set("open")

    def _set(self, state: State) -> None:
        if state != self._state:
            self._state = state
            self._on_change(self.name, state)

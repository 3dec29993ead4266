"""Progress lines for long steps: what is done of how much, the rate, and the time left.

Every step that can run for more than a few seconds says how far it is, in one form::

    <what>: <done>/<total> <unit>, <rate> <unit>/s, ETA <s> s

through the step's own ``say``/logger (so a batch run's lines keep its prefix and an Airflow
task's go to its log). Lines come at most every ``every`` seconds, never for a step that ends
within ``min_seconds``, and once at the end (``..., done in <s> s``) for one that did not.

Where the total is not known (a Spark stage: Spark plans its work as it goes) nothing claims
an ETA: :class:`Heartbeat` prints the elapsed time, and whatever is countable (e.g. the Spark
tasks of the running stages) from a caller's ``detail()``, every ``every`` seconds while the
step runs (:func:`spark_tasks` for Spark work).

Interactive bars (tqdm, on stderr) stay where they were (``attune replay``, reading the events
topic, model scoring; :mod:`models.progress` for Keras fits); these lines are for steps that
print through a ``say`` or a logger: the batch, the demo, Airflow tasks, whose output is
often a log file rather than a terminal.

The arithmetic is pure (:func:`rate_eta_line`, :meth:`RateEta.line` with an injected clock),
so it is tested with a fake clock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

Say = Callable[[str], None]
Clock = Callable[[], float]
Progress = Callable[[int, int], None]
"""``progress(done, total)``: what long computations call as they go (see :func:`reporter`)."""

T = TypeVar("T")


def format_rate(rate: float) -> str:
    """``1,234`` / ``12.3`` / ``0.0123``: three significant figures or more, no noise."""
    if not math.isfinite(rate):
        return "-"
    if rate >= 100:
        return f"{rate:,.0f}"
    if rate >= 1:
        return f"{rate:.1f}"
    return f"{rate:.3g}"


def format_count(count: float) -> str:
    """``12,345`` for whole or large counts; three significant figures for a small fraction
    (megabytes read: ``2.86``)."""
    if float(count).is_integer() or abs(count) >= 100:
        return f"{count:,.0f}"
    return f"{count:.3g}"


def rate_eta_line(what: str, done: float, total: float | None, unit: str, elapsed: float) -> str:
    """One progress line (see the module docstring); no ETA without a total or a rate."""
    rate = done / elapsed if elapsed > 0 else math.nan
    unit_s = f" {unit}" if unit else ""
    if total is None:
        return (
            f"{what}: {format_count(done)}{unit_s}, {format_rate(rate)}{unit_s}/s, "
            f"{elapsed:.0f} s elapsed (total unknown, no ETA)"
        )
    head = (
        f"{what}: {format_count(done)}/{format_count(total)}{unit_s}, {format_rate(rate)}{unit_s}/s"
    )
    if done >= total:
        return f"{head}, done in {elapsed:.0f} s"
    if not rate > 0:  # nothing done yet (or no time passed): no rate to project from
        return f"{head}, ETA unknown ({elapsed:.0f} s elapsed)"
    return f"{head}, ETA {(total - done) / rate:.0f} s"


class RateEta:
    """Counts work done on one step and says :func:`rate_eta_line` now and then.

    ``update(n)`` after each piece of work; a line comes when ``every`` seconds passed since
    the last one (and ``min_seconds`` since the start); ``finish()`` closes with a last line
    when the step took ``min_seconds`` or more (``always=True``: in any case). ``clock`` is
    injectable for tests.
    """

    def __init__(
        self,
        what: str,
        total: float | None,
        unit: str = "",
        *,
        say: Say = print,
        every: float = 5.0,
        min_seconds: float | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit, self.say = what, total, unit, say
        self.every = every
        self.min_seconds = every if min_seconds is None else min_seconds
        self.clock = clock
        self.started = clock()
        self.last = self.started
        self.done = 0.0
        self.printed = 0

    def line(self, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.started
        return rate_eta_line(self.what, self.done, self.total, self.unit, elapsed)

    def update(self, n: float = 1) -> bool:
        """Count ``n`` more done; returns whether a line was said."""
        return self.set(self.done + n)

    def set(self, done: float) -> bool:
        """Set the count to ``done``; returns whether a line was said."""
        self.done = done
        now = self.clock()
        if now - self.started < self.min_seconds or now - self.last < self.every:
            return False
        if self.total is not None and done >= self.total:
            return False  # the last line is finish()'s
        self._say(now)
        return True

    def finish(self, always: bool = False) -> None:
        now = self.clock()
        if always or self.printed or now - self.started >= self.min_seconds:
            self._say(now)

    def _say(self, now: float) -> None:
        self.say(self.line(now))
        self.last = now
        self.printed += 1


def progress_lines(
    items: Iterable[T],
    what: str,
    total: int | None = None,
    unit: str = "",
    *,
    say: Say = print,
    every: float = 5.0,
    min_seconds: float | None = None,
    clock: Clock = time.monotonic,
) -> Iterator[T]:
    """``items`` unchanged, with progress lines (counted after each item's work is done);
    ``total`` defaults to ``len(items)`` when it has one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    meter = RateEta(what, total, unit, say=say, every=every, min_seconds=min_seconds, clock=clock)
    for item in items:
        yield item
        meter.update(1)
    meter.finish()


def reporter(
    what: str,
    say: Say,
    unit: str = "",
    *,
    every: float = 5.0,
    min_seconds: float = 3.0,
    clock: Clock = time.monotonic,
) -> Progress:
    """A ``progress(done, total)`` callback (for code that reports counts, not items) saying
    :class:`RateEta` lines; the line at ``done == total`` closes it."""
    # the work starts when the callback is made (or when the previous work ended), not at
    # its first call
    previous_call = [clock()]
    meters: list[RateEta] = []

    def report(done: int, total: int) -> None:
        last = meters[-1] if meters else None
        if last is None or last.total != total or done < last.done:  # new work: a new meter
            meter = RateEta(
                what, total, unit, say=say, every=every, min_seconds=min_seconds, clock=clock
            )
            meter.started = meter.last = previous_call[0]
            meters.append(meter)
        meters[-1].set(done)
        if done >= total:
            meters[-1].finish()
        previous_call[0] = clock()

    return report


class Heartbeat:
    """While a step with no known total runs, say ``<what>: <elapsed> s elapsed`` (plus
    ``detail()``, e.g. Spark's task counts) every ``every`` seconds, from a daemon thread.

    ``with Heartbeat("gold", say, detail=...):`` around the step; :meth:`beat` makes one line
    (tests call it with a fake clock)."""

    def __init__(
        self,
        what: str,
        say: Say,
        *,
        every: float = 10.0,
        detail: Callable[[], str] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.what, self.say, self.every, self.detail, self.clock = what, say, every, detail, clock
        self.started = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> str:
        extra = ""
        if self.detail is not None:
            try:
                extra = self.detail()
            except Exception as exc:  # a progress line must never fail the step
                extra = f"({type(exc).__name__} reading progress)"
        elapsed = self.clock() - self.started
        return f"{self.what}: {elapsed:.0f} s elapsed (total unknown, no ETA)" + (
            f"; {extra}" if extra else ""
        )

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.say(self.beat())

    def __enter__(self) -> Heartbeat:
        self.started = self.clock()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.what}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def spark_tasks(spark: Any) -> str:
    """What is countable while Spark works: the tasks of its running stages, done of planned
    (a Spark stage's total is known once it starts; a whole job's is not). ``spark``: a
    ``SparkSession`` (not imported here: the core does not need Spark)."""
    tracker = spark.sparkContext.statusTracker()
    infos = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
    running = [i for i in infos if i is not None]
    if not running:
        return "no Spark stage running"
    done = sum(i.numCompletedTasks for i in running)
    total = sum(i.numTasks for i in running)
    return f"Spark tasks {done:,}/{total:,} of {len(running)} running Spark stage(s)"

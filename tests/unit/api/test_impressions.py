"""The impression flusher: one produce per flush, and what arrives meanwhile waits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attune.api import events as events_module
from attune.api.events import EventSender
from attune.config import AttuneConfig, PathsConfig


def impression(n: int) -> dict[str, Any]:
    return {"type": "impression", "n": n}


def flush(sender: EventSender) -> None:
    # bounded: a flusher that keeps draining what arrives meanwhile never returns
    asyncio.run(asyncio.wait_for(sender._flush(), 5))


def make_sender(tmp_path: Path) -> tuple[EventSender, list[list[int]], list[tuple[str, int]]]:
    counted: list[tuple[str, int]] = []
    sender = EventSender(
        AttuneConfig(paths=PathsConfig(var_dir=tmp_path / "var")),
        pseudonymize=lambda s: s,
        sink=None,  # type: ignore[arg-type]
        consent=None,  # type: ignore[arg-type]
        on_impressions=lambda outcome, n: counted.append((outcome, n)),
    )
    produced: list[list[int]] = []

    async def send(raw_events: Sequence[dict[str, Any]]) -> tuple[int, int]:
        produced.append([e["n"] for e in raw_events])
        # while this batch awaits Kafka's ack, requests keep logging impressions
        sender.log_impression(impression(100 + len(produced)))
        await asyncio.sleep(0)
        return len(raw_events), 0

    sender.send = send  # type: ignore[method-assign]
    return sender, produced, counted


def test_a_flush_sends_what_was_queued_and_leaves_later_arrivals_for_the_next(
    tmp_path: Path,
) -> None:
    sender, produced, counted = make_sender(tmp_path)
    for n in range(3):
        sender.log_impression(impression(n))

    flush(sender)

    # one produce with the three queued before the flush; the one logged during it waits
    assert produced == [[0, 1, 2]]
    assert [e["n"] for e in sender._queue] == [101]
    assert counted == [("sent", 3)]

    flush(sender)
    assert produced == [[0, 1, 2], [101]]
    assert [e["n"] for e in sender._queue] == [102]


def test_a_long_queue_goes_out_in_batches_of_flush_events(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(events_module, "FLUSH_EVENTS", 2)
    sender, produced, counted = make_sender(tmp_path)
    for n in range(5):
        sender.log_impression(impression(n))

    flush(sender)

    # 5 queued: batches of 2, 2, 1; the three logged meanwhile wait for the next flush
    assert produced == [[0, 1], [2, 3], [4]]
    assert [e["n"] for e in sender._queue] == [101, 102, 103]
    assert counted == [("sent", 2), ("sent", 2), ("sent", 1)]

"""Which online rows count for which bandit (pure), and what the feedback script is sent.

Rows are ``(user, ts_ms, iid, payload)`` with the payload keys the online query writes
(``y`` type, ``ar`` arm, ``pl`` placement, ``rc`` recommendation id); expected outcomes are
read off the rows by hand.
"""

from __future__ import annotations

import numpy as np
import orjson

from attune.bandits.feedback import Outcome, outcomes, script_arguments, statistics_delta
from attune.bandits.store import decode_statistics
from attune.config import BanditConfig

POLICIES = ("slot:hero", "messages", "experiment:ranker")


def row(iid: str, **payload: object) -> tuple[str, int, str, str]:
    return ("u", 1000, iid, orjson.dumps(payload).decode())


def test_slot_and_message_rows_count_by_placement() -> None:
    rows = [
        row("1#0", y="impression", ar="trailer", pl="slot:hero"),
        row("2#0", y="rec_click", ar="trailer", pl="slot:hero"),
        row("3#0", y="dismiss", ar="trailer", pl="slot:hero"),  # not a reward
        row("4#0", y="impression", ar="m1", pl="messages"),
        row("5#0", y="impression", ar="x", pl="slot:other"),  # no such policy
        row("6#0", y="impression", it="m9"),  # an ordinary impression
    ]
    assert outcomes(rows, POLICIES) == [
        Outcome("1#0", 1000, "u", "slot:hero", "trailer", "n"),
        Outcome("2#0", 1000, "u", "slot:hero", "trailer", "c"),
        Outcome("4#0", 1000, "u", "messages", "m1", "n"),
    ]


def test_experiment_rows_count_by_recommendation_id_not_the_decision_impression() -> None:
    rows = [
        # the decision impression at first exposure: the allocation's log, not a reward
        row("1#0", y="impression", ar="b", pl="experiment:ranker", rc="d1"),
        # a list served by variant b, and a click on it
        row("2#0", y="impression", rc="ranker:b:r1", it="m1"),
        row("3#0", y="rec_click", rc="ranker:b:r1", it="m1"),
        row("4#0", y="purchase", rc="ranker:b:r1", it="m1"),  # not a click
        row("5#0", y="impression", rc="other:a:r2", it="m1"),  # an experiment without a bandit
        row("6#0", y="impression", rc="no-pattern", it="m1"),
    ]
    assert outcomes(rows, POLICIES) == [
        Outcome("2#0", 1000, "u", "experiment:ranker", "b", "n"),
        Outcome("3#0", 1000, "u", "experiment:ranker", "b", "c"),
    ]


def test_a_linucb_event_sends_x_x_for_an_impression_and_x_for_a_click() -> None:
    cfg = BanditConfig(policy="linucb", segments=["new", "active"])
    events = [
        Outcome("1#0", 5, "u1", "slot:tile", "a", "n"),
        Outcome("2#0", 6, "u1", "slot:tile", "a", "c"),
        Outcome("3#0", 7, "u2", "slot:tile", "b", "n"),
    ]
    header, *blobs = script_arguments(events, cfg, {"u1": "active"}, 60_000, 24)
    h = orjson.loads(header)
    assert h["f"] == '["bias","segment=new","segment=active"]'
    assert (h["w"], h["h"]) == (60_000, 24)
    assert h["ev"] == [["1#0", 5, "n", "a", 1], ["2#0", 6, "c", "a", 1], ["3#0", 7, "n", "b", 1]]
    # u1 is active: x = [1, 0, 1]; u2 has no segment: x = [1, 0, 0]
    xx, xr = decode_statistics(blobs[0], 3)
    assert xx.tolist() == [[1, 0, 1], [0, 0, 0], [1, 0, 1]] and not xr.any()
    xx, xr = decode_statistics(blobs[1], 3)
    assert not xx.any() and xr.tolist() == [1, 0, 1]
    xx, _ = decode_statistics(blobs[2], 3)
    assert xx.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert (
        statistics_delta("c", np.array([0.5, 1.0]))
        == np.array([0.5, 1.0, 0, 0, 0], dtype="<f8").tobytes()
    )


def test_thompson_sends_no_statistics() -> None:
    header, *blobs = script_arguments(
        [Outcome("1#0", 5, "u1", "slot:hero", "a", "n")], BanditConfig(), {}, 1, 1
    )
    assert orjson.loads(header)["f"] == "" and blobs == []

"""The drift report's comparison of Redis features with the batch's, in plain Python."""

from __future__ import annotations

from typing import Any

from attune.online_store import RecentItem, SessionState, UserFeatures
from spark.drift import drift_rows, status_of


def _batch(user: str, last_ms: int, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "user": user,
        "last_ms": last_ms,
        "events": 2,
        "recent_items": ["i2", "i1"],
        "counters": {"item_view": 2},
        "affinities": {"Drama": 1.5},
        "dismissed_items": [],
        "ignored_genres": [],
        "session": {"session_id": "s1"},
    }
    row.update(kw)
    return row


def _online(user: str, last_ms: int | None, **kw: Any) -> UserFeatures:
    fields: dict[str, Any] = {
        "recent": [RecentItem("i2", "item_view", 2), RecentItem("i1", "item_view", 1)],
        "affinities": {"Drama": 1.5},
        "counters": {"item_view": 2, "events": 2},
        "last_event_ms": last_ms,
        "session": SessionState("s1", 1, 2, 2, {"item_view": 2}, "i2", "item_view"),
    }
    fields.update(kw)
    return UserFeatures(user=user, **fields)


def test_status_of_a_user() -> None:
    assert status_of(_batch("u", 100), _online("u", 100)) == "comparable"
    assert status_of(_batch("u", 100), _online("u", 50)) == "behind"
    assert status_of(_batch("u", 100), _online("u", 150)) == "newer"
    assert status_of(_batch("u", 100), UserFeatures(user="u")) == "missing"


def test_drift_rows_count_equal_and_different_features() -> None:
    batch = [
        _batch("same", 100),
        # the stream missed one view of i3: recent items and counters differ
        _batch("behind", 100, recent_items=["i3", "i2", "i1"], counters={"item_view": 3}, events=3),
        _batch("newer", 100),
        _batch("gone", 100),
    ]
    online = {
        "same": _online("same", 100),
        "behind": _online("behind", 90, affinities={"Drama": 1.0}),
        "newer": _online("newer", 200),
        "gone": UserFeatures(user="gone"),
    }
    rows = {r[0]: r[1:] for r in drift_rows(batch, online)}
    assert rows["status:comparable"] == (1, 1, None, None)
    assert rows["status:behind"] == (1, 1, None, None)
    assert rows["status:newer"] == (1, 1, None, None)
    assert rows["status:missing"] == (1, 1, None, None)
    # compared: "same" and "behind"
    # recent items: same equal (distance 0); behind {i3,i2,i1} vs {i2,i1}: 1 - 2/3
    users, equal, mean, mx = rows["recent_items"]
    assert (users, equal) == (2, 1)
    assert abs(mean - (1 / 3) / 2) < 1e-12 and abs(mx - 1 / 3) < 1e-12
    # counters: behind differs by one item_view; events 3 vs 2
    assert rows["counters"] == (2, 1, 0.5, 1.0)
    assert rows["events"] == (2, 1, 0.5, 1.0)
    # affinities: 1.5 vs 1.0 for behind
    assert rows["affinities"] == (2, 1, 0.25, 0.5)
    assert rows["session_id"] == (2, 2, 0.0, 0.0)
    assert rows["dismissed_items"] == (2, 2, 0.0, 0.0)

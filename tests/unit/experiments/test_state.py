"""Running state: allocations, status, the start/stop transitions (pure), and the Redis
records (on an in-memory stand-in; tests/integration/experiments runs them on Redis)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from attune.experiments.spec import ExperimentsFile, parse_experiments
from attune.experiments.state import (
    Allocation,
    Refused,
    RunningState,
    StateStore,
    allocation_changes,
    declared_allocations,
    parse_states,
    plan_start,
    plan_stop,
    status_of,
)
from attune.keys import Keys
from tests.unit.experiments.fake_redis import FakeRedis

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)


def decls(*experiments: dict[str, Any]) -> ExperimentsFile:
    full = [
        {"hypothesis": "h", "variants": {"control": {}, "treatment": {"ranking": False}}, **e}
        for e in experiments
    ]
    return parse_experiments({"experiments": full})


def started(d: ExperimentsFile, exp: str, at: datetime = NOW - timedelta(days=1)) -> RunningState:
    return RunningState(exp, "running", at, declared_allocations(d)[exp])


def test_declared_ranges_follow_the_file_per_layer() -> None:
    d = decls(
        {"id": "a", "layer": "recs", "traffic": 0.25},
        {"id": "x", "layer": "ui", "traffic": 0.5},
        {"id": "b", "layer": "recs", "traffic": 0.5},
    )
    got = declared_allocations(d)
    # recs: a [0, .25), b [.25, .75); ui: x [0, .5)
    assert (got["a"].layer, got["a"].range) == ("recs", (0.0, 0.25))
    assert got["b"].range == (0.25, 0.75)
    assert (got["x"].layer, got["x"].range) == ("ui", (0.0, 0.5))
    assert got["a"].weights == {"control": 1.0, "treatment": 1.0}


def test_allocation_changes_compare_shares_not_raw_weights() -> None:
    old = Allocation("recs", 1.0, (0.0, 1.0), {"control": 1, "treatment": 1})
    assert (
        allocation_changes(old, Allocation("recs", 1.0, (0.0, 1.0), {"control": 2, "treatment": 2}))
        == []
    )
    # 1:1 -> 3:1 is 50/50 -> 75/25
    new = Allocation("recs", 1.0, (0.0, 1.0), {"control": 3, "treatment": 1})
    assert allocation_changes(old, new) == ["split control 50% -> 75%, treatment 50% -> 25%"]
    assert allocation_changes(old, new, weights=False) == []


def test_allocation_changes_list_every_difference() -> None:
    old = Allocation("recs", 1.0, (0.0, 1.0), {"control": 1, "treatment": 1})
    moved = Allocation("ui", 0.5, (0.25, 0.75), {"control": 1, "t2": 1})
    # the shares of the variants both have stay 50 %: no "split" phrase
    assert allocation_changes(old, moved) == [
        "layer recs -> ui",
        "traffic 1 -> 0.5",
        "range of the layer's users [0, 1) -> [0.25, 0.75)",
        "variant(s) added: t2",
        "variant(s) removed: treatment",
    ]


def test_status() -> None:
    d = decls({"id": "a", "stop": "2026-12-10T00:00:00Z"})
    a = d.experiments[0]
    assert status_of(a, None, NOW) == "draft"
    assert status_of(a, started(d, "a", NOW + timedelta(hours=1)), NOW) == "scheduled"
    assert status_of(a, started(d, "a"), NOW) == "running"
    assert status_of(a, started(d, "a"), datetime(2026, 12, 10, tzinfo=UTC)) == "stopped"
    stopped = RunningState("a", "stopped", NOW - timedelta(days=2), started(d, "a").allocation, NOW)
    assert status_of(a, stopped, NOW) == "stopped"


def test_state_json_round_trip_and_unreadable_entries() -> None:
    d = decls({"id": "a"})
    st = RunningState(
        "a", "stopped", NOW - timedelta(days=1), declared_allocations(d)["a"], NOW, True
    )
    raw = st.to_json()
    assert raw == {
        "status": "stopped",
        "started_at": "2026-12-04T12:00:00.000Z",
        "stopped_at": "2026-12-05T12:00:00.000Z",
        "allocation": {
            "layer": "default",
            "traffic": 1.0,
            "range": [0.0, 1.0],
            "weights": {"control": 1.0, "treatment": 1.0},
        },
        "forced": True,
    }
    states, problems = parse_states({b"a": json.dumps(raw).encode(), b"b": b"{not json"})
    assert states == {"a": st}
    assert len(problems) == 1 and "'b' is unreadable" in problems[0]
    # the design's minimal allocation (traffic and weights) reads as the range [0, traffic)
    minimal = {
        "status": "running",
        "started_at": "2026-12-01T00:00:00Z",
        "allocation": {"traffic": 0.5, "weights": {"a": 1}},
    }
    states, _ = parse_states({"m": json.dumps(minimal)})
    assert states["m"].allocation.range == (0.0, 0.5) and states["m"].stopped_at is None


# -- start -------------------------------------------------------------------------------


def test_start_a_draft_now_or_at_its_planned_start() -> None:
    d = decls({"id": "a"})
    t = plan_start(d, {}, "a", NOW)
    assert t is not None and t.action == "start"
    assert (t.state.status, t.state.started_at, t.state.forced) == ("running", NOW, False)
    assert t.state.allocation == declared_allocations(d)["a"]
    later = decls({"id": "a", "start": "2026-12-07T00:00:00Z"})
    t = plan_start(later, {}, "a", NOW)
    assert t is not None and t.state.started_at == datetime(2026, 12, 7, tzinfo=UTC)
    earlier = decls({"id": "a", "start": "2026-12-01T00:00:00Z"})  # a past start: from now
    t = plan_start(earlier, {}, "a", NOW)
    assert t is not None and t.state.started_at == NOW


def test_start_of_a_running_experiment_with_its_allocation_does_nothing() -> None:
    d = decls({"id": "a"})
    assert plan_start(d, {"a": started(d, "a")}, "a", NOW) is None


def test_a_changed_allocation_is_refused_unless_forced() -> None:
    d = decls({"id": "a"})
    states = {"a": started(d, "a")}
    changed = decls({"id": "a", "variants": {"control": {"weight": 3}, "treatment": {"weight": 1}}})
    with pytest.raises(Refused) as info:
        plan_start(changed, states, "a", NOW)
    message = str(info.value)
    assert "a is running since 2026-12-04T12:00:00.000Z" in message
    assert "split control 50% -> 75%, treatment 50% -> 25%" in message  # what changed
    assert "--force records the declared allocation" in message  # how to go on
    assert "users between the old and the new boundaries change arm" in message  # at what cost
    t = plan_start(changed, states, "a", NOW, force=True)
    assert t is not None and t.action == "force" and t.state.forced
    assert t.state.started_at == states["a"].started_at  # still the same run
    assert dict(t.state.allocation.weights) == {"control": 3.0, "treatment": 1.0}
    assert t.changes == ("split control 50% -> 75%, treatment 50% -> 25%",)


def test_a_scheduled_experiment_takes_the_file_as_it_is_now() -> None:
    d = decls({"id": "a", "start": "2026-12-07T00:00:00Z"})
    states = {"a": started(d, "a", datetime(2026, 12, 7, tzinfo=UTC))}
    assert plan_start(d, states, "a", NOW) is None
    changed = decls({"id": "a", "start": "2026-12-08T00:00:00Z", "traffic": 0.5})
    t = plan_start(changed, states, "a", NOW)  # nobody was assigned yet: no --force needed
    assert t is not None and t.action == "reschedule"
    assert t.state.started_at == datetime(2026, 12, 8, tzinfo=UTC)
    assert t.state.allocation.traffic == 0.5


def test_restarting_a_stopped_experiment_needs_force() -> None:
    d = decls({"id": "a"})
    st = started(d, "a")
    states = {
        "a": RunningState("a", "stopped", st.started_at, st.allocation, NOW - timedelta(hours=1))
    }
    with pytest.raises(Refused, match=r"was stopped at 2026-12-05T11:00:00\.000Z"):
        plan_start(d, states, "a", NOW)
    t = plan_start(d, states, "a", NOW, force=True)
    assert t is not None and t.action == "restart" and t.state.status == "running"


def test_an_experiment_past_its_planned_stop_cannot_start() -> None:
    d = decls({"id": "a", "stop": "2026-12-01T00:00:00Z"})
    with pytest.raises(Refused, match=r"planned stop 2026-12-01T00:00:00\.000Z has passed"):
        plan_start(d, {}, "a", NOW)


def test_start_refuses_a_range_a_running_experiment_of_the_layer_holds() -> None:
    # a started on [0, 0.5) of recs; then b was put before it in the file, so the file now
    # gives b [0, 0.5) and a [0.5, 1): b would share a's users
    before = decls({"id": "a", "layer": "recs", "traffic": 0.5})
    states = {"a": started(before, "a")}
    now_file = decls(
        {"id": "b", "layer": "recs", "traffic": 0.5}, {"id": "a", "layer": "recs", "traffic": 0.5}
    )
    with pytest.raises(Refused) as info:
        plan_start(now_file, states, "b", NOW)
    message = str(info.value)
    assert "b would take the users [0, 0.5) of layer recs, but a runs on [0, 0.5)" in message
    assert "stop a, or reorder or resize" in message
    # once a stopped, b may start
    stopped = {
        "a": RunningState("a", "stopped", NOW - timedelta(days=1), states["a"].allocation, NOW)
    }
    assert plan_start(now_file, stopped, "b", NOW) is not None


# -- stop --------------------------------------------------------------------------------


def test_stop() -> None:
    d = decls({"id": "a"})
    with pytest.raises(Refused, match="a is a draft"):
        plan_stop(d, {}, "a", NOW)
    t = plan_stop(d, {"a": started(d, "a")}, "a", NOW)
    assert t is not None and (t.state.status, t.state.stopped_at, t.action) == (
        "stopped",
        NOW,
        "stop",
    )
    assert plan_stop(d, {"a": t.state}, "a", NOW) is None  # already stopped
    ended = decls({"id": "a", "stop": "2026-12-05T00:00:00Z"})  # its planned stop has passed
    t = plan_stop(ended, {"a": started(ended, "a")}, "a", NOW)
    assert t is not None and t.state.stopped_at == datetime(2026, 12, 5, tzinfo=UTC)


def test_unknown_ids_are_key_errors() -> None:
    with pytest.raises(KeyError):
        plan_start(decls({"id": "a"}), {}, "b", NOW)
    with pytest.raises(KeyError):
        plan_stop(decls({"id": "a"}), {}, "b", NOW)


# -- the records -------------------------------------------------------------------------


def test_the_store_records_the_state_and_the_history() -> None:
    r = FakeRedis()
    keys = Keys("tst")
    store = StateStore(r, keys)  # type: ignore[arg-type]
    d = decls({"id": "a"})
    t = store.apply(lambda states: plan_start(d, states, "a", NOW), NOW)
    assert t is not None
    assert set(r.hashes) == {"tst:{exp}:state"} and set(r.lists) == {"tst:{exp}:history"}
    assert store.read() == {"a": t.state}
    assert store.apply(lambda states: plan_start(d, states, "a", NOW), NOW) is None  # nothing new
    store.apply(
        lambda states: plan_stop(d, states, "a", NOW + timedelta(hours=1)), NOW + timedelta(hours=1)
    )
    history = store.history("a")
    assert [h["action"] for h in history] == ["start", "stop"]
    assert history[1]["at"] == "2026-12-05T13:00:00.000Z"
    assert history[1]["state"]["status"] == "stopped"
    assert store.history("other") == []


def test_a_concurrent_change_makes_the_store_plan_again() -> None:
    r = FakeRedis()
    store = StateStore(r, Keys("tst"))  # type: ignore[arg-type]
    d = decls({"id": "a"})
    other = started(d, "a", NOW - timedelta(hours=3))
    # between WATCH and EXEC another `start a` records a: this one re-reads and finds it running
    r.interfere = lambda fake: fake.hset("tst:{exp}:state", "a", json.dumps(other.to_json()))
    seen: list[dict[str, RunningState]] = []

    def plan(states: Any) -> Any:
        seen.append(dict(states))
        return plan_start(d, states, "a", NOW)

    assert store.apply(plan, NOW) is None
    assert seen == [{}, {"a": other}]
    assert store.read() == {"a": other}

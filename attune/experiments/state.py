"""Running state: which declared experiments run, since when, and with which allocation.

A declaration (:mod:`attune.experiments.spec`) says what an experiment *would* do; whether it
runs is state, kept in Redis so every API process sees the same answer:

* ``Keys.experiments_state`` (``P:{exp}:state``), a hash: experiment id -> JSON
  ``{"status": "running"|"stopped", "started_at": iso, "stopped_at": iso|null,
  "allocation": {"layer", "traffic", "range": [lo, hi], "weights": {...}, "bandit": {...}
  (only with ``allocation.bandit``)}, "forced": bool}``;
* ``Keys.experiments_history`` (``P:{exp}:history``), a list: one JSON record per start, forced
  re-start and stop (``{"at", "experiment", "action", "state", "changes"}``), oldest first.

``attune experiments start ID`` records the **allocation** the experiment starts with: its
layer, the range of the layer's hash it owns (experiments of a layer own consecutive ranges of
width ``traffic`` in file order), its variants' weights and its ``allocation.bandit``. Users
are assigned by that recorded allocation for as long as the experiment runs: a later edit of the
file that would move users between arms (a new weight, a bandit added or changed, more
traffic, an experiment removed above it in its layer, so that its range shifts) is *not*
applied. The API logs a warning, ``attune experiments list/show``
flag the mismatch, and ``start ID --force`` records the new allocation, knowingly: users between
the old and the new boundaries change arm, which mixes two allocations in one analysis.

What users see (:func:`status_of`):

``draft``      declared, never started;
``scheduled``  started, but its ``start`` lies in the future (nobody assigned yet);
``running``    started and inside its window: users are assigned;
``stopped``    stopped by ``attune experiments stop``, or its planned ``stop`` has passed.

The status, the allocation comparison and the start/stop transitions are pure functions of the
declarations, the recorded state and ``now``; :class:`StateStore` is the only Redis I/O.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from attune.events import format_time
from attune.experiments.spec import ExperimentsFile, ExperimentSpec
from attune.keys import Keys

if TYPE_CHECKING:
    import redis

    from attune.config import AttuneConfig

log = logging.getLogger(__name__)

Status = Literal["draft", "scheduled", "running", "stopped"]
STATUSES: tuple[Status, ...] = ("draft", "scheduled", "running", "stopped")
EPS = 1e-9


# ----------------------------------------------------------------------------------------
# Allocation


@dataclass(frozen=True)
class Allocation:
    """How an experiment takes users: its layer, the range of the layer's hash it owns, and
    the relative weights of its variants."""

    layer: str
    traffic: float
    range: tuple[float, float]
    weights: Mapping[str, float] = field(default_factory=dict)
    bandit: Mapping[str, Any] | None = None  # allocation.bandit as declared; None: hash split

    def shares(self) -> dict[str, float]:
        """The weights as shares of 1 (zero weights included)."""
        total = sum(self.weights.values())
        return {n: (w / total if total > 0 else 0.0) for n, w in self.weights.items()}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "layer": self.layer,
            "traffic": self.traffic,
            "range": [self.range[0], self.range[1]],
            "weights": dict(self.weights),
        }
        if self.bandit is not None:  # left out otherwise: older records read the same
            out["bandit"] = dict(self.bandit)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Allocation:
        traffic = float(d["traffic"])
        lo, hi = d.get("range") or (0.0, traffic)
        return cls(
            layer=str(d.get("layer", "default")),
            traffic=traffic,
            range=(float(lo), float(hi)),
            weights={str(k): float(v) for k, v in dict(d.get("weights", {})).items()},
            bandit=None if d.get("bandit") is None else dict(d["bandit"]),
        )


def declared_allocations(decls: ExperimentsFile) -> dict[str, Allocation]:
    """Each declared experiment's allocation: in each layer, ranges of width ``traffic`` one
    after the other in file order (whether the experiment runs or not, so that starting or
    stopping one never moves another's users)."""
    out: dict[str, Allocation] = {}
    for layer, members in decls.layers().items():
        lo = 0.0
        for exp in members:
            hi = min(1.0, lo + exp.traffic)
            bandit = None if exp.bandit is None else exp.bandit.recorded()
            out[exp.id] = Allocation(layer, exp.traffic, (lo, hi), exp.weights, bandit)
            lo = hi
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.4g}%"


def allocation_changes(
    recorded: Allocation, declared: Allocation, *, weights: bool = True
) -> list[str]:
    """What differs between the recorded and the declared allocation, one phrase per change
    (empty: the same users land in the same arms). Weights compare as shares, so 1:1 and 2:2
    are the same split; ``weights=False`` ignores them (interleaving: every user sees both)."""
    out: list[str] = []
    if recorded.layer != declared.layer:
        out.append(f"layer {recorded.layer} -> {declared.layer}")
    if abs(recorded.traffic - declared.traffic) > EPS:
        out.append(f"traffic {recorded.traffic:g} -> {declared.traffic:g}")
    if any(abs(a - b) > EPS for a, b in zip(recorded.range, declared.range, strict=True)):
        out.append(
            f"range of the layer's users [{recorded.range[0]:g}, {recorded.range[1]:g}) -> "
            f"[{declared.range[0]:g}, {declared.range[1]:g})"
        )
    if recorded.bandit != declared.bandit:

        def how(b: Mapping[str, Any] | None) -> str:
            if b is None:
                return "hash split by weight"
            return "bandit " + ", ".join(f"{k}={v}" for k, v in b.items())

        out.append(f"allocation {how(recorded.bandit)} -> {how(declared.bandit)}")
    if weights:
        added = [n for n in declared.weights if n not in recorded.weights]
        removed = [n for n in recorded.weights if n not in declared.weights]
        if added:
            out.append(f"variant(s) added: {', '.join(added)}")
        if removed:
            out.append(f"variant(s) removed: {', '.join(removed)}")
        old, new = recorded.shares(), declared.shares()
        moved = [
            f"{n} {_pct(old[n])} -> {_pct(new[n])}"
            for n in old
            if n in new and abs(old[n] - new[n]) > EPS
        ]
        if moved:
            out.append("split " + ", ".join(moved))
    return out


def _overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] - EPS and b[0] < a[1] - EPS


# ----------------------------------------------------------------------------------------
# Running state


@dataclass(frozen=True)
class RunningState:
    """What ``attune experiments start/stop`` recorded for one experiment."""

    experiment: str
    status: Literal["running", "stopped"]
    started_at: datetime
    allocation: Allocation
    stopped_at: datetime | None = None
    forced: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "started_at": format_time(self.started_at),
            "stopped_at": None if self.stopped_at is None else format_time(self.stopped_at),
            "allocation": self.allocation.to_json(),
            "forced": self.forced,
        }

    @classmethod
    def from_json(cls, experiment: str, d: Mapping[str, Any]) -> RunningState:
        status = d["status"]
        if status not in ("running", "stopped"):
            raise ValueError(f"unknown status {status!r}")
        stopped = d.get("stopped_at")
        return cls(
            experiment=experiment,
            status=status,
            started_at=_parse_time(d["started_at"]),
            allocation=Allocation.from_json(d["allocation"]),
            stopped_at=None if stopped is None else _parse_time(stopped),
            forced=bool(d.get("forced", False)),
        )


def _parse_time(s: str) -> datetime:
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"time {s!r} has no zone")
    return t


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def parse_states(raw: Mapping[Any, Any]) -> tuple[dict[str, RunningState], list[str]]:
    """``HGETALL`` of the state hash -> (states, problems). An entry that does not parse is
    left out and described in ``problems`` (its experiment then counts as not started)."""
    states: dict[str, RunningState] = {}
    problems: list[str] = []
    for k, v in raw.items():
        exp = _text(k)
        try:
            states[exp] = RunningState.from_json(exp, json.loads(_text(v)))
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"state of experiment {exp!r} is unreadable ({exc}); start it again")
    return states, problems


def status_of(decl: ExperimentSpec, state: RunningState | None, now: datetime) -> Status:
    """draft | scheduled | running | stopped (see the module docstring)."""
    if state is None:
        return "draft"
    if state.status == "stopped":
        return "stopped"
    if decl.stop is not None and now >= decl.stop:
        return "stopped"
    if now < state.started_at:
        return "scheduled"
    return "running"


def effective_allocation(declared: Allocation, state: RunningState | None) -> Allocation:
    """The allocation users are assigned by: the recorded one once started, else the file's."""
    return state.allocation if state is not None else declared


def mismatch(decl: ExperimentSpec, declared: Allocation, state: RunningState | None) -> list[str]:
    """How the file's allocation differs from the one a started experiment keeps (empty when
    it does not, or the experiment is not started)."""
    if state is None or state.status != "running":
        return []
    return allocation_changes(state.allocation, declared, weights=decl.type == "ab")


# ----------------------------------------------------------------------------------------
# Transitions (pure): what start and stop record, or why they refuse


class Refused(Exception):
    """A start or stop that would harm a running experiment; the message says why and how."""


@dataclass(frozen=True)
class Transition:
    """The state to record and the history record that explains it."""

    state: RunningState
    action: Literal["start", "restart", "force", "reschedule", "stop"]
    changes: tuple[str, ...] = ()

    def history_record(self, now: datetime) -> dict[str, Any]:
        return {
            "at": format_time(now),
            "experiment": self.state.experiment,
            "action": self.action,
            "changes": list(self.changes),
            "state": self.state.to_json(),
        }


FORCE_EFFECT = (
    "--force records the declared allocation as the experiment's: users between the old and "
    "the new boundaries change arm (or enter or leave the experiment) and the analysis then "
    "mixes both allocations (the sample-ratio check may flag it); to measure the new "
    "allocation cleanly, stop this experiment and declare a new id instead"
)


def plan_start(
    decls: ExperimentsFile,
    states: Mapping[str, RunningState],
    experiment_id: str,
    now: datetime,
    *,
    force: bool = False,
) -> Transition | None:
    """What ``attune experiments start`` records; None when there is nothing to do (already
    running with the declared allocation). Raises :class:`Refused`."""
    decl = decls.get(experiment_id)
    if decl is None:
        raise KeyError(experiment_id)
    declared = declared_allocations(decls)[experiment_id]
    state = states.get(experiment_id)
    if decl.stop is not None and now >= decl.stop:
        raise Refused(
            f"{experiment_id}: its planned stop {format_time(decl.stop)} has passed; move stop "
            "later (or set it to null) in the experiments file to run it again"
        )
    begin = max(now, decl.start) if decl.start is not None else now
    _check_overlaps(decls, states, experiment_id, declared, now)
    status = status_of(decl, state, now)
    if state is None:
        return Transition(RunningState(experiment_id, "running", begin, declared), "start")
    if status == "stopped":
        if not force:
            raise Refused(
                f"{experiment_id} was stopped at "
                f"{format_time(state.stopped_at or state.started_at)}; starting it again would "
                "add a second period to the same analysis (users keep their arms). Use --force "
                "to do it anyway, or declare a new id for a new run"
            )
        return Transition(
            RunningState(experiment_id, "running", begin, declared, forced=True), "restart"
        )
    changes = tuple(mismatch(decl, declared, state))
    if status == "scheduled":  # nobody assigned yet: the file's allocation and start may change
        if not changes and state.started_at == begin:
            return None
        return Transition(
            RunningState(experiment_id, "running", begin, declared, forced=state.forced),
            "reschedule",
            changes,
        )
    if not changes:
        return None
    if not force:
        raise Refused(
            f"{experiment_id} is running since {format_time(state.started_at)} with another "
            f"allocation than the file declares now: {'; '.join(changes)}. It keeps the "
            f"recorded allocation until you decide. {FORCE_EFFECT}"
        )
    return Transition(
        RunningState(experiment_id, "running", state.started_at, declared, forced=True),
        "force",
        changes,
    )


def _check_overlaps(
    decls: ExperimentsFile,
    states: Mapping[str, RunningState],
    experiment_id: str,
    declared: Allocation,
    now: datetime,
) -> None:
    for other in decls.experiments:
        if other.id == experiment_id:
            continue
        st = states.get(other.id)
        if st is None or status_of(other, st, now) not in ("running", "scheduled"):
            continue
        alloc = st.allocation
        if alloc.layer == declared.layer and _overlaps(alloc.range, declared.range):
            raise Refused(
                f"{experiment_id} would take the users [{declared.range[0]:g}, "
                f"{declared.range[1]:g}) of layer {declared.layer}, but {other.id} runs on "
                f"[{alloc.range[0]:g}, {alloc.range[1]:g}) of that layer (the file changed "
                f"since {other.id} started): stop {other.id}, or reorder or resize the layer's "
                f"experiments so that their ranges do not overlap"
            )


def plan_stop(
    decls: ExperimentsFile,
    states: Mapping[str, RunningState],
    experiment_id: str,
    now: datetime,
) -> Transition | None:
    """What ``attune experiments stop`` records; None when it is already stopped. Raises
    :class:`Refused` for an experiment that never started."""
    decl = decls.get(experiment_id)
    if decl is None:
        raise KeyError(experiment_id)
    state = states.get(experiment_id)
    if state is None:
        raise Refused(f"{experiment_id} is a draft (never started): there is nothing to stop")
    if state.status == "stopped":
        return None
    when = now
    if decl.stop is not None and decl.stop < now:
        when = decl.stop  # it already ended by its plan
    if when < state.started_at:  # a scheduled experiment that never began
        when = state.started_at
    return Transition(replace(state, status="stopped", stopped_at=when), "stop")


# ----------------------------------------------------------------------------------------
# Redis I/O


class StateStore:
    """Reads and writes the running state (synchronous; the CLI and tests). The API reads the
    same hash with its own asynchronous client and :func:`parse_states`."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r = client
        self.keys = keys

    @classmethod
    def from_config(cls, cfg: AttuneConfig) -> StateStore:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        from attune.redis_connect import connect

        # a command line answers at once when Redis is down (redis-py retries 3 times by default)
        client = connect(
            cfg.redis,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, Keys.from_config(cfg))

    def read(self) -> dict[str, RunningState]:
        states, problems = parse_states(self.r.hgetall(self.keys.experiments_state))
        for p in problems:
            log.warning("%s", p)
        return states

    def history(self, experiment: str | None = None) -> list[dict[str, Any]]:
        rows = [json.loads(_text(v)) for v in self.r.lrange(self.keys.experiments_history, 0, -1)]
        return [r for r in rows if experiment is None or r.get("experiment") == experiment]

    def apply(
        self,
        plan: Callable[[Mapping[str, RunningState]], Transition | None],
        now: datetime,
    ) -> Transition | None:
        """Read the state, ``plan`` a transition on it, and record it atomically (WATCH, so a
        concurrent start or stop makes this one re-plan on what the other recorded)."""
        import redis as redis_lib

        key, hist = self.keys.experiments_state, self.keys.experiments_history
        while True:
            with self.r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)
                    # after WATCH a pipeline runs commands at once (until MULTI)
                    raw = cast("Mapping[Any, Any]", pipe.hgetall(key))
                    states, _ = parse_states(raw)
                    t = plan(states)
                    if t is None:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.hset(key, t.state.experiment, json.dumps(t.state.to_json()))
                    pipe.rpush(hist, json.dumps(t.history_record(now)))
                    pipe.execute()
                    return t
                except redis_lib.WatchError:
                    continue

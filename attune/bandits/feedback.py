"""The speed layer's half of the bandits: impressions and clicks of decisions -> bandit state.

The API logs every bandit decision as an impression whose one item is the arm shown, with
``context.placement`` = the policy name (:mod:`attune.bandits.registry`) and
``recommendation_id`` = the decision id; the app sends a click on it back as a ``rec_click``
with the same placement and item. The online query's rows carry those two as ``pl`` and ``ar``
(:func:`attune.features.with_bandit_arms`, which also keeps arms out of the item features).
An experiment's bandit counts its variants' lists instead, by their recommendation ids.
:func:`outcomes` picks all of them out of a micro-batch (pure), and :class:`BanditFeedback`
adds them to the policies' state in Redis in one pipelined round trip, one script call per
policy.

Exactly once, per event. Each policy keeps the interaction ids it counted
(:meth:`attune.keys.Keys.bandit_seen`, a sorted set by event time), so a replayed micro-batch,
a retry after a lost connection, or a duplicate that a client retry put in Kafka changes
nothing (``duplicates``). The set keeps the ids of the last ``speed.bandit_dedup_window`` of
event time before the newest counted event; an event older than that (the ``seen_floor``) is
not counted (``too_late``) rather than risk counting it twice: it is what a replay of the
topic from its start looks like. The newest time is capped at Redis's clock, so one event from
a client whose clock runs ahead cannot push the floor past everyone else's events.

Contextual policies (LinUCB) need the context of each impression and click: the user's segment,
read from the batch layer's hash (``user_batch``, the same field the API decided with) in the
same round trip as the writes' preparation. Between a decision and its feedback the segment
changes only when the nightly batch reassigns it; the update then uses the new one.

Every counted event also adds to the policy's history (:meth:`attune.keys.Keys.bandit_history`,
counts per hour and arm, ``speed.bandit_history`` of them kept): the dashboard's allocation
over time. All three keys of a policy share its hash tag, so a Redis Cluster keeps them in
one slot and the script declares every key it touches.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from attune.bandits.registry import configured_policies, experiment_policies
from attune.bandits.slots import layout
from attune.bandits.store import LUA_STATISTICS, encode_statistics
from attune.config import ConfigError
from attune.experiments.bandit import POLICY_PREFIX as EXPERIMENT_PREFIX
from attune.experiments.live import DEFAULT_PATTERN, NO_EXPERIMENT, parse_recommendation_id
from attune.keys import Keys
from attune.redis_connect import queue_script

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from redis import Redis

    from attune.config import AttuneConfig, BanditConfig

HOUR_MS = 3_600_000

# The event types that count: a decision's impression, and a click on what it showed.
IMPRESSION = "impression"
CLICK = "rec_click"

# Adds the impressions and clicks of one policy. KEYS[1]: the state hash, KEYS[2]: the seen set,
# KEYS[3]: the history hash. ARGV[1]: JSON {"f": the features' JSON or "" (no linear
# statistics), "w": dedup window ms, "h": hours of history kept, "ev": [[interaction id, event
# time ms, "n" (impression) or "c" (click), arm, 1 when a statistics blob follows else 0],
# ...]}; ARGV[2..]: the blobs (the event's x x' or x, packed like the state's x: fields), in
# the order of the events that have one. Returns {applied, duplicates, too_late}.
FEEDBACK_SCRIPT = (
    LUA_STATISTICS
    + r"""
local S, SEEN, H = KEYS[1], KEYS[2], KEYS[3]
local h = cjson.decode(ARGV[1])
local function fmt(x) return string.format('%d', x) end
-- every check before the first write: a refused update changes nothing
local cur_f = redis.call('HGET', S, 'features')
local err = features_refused(S, h.f, cur_f)
if err then return err end
local blobs, i = {}, 2
for n, e in ipairs(h.ev) do
  if e[5] == 1 then
    blobs[n] = ARGV[i]
    i = i + 1
    err = statistics_refused(S, e[4], blobs[n])
    if err then return err end
  end
end
if h.f ~= '' and not cur_f then redis.call('HSET', S, 'features', h.f) end
local floor = tonumber(redis.call('HGET', S, 'seen_floor') or '-1')
local applied, dups, late, max_t = 0, 0, 0, nil
for n, e in ipairs(h.ev) do
  local t = e[2]
  if t <= floor then
    late = late + 1
  elseif redis.call('ZADD', SEEN, 'NX', t, e[1]) == 0 then
    dups = dups + 1
  else
    applied = applied + 1
    if max_t == nil or t > max_t then max_t = t end
    redis.call('HINCRBY', S, e[3] .. ':' .. e[4], 1)
    redis.call('HINCRBY', H, fmt(t - t % 3600000) .. ':' .. e[3] .. ':' .. e[4], 1)
    if blobs[n] then add_statistics(S, e[4], blobs[n]) end
  end
end
if max_t ~= nil then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if max_t > now_ms then max_t = now_ms end
  local new_floor = max_t - h.w
  if new_floor > floor then
    redis.call('HSET', S, 'seen_floor', fmt(new_floor))
    redis.call('ZREMRANGEBYSCORE', SEEN, '-inf', fmt(new_floor))
  end
  local hour = max_t - max_t % 3600000
  local newest = tonumber(redis.call('HGET', H, 'newest') or '-1')
  if hour > newest then
    redis.call('HSET', H, 'newest', fmt(hour))
    local keep_from = hour - (h.h - 1) * 3600000
    for _, f in ipairs(redis.call('HKEYS', H)) do
      local fh = tonumber(string.match(f, '^(%d+):'))
      if fh and fh < keep_from then redis.call('HDEL', H, f) end
    end
  end
end
return {applied, dups, late}
"""
)


@dataclass(frozen=True)
class Outcome:
    """One impression (``kind`` "n") or click ("c") of a bandit decision's arm."""

    iid: str
    ts_ms: int
    user: str
    policy: str
    arm: str
    kind: str


@dataclass
class FeedbackStats:
    applied: int = 0
    duplicates: int = 0
    too_late: int = 0
    by_policy: dict[str, int] = field(default_factory=dict)

    def add(self, other: FeedbackStats) -> None:
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.too_late += other.too_late
        for p, n in other.by_policy.items():
            self.by_policy[p] = self.by_policy.get(p, 0) + n


def outcomes(
    rows: Iterable[tuple[str, int, str, str]],
    policies: Iterable[str],
    pattern: str = DEFAULT_PATTERN,
) -> list[Outcome]:
    """The bandit impressions and clicks among online rows ``(user, ts_ms, iid, payload)``.

    * A content slot's or the messages' (``slot:<slot>``, ``messages``): the row's placement
      (``pl``) is the policy and its arm (``ar``) the variant or message shown.
    * An experiment's (``experiment:<name>``): the arms are its variants and what counts is
      the lists they served: an impression or a click whose recommendation id (``rc``) names
      the experiment and variant (``pattern``, ``batch.recommendation_id_pattern``, the rule of
      the live counts). The decision impression logged at a user's first exposure only
      records the allocation and its propensity; it is not counted.

    Other types on a bandit placement (a dismissal, a purchase) are not rewards of the policy
    and are skipped, as are placements and experiments without a policy.
    """
    known = set(policies)
    # every served list's impression carries a recommendation id: look at those only when an
    # experiment has a bandit, so that slots alone parse nothing but their own rows
    by_rc = any(p.startswith(EXPERIMENT_PREFIX) for p in known)
    found: list[Outcome] = []
    for user, ts_ms, iid, payload in rows:
        if '"pl"' not in payload and not (by_rc and '"rc"' in payload):  # most rows: no parse
            continue
        p = orjson.loads(payload)
        etype = p.get("y")
        kind = "n" if etype == IMPRESSION else "c" if etype == CLICK else None
        if kind is None:
            continue
        policy, arm = p.get("pl"), p.get("ar")
        if policy in known and arm and not policy.startswith(EXPERIMENT_PREFIX):
            found.append(Outcome(iid, int(ts_ms), user, policy, arm, kind))
        rc = p.get("rc") if by_rc else None
        if rc:
            experiment, variant = parse_recommendation_id(rc, pattern)
            policy = f"{EXPERIMENT_PREFIX}{experiment}"
            if policy in known and variant != NO_EXPERIMENT:
                found.append(Outcome(iid, int(ts_ms), user, policy, variant, kind))
    return found


def statistics_delta(kind: str, x: np.ndarray) -> bytes:
    """One event's addition to its arm's linear statistics: ``x x'`` for an impression, ``x``
    for a click (packed like :func:`attune.bandits.store.encode_statistics`)."""
    d = len(x)
    if kind == "n":
        return encode_statistics(np.outer(x, x), np.zeros(d))
    return encode_statistics(np.zeros((d, d)), x)


def script_arguments(
    events: Sequence[Outcome],
    cfg: BanditConfig,
    segments: Mapping[str, str | None],
    window_ms: int,
    history_hours: int,
) -> list[bytes]:
    """The feedback script's ``ARGV`` for one policy's events (``segments``: user -> segment,
    needed for a contextual policy only)."""
    linear = cfg.policy == "linucb"
    features = layout(cfg)
    ev: list[list[Any]] = []
    blobs: list[bytes] = []
    for o in events:
        ev.append([o.iid, o.ts_ms, o.kind, o.arm, 1 if linear else 0])
        if linear:
            blobs.append(statistics_delta(o.kind, features.vector(segments.get(o.user))))
    header = {
        "f": orjson.dumps(list(features.names)).decode() if linear else "",
        "w": window_ms,
        "h": history_hours,
        "ev": ev,
    }
    return [orjson.dumps(header), *blobs]


class BanditFeedback:
    """Applies a micro-batch's bandit outcomes to Redis (sync client; module docstring)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        policies: Mapping[str, BanditConfig],
        window_ms: int,
        history_hours: int,
        pattern: str = DEFAULT_PATTERN,
    ) -> None:
        self.redis = redis
        self.pattern = pattern
        self.keys = keys
        self.policies = dict(policies)
        self.window_ms = window_ms
        self.history_hours = history_hours
        self._script = redis.register_script(FEEDBACK_SCRIPT)

    @classmethod
    def from_config(cls, cfg: AttuneConfig, redis: Redis) -> BanditFeedback | None:
        """The configured policies' feedback writer; None when no bandit is configured."""
        policies = configured_policies(cfg)
        try:
            policies |= experiment_policies(cfg)
        except ConfigError as exc:  # the API refuses the file too; the slots still learn
            log.warning("experiment bandits are not counted: %s", exc)
        if not policies:
            return None
        return cls(
            redis,
            Keys(cfg.speed.online_store.key_prefix),
            policies,
            int(cfg.speed.bandit_dedup_window.total_seconds() * 1000),
            max(1, int(cfg.speed.bandit_history.total_seconds() // 3600)),
            cfg.batch.recommendation_id_pattern,
        )

    def apply(self, rows: Iterable[tuple[str, int, str, str]]) -> FeedbackStats:
        """Count the bandit impressions and clicks among ``rows``; idempotent per event."""
        stats = FeedbackStats()
        if not self.policies:
            return stats
        found = outcomes(rows, self.policies, self.pattern)
        if not found:
            return stats
        by_policy: dict[str, list[Outcome]] = defaultdict(list)
        for o in found:
            by_policy[o.policy].append(o)
        segments = self._segments(
            {o.user for o in found if self.policies[o.policy].policy == "linucb"}
        )
        pipe = self.redis.pipeline(transaction=False)
        for policy, events in by_policy.items():
            args = script_arguments(
                events, self.policies[policy], segments, self.window_ms, self.history_hours
            )
            keys = [
                self.keys.bandit(policy),
                self.keys.bandit_seen(policy),
                self.keys.bandit_history(policy),
            ]
            queue_script(pipe, self._script, keys, args)
        for policy, (applied, dups, late) in zip(by_policy, pipe.execute(), strict=True):
            stats.applied += int(applied)
            stats.duplicates += int(dups)
            stats.too_late += int(late)
            stats.by_policy[policy] = int(applied)
        return stats

    def _segments(self, users: set[str]) -> dict[str, str | None]:
        if not users:
            return {}
        ordered = sorted(users)
        pipe = self.redis.pipeline(transaction=False)
        for u in ordered:
            pipe.hget(self.keys.user_batch(u), "segment")
        return {
            u: (s.decode() if isinstance(s, bytes) else s) if s else None
            for u, s in zip(ordered, pipe.execute(), strict=True)
        }

"""Bandit state in Redis: one hash per decision point, updated atomically, read in one round trip.

Each decision point (a content slot, the messages, an experiment's variants) is a *policy key*,
``P:bandit:{<policy>}`` (:meth:`attune.keys.Keys.bandit`; ``<policy>`` e.g. ``slot:home_banner``
or ``messages``, in braces so a Redis Cluster keeps the hash whole). Its fields:

=====================  ============================================================================
field                  value
=====================  ============================================================================
``n:<arm>``            impressions of the arm (integer)
``c:<arm>``            clicks of the arm (integer)
``x:<arm>``            the arm's linear statistics (:class:`attune.bandits.policies.LinearState`):
                       float64 little-endian ``sum(click * x)`` (d values), then the upper
                       triangle of ``sum(x x')`` row by row (d (d + 1) / 2 values): 8 (d + d (d +
                       1) / 2) bytes, 720 for d = 12
``features``           JSON array of the feature names the ``x:`` fields are over (set by the
                       first linear update; an update over other features is refused)
``batch:<writer>``     the last batch id the writer applied (only when it passes one)
=====================  ============================================================================

Arms are whatever the configuration names (a content variant, a message id); the prefix before
the first ``:`` says what a field is, so an arm may contain any character. Arms in Redis but no
longer configured are ignored when read; a configured arm without fields starts from zero.

Writes. :meth:`BanditStore.apply` adds a *delta* (the state that the pure update functions of
:mod:`attune.bandits.policies` build from an empty one: ``update_beta(BetaState.empty(arms),
...)`` or ``update_linear(LinearState.empty(arms, names), ...)``) in one Lua script whose only
key is the policy key (declared in ``KEYS``): counts by ``HINCRBY``, linear statistics by
element-wise addition of the packed doubles. Every check (feature layout, statistics length)
comes before the first write, so a refused update changes nothing. Additions commute, so
concurrent writers and any order of impressions and clicks give the same state (up to the last
bit of a float sum).

Redelivery. The additions are not idempotent: delivered twice, an update counts twice (a
replayed micro-batch doubles its impressions *and* its clicks, so the rate estimates stay about
right but the posterior is too sure of itself by that batch). A writer that names itself and
numbers its batches (the speed layer: its query's id and ``foreachBatch``'s ``batch_id``) is
skipped for a batch id at or below the last it applied to that key, which makes a replay of the
last micro-batch after a crash harmless. A new checkpoint restarts batch ids, so it must come
with a new writer name (Spark gives a new checkpoint a new query id).

Reads. A decision reads its policy's hash with one ``HGETALL`` (:meth:`BanditStore.read`), or
queues it on the request's pipeline with everything else the request reads
(:func:`queue_read`, then :func:`decode_beta_state` / :func:`decode_linear_state`): still one
round trip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from attune.bandits.policies import ArmCounts, BetaState, LinearState
from attune.keys import Keys
from attune.redis_connect import queue_script

if TYPE_CHECKING:
    from redis import Redis

# Adds one delta to a policy's hash. KEYS[1]: the policy key. ARGV[1]: JSON {"w": writer or "",
# "b": batch id (-1 without a writer), "f": the features' JSON or "" (no linear statistics),
# "arms": [[arm, impressions, clicks, 1 when a statistics blob follows else 0], ...]};
# ARGV[2..]: the blobs, in the order of the arms that have one. Returns 1 when applied, 0 when
# skipped as an already applied batch of the writer.
# Lua shared by the update script here and the feedback script of attune.bandits.feedback:
# the checks that come before a script's first write, and the addition of one statistics delta.
# A check returns an error reply (the script returns it) or nil.
LUA_STATISTICS = r"""
local function features_refused(key, f, cur_f)
  if f ~= '' and cur_f and cur_f ~= f then
    return redis.error_reply('bandit state ' .. key .. ' holds statistics over the features ' ..
      cur_f .. ', not ' .. f .. ': the feature layout changed; reset the policy ' ..
      '(attune.bandits.store.BanditStore.reset) or give it a new name')
  end
  return nil
end
local function statistics_refused(key, arm, delta)
  local old = redis.call('HGET', key, 'x:' .. arm)
  if old and #old ~= #delta then
    return redis.error_reply('bandit state ' .. key .. ': the statistics of arm ' .. arm ..
      ' have ' .. #old .. ' bytes, the update ' .. #delta .. '; reset the policy')
  end
  return nil
end
local function add_statistics(key, arm, delta)
  local old = redis.call('HGET', key, 'x:' .. arm)
  if old then
    local out = {}
    for p = 1, #delta, 8 do
      out[#out + 1] = struct.pack('<d', struct.unpack('<d', old, p) +
        struct.unpack('<d', delta, p))
    end
    redis.call('HSET', key, 'x:' .. arm, table.concat(out))
  else
    redis.call('HSET', key, 'x:' .. arm, delta)
  end
end
"""

UPDATE_SCRIPT = (
    LUA_STATISTICS
    + r"""
local key = KEYS[1]
local h = cjson.decode(ARGV[1])
if h.w ~= '' then
  local last = redis.call('HGET', key, 'batch:' .. h.w)
  if last and tonumber(last) >= h.b then return 0 end
end
-- every check before the first write: a refused update changes nothing
local cur_f = redis.call('HGET', key, 'features')
local err = features_refused(key, h.f, cur_f)
if err then return err end
local blobs, i = {}, 2
for n, a in ipairs(h.arms) do
  if a[4] == 1 then
    blobs[n] = ARGV[i]
    i = i + 1
    err = statistics_refused(key, a[1], blobs[n])
    if err then return err end
  end
end
if h.f ~= '' and not cur_f then redis.call('HSET', key, 'features', h.f) end
for n, a in ipairs(h.arms) do
  if a[2] ~= 0 then redis.call('HINCRBY', key, 'n:' .. a[1], a[2]) end
  if a[3] ~= 0 then redis.call('HINCRBY', key, 'c:' .. a[1], a[3]) end
  if blobs[n] then add_statistics(key, a[1], blobs[n]) end
end
if h.w ~= '' then redis.call('HSET', key, 'batch:' .. h.w, string.format('%d', h.b)) end
return 1
"""
)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def encode_statistics(xx: np.ndarray, xr: np.ndarray) -> bytes:
    """One arm's ``x:`` field: ``xr`` then the upper triangle of ``xx``, float64 LE."""
    iu = np.triu_indices(len(xr))
    return np.concatenate([xr, xx[iu]]).astype("<f8").tobytes()


def decode_statistics(blob: bytes, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xx, xr)`` from an ``x:`` field over ``dim`` features."""
    values = np.frombuffer(blob, dtype="<f8")
    if len(values) != dim + dim * (dim + 1) // 2:
        raise ValueError(
            f"bandit statistics of {len(values)} values do not fit {dim} features; the feature "
            "layout changed: reset the policy (BanditStore.reset) or give it a new name"
        )
    xr = values[:dim].astype(float)
    xx = np.zeros((dim, dim))
    xx[np.triu_indices(dim)] = values[dim:]
    xx = xx + np.triu(xx, 1).T
    return xx, xr


def decode_counts(raw: Mapping[Any, Any]) -> dict[str, ArmCounts]:
    """Every arm's counts in an ``HGETALL`` reply."""
    n: dict[str, int] = {}
    c: dict[str, int] = {}
    for k, v in raw.items():
        kind, _, arm = _s(k).partition(":")
        if kind == "n":
            n[arm] = int(v)
        elif kind == "c":
            c[arm] = int(v)
    return {a: ArmCounts(n.get(a, 0), c.get(a, 0)) for a in n.keys() | c.keys()}


def decode_history(raw: Mapping[Any, Any]) -> dict[tuple[int, str], ArmCounts]:
    """``(hour start in epoch ms, arm) -> counts`` from an ``HGETALL`` of
    :meth:`attune.keys.Keys.bandit_history` (fields ``<hour ms>:n:<arm>``, ``<hour ms>:c:<arm>``;
    other fields are skipped)."""
    n: dict[tuple[int, str], int] = {}
    c: dict[tuple[int, str], int] = {}
    for k, v in raw.items():
        hour, _, rest = _s(k).partition(":")
        kind, _, arm = rest.partition(":")
        if not hour.isdigit() or kind not in ("n", "c"):
            continue
        (n if kind == "n" else c)[(int(hour), arm)] = int(v)
    return {key: ArmCounts(n.get(key, 0), c.get(key, 0)) for key in sorted(n.keys() | c.keys())}


def decode_beta_state(raw: Mapping[Any, Any], arms: Sequence[str]) -> BetaState:
    """The counts of the configured ``arms`` from an ``HGETALL`` reply."""
    return BetaState.from_counts(arms, decode_counts(raw))


def decode_linear_state(
    raw: Mapping[Any, Any], arms: Sequence[str], names: Sequence[str]
) -> LinearState:
    """The linear state of the configured ``arms`` over the features ``names`` from an
    ``HGETALL`` reply; an error names the fix when the stored features are others."""
    fields = {_s(k): v for k, v in raw.items()}
    stored = fields.get("features")
    if stored is not None and list(orjson.loads(stored)) != list(names):
        raise ValueError(
            f"the bandit state holds statistics over the features {orjson.loads(stored)}, not "
            f"{list(names)}: the feature layout changed; reset the policy (BanditStore.reset) "
            "or give it a new name"
        )
    counts = decode_counts(raw)
    zero = ArmCounts()
    k, d = len(arms), len(names)
    xx = np.zeros((k, d, d))
    xr = np.zeros((k, d))
    for i, arm in enumerate(arms):
        blob = fields.get(f"x:{arm}")
        if blob is not None:
            xx[i], xr[i] = decode_statistics(blob, d)
    return LinearState(
        tuple(arms),
        tuple(names),
        tuple(counts.get(a, zero).impressions for a in arms),
        tuple(counts.get(a, zero).clicks for a in arms),
        xx,
        xr,
    )


def update_arguments(
    delta: BetaState | LinearState, writer: str | None = None, batch_id: int | None = None
) -> list[bytes]:
    """The update script's ``ARGV`` for a delta (arms with nothing to add are left out)."""
    if (writer is None) != (batch_id is None):
        raise ValueError("pass both writer and batch_id (replays skipped) or neither")
    linear = delta if isinstance(delta, LinearState) else None
    arms: list[list[Any]] = []
    blobs: list[bytes] = []
    for i, arm in enumerate(delta.arms):
        n, c = int(delta.impressions[i]), int(delta.clicks[i])
        blob = None
        if linear is not None and (np.any(linear.xx[i]) or np.any(linear.xr[i])):
            blob = encode_statistics(linear.xx[i], linear.xr[i])
        if n == 0 and c == 0 and blob is None:
            continue
        arms.append([arm, n, c, 0 if blob is None else 1])
        if blob is not None:
            blobs.append(blob)
    header = {
        "w": writer or "",
        "b": -1 if batch_id is None else int(batch_id),
        "f": "" if linear is None else orjson.dumps(list(linear.names)).decode(),
        "arms": arms,
    }
    return [orjson.dumps(header), *blobs]


def queue_read(pipe: Any, keys: Keys, policy: str) -> None:
    """Queue the read of ``policy``'s state on a (sync or asyncio) pipeline: one ``HGETALL``,
    its reply decoded by :func:`decode_beta_state` or :func:`decode_linear_state`."""
    pipe.hgetall(keys.bandit(policy))


class BanditStore:
    """Reads and atomically updates bandit state (sync client; the module docstring)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._update = redis.register_script(UPDATE_SCRIPT)

    def apply(
        self,
        policy: str,
        delta: BetaState | LinearState,
        *,
        writer: str | None = None,
        batch_id: int | None = None,
    ) -> bool:
        """Add ``delta`` to ``policy``'s state; False when skipped as a replayed batch."""
        args = update_arguments(delta, writer, batch_id)
        return bool(self._update(keys=[self.keys.bandit(policy)], args=args))

    def apply_all(
        self,
        deltas: Mapping[str, BetaState | LinearState],
        *,
        writer: str | None = None,
        batch_id: int | None = None,
    ) -> dict[str, bool]:
        """Apply one delta per policy in one pipelined round trip (a micro-batch's updates);
        each policy's update is atomic on its own."""
        pipe = self.redis.pipeline(transaction=False)
        for policy, delta in deltas.items():
            args = update_arguments(delta, writer, batch_id)
            queue_script(pipe, self._update, [self.keys.bandit(policy)], args)
        return {p: bool(r) for p, r in zip(deltas, pipe.execute(), strict=True)}

    def read(self, policy: str) -> dict[Any, Any]:
        """``policy``'s raw hash (one round trip)."""
        return dict(self.redis.hgetall(self.keys.bandit(policy)))

    def read_beta(self, policy: str, arms: Sequence[str]) -> BetaState:
        return decode_beta_state(self.read(policy), arms)

    def read_linear(self, policy: str, arms: Sequence[str], names: Sequence[str]) -> LinearState:
        return decode_linear_state(self.read(policy), arms, names)

    def reset(self, policy: str) -> bool:
        """Forget everything ``policy`` learned (e.g. after its feature layout changed)."""
        return bool(self.redis.delete(self.keys.bandit(policy)))

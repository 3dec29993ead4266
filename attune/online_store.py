"""The Redis online store: its key scheme, its idempotent writes and its one-round-trip reads.

The speed layer writes through :class:`OnlineStoreWriter`, the personalization API and the models
read through :func:`read_user_features`, and ``docs/online_store.md`` documents the scheme for
people. Key names come from :mod:`attune.keys` (the one key schema), the Lua scripts included:
they receive the keys and key templates they touch in their parameters.

The store keeps, per user (``P:u:{u}:...``, ``{u}`` the pseudonymized user id, or the
pseudonymized anonymous id for visitors who are not logged in): ``recent`` (zset item -> event
time ms), ``recent_meta`` (hash item -> ``{"type", "t", "i"}``), ``aff`` (hash
``<bucket>:<genre>`` -> integer units), ``counters`` (hash type -> count, ``events``,
``first_t``, ``last_t``), ``session`` (hash), ``dismissed`` (zset item -> time of its latest
dismissal), ``neg`` (hash ``imp:<genre>`` / ``eng:<genre>`` -> count), ``undo`` (zset item ->
time of its latest undo; the personalization API writes it too), and the bookkeeping
``applied`` (zset interaction id -> time) and ``meta`` (hash); per item: ``stats`` (hash type
-> engagements) and ``meta`` (catalog mirror: title, year, genres); the aggregates (``P:{agg}:``):
``popular`` (zset), one zset per trending slice, ``trending`` per window (the window as of the
latest event), ``meta`` (hash) and today's experiment counts per variant
(:mod:`attune.experiments.live`). The full table is in :mod:`attune.keys` and
``docs/online_store.md``.

Idempotency. Every write is an *interaction* (one item of one event, or the event itself when
it has no items) with an id ``<event_id>#<position>``. The write script adds that id to the
user's ``applied`` set with ``ZADD NX`` and changes nothing else when it was already there, all
inside one Lua script per user, so Redis applies the marker and the feature updates atomically:
a replayed micro-batch, a client retry that slipped past Spark's deduplication, or a crash
between two users' updates all leave the store exactly as one clean pass would. The set keeps a
user's newest ``dedup_per_user`` ids; anything at or below the newest id it forgot (the
``floor``) is treated as seen, so a replay can never count an old event twice (a brand-new
event that old, later than ``dedup_per_user`` newer ones, is left to the nightly batch).

Redis Cluster. A Lua script may only touch keys of one hash slot, and must declare them. So an
interaction is written in three steps (:meth:`OnlineStoreWriter.apply`), each safe to repeat:

1. the writer reads the items' genres from their catalog meta keys (other slots) and hands them
   to the write script;
2. the write script, on the user's keys only (``{u}``), applies the new interactions as above
   and leaves what they add to the aggregates in the user's ``outbox`` (hash: interaction id ->
   entry), atomically with the ``applied`` marker; it answers with the whole outbox;
3. the aggregate script, on keys that all carry the ``{agg}`` hash tag and are all declared,
   counts the entries whose ids it has not seen within ``aggregate_dedup_window`` (set
   ``P:{agg}:seen``, by arrival time), then the writer removes them from the outboxes.

A failure after step 2 leaves the entries in the outboxes; the retry's step 2 finds its
interactions already applied but still answers with the outbox, so step 3 counts them then. A
failure between step 3 and the removal sends entries again, and the seen set skips them. So the
aggregates stay exactly-once per interaction as long as a failed writer is retried within the
window (10 minutes by default; Spark retries a failed micro-batch at once). The aggregates
share one slot, written once per pipeline of 500 users, not once per event.

Exactness. Decayed affinities are stored as integers so that they add up the same in any
order: an interaction of weight ``w`` at time ``t`` adds
``round(w * SCALE * 2 ** ((t - b * span) / half_life))`` to field ``<b>:<genre>``, where
``span = BUCKET_HALF_LIVES * half_life`` and ``b = t // span``. The affinity as of time ``T`` is
``sum(units * 2 ** ((b * span - T) / half_life)) / SCALE`` over a user's buckets, i.e. the sum of
``w * 2 ** (-(T - t) / half_life)`` over their interactions. Buckets more than one behind the
newest are deleted (their interactions are >= 16 half-lives old: < 0.002 % of their weight).
Everything else (recency, dismissals, undos) is a max over event times, and counters are
integers, so the stored state depends only on *which* interactions were applied, never on the
order. ``dismissed`` and ``undo`` each keep the newest ``dismissed_items`` maxima (a top-n of
maxima does not depend on the order either); a dismissal is in force while it is later than
the item's latest undo, which the reader applies (:func:`decode_user_features`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from attune.experiments.live import DEFAULT_PATTERN, LIVE_TTL_S, live_fields
from attune.keys import Keys, KeyTemplate
from attune.redis_connect import is_cluster, queue_script

if TYPE_CHECKING:
    from redis import Redis

    from attune.config import AttuneConfig

log = logging.getLogger(__name__)

BUCKET_HALF_LIVES = 16
"""Width of an affinity bucket, in half-lives."""
SCALE = 2**20
"""Fixed-point scale of affinity units (one interaction of weight 1 at a bucket start)."""


@dataclass(frozen=True)
class OnlineStore:
    """Everything needed to write and read the online store: its key names (:attr:`keys`,
    from the prefix) and the feature parameters."""

    prefix: str = "att"
    half_life_ms: int = 7 * 24 * 3600 * 1000
    recent_items: int = 50
    dismissed_items: int = 100
    dedup_per_user: int = 2000
    user_ttl_s: int = 90 * 24 * 3600
    session_gap_ms: int = 30 * 60 * 1000
    ignore_min_impressions: int = 5
    trending_windows_s: tuple[int, ...] = (3600, 86400)
    trending_slices: int = 12
    recommendation_id_pattern: str = DEFAULT_PATTERN
    """Names the experiment and variant of a recommendation id, for today's live experiment
    counts (:mod:`attune.experiments.live`; ``batch.recommendation_id_pattern``)."""
    live_ttl_s: int = LIVE_TTL_S
    aggregate_dedup_ms: int = 10 * 60 * 1000
    """How long the aggregate script remembers the interaction ids it counted (by arrival
    time): longer than a writer can take between counting an outbox and emptying it."""
    keys: Keys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", Keys(self.prefix))

    @classmethod
    def from_config(cls, cfg: AttuneConfig) -> OnlineStore:
        f = cfg.speed.features
        s = cfg.speed.online_store
        return cls(
            prefix=s.key_prefix,
            half_life_ms=_ms(f.affinity_half_life),
            recent_items=f.recent_items,
            dismissed_items=f.dismissed_items,
            dedup_per_user=s.dedup_per_user,
            aggregate_dedup_ms=_ms(s.aggregate_dedup_window),
            user_ttl_s=max(1, int(s.user_ttl.total_seconds())),
            session_gap_ms=_ms(f.session_gap),
            ignore_min_impressions=f.ignore_min_impressions,
            trending_windows_s=tuple(int(w.total_seconds()) for w in f.trending_windows),
            trending_slices=f.trending_slices,
            recommendation_id_pattern=cfg.batch.recommendation_id_pattern,
        )

    @property
    def bucket_span_ms(self) -> int:
        return BUCKET_HALF_LIVES * self.half_life_ms

    def slice_ms(self, window_s: int) -> int:
        return window_s * 1000 // self.trending_slices

    def script_params(self) -> bytes:
        """The constant parameters of the write and aggregate scripts, as their ``ARGV[1]``:
        ``k`` holds the templates (:class:`attune.keys.KeyTemplate` parts) of the aggregate
        keys the aggregate script builds (and checks against the keys it was given)."""
        k = self.keys
        return orjson.dumps(
            {
                "k": {
                    "item_stats": KeyTemplate.of(k.item_stats).parts,
                    "trend_slice": KeyTemplate.of(k.trend_slice, 2).parts,
                    "exp_live": KeyTemplate.of(k.experiment_live).parts,
                    "exp_live_users": KeyTemplate.of(k.experiment_live_users, 3).parts,
                },
                "recent_n": self.recent_items,
                "dismissed_n": self.dismissed_items,
                "dedup_n": self.dedup_per_user,
                "ttl": self.user_ttl_s,
                "gap": self.session_gap_ms,
                "trend_ttl": {str(w): 2 * w for w in self.trending_windows_s},
                "live_ttl": self.live_ttl_s,
                "seen_ms": self.aggregate_dedup_ms,
            }
        )

    def trending_keys(self, max_t: int) -> list[str]:
        """The trending script's ``KEYS`` as of the latest event time ``max_t``: the meta hash,
        then per window its destination and its slices (oldest first)."""
        k = self.keys
        out = [k.meta]
        for w in self.trending_windows_s:
            last = max_t // self.slice_ms(w)
            out.append(k.trending(w))
            out += [k.trend_slice(w, s) for s in range(last - self.trending_slices + 1, last + 1)]
        return out


def _ms(td: Any) -> int:
    return round(td.total_seconds() * 1000)


# ----------------------------------------------------------------------------------------
# Writing

# One call applies one user's interactions of one micro-batch, in (event time, id) order, and
# touches that user's keys only (one hash slot). KEYS: the user's keys
# (attune.keys.ONLINE_USER_KEYS order). ARGV[1]: OnlineStore.script_params(). ARGV[2]: JSON array
# of interactions, each {"i": interaction id, "t": event time ms, "y": type, "x": 1 when the row
# carries the event-level updates, "s": session id?, "it": item id?, "ca": category?, "b":
# affinity bucket, "a": affinity units (string), "r"/"n"/"m"/"d": recent / engagement /
# impression / negative flags, "u": undo flag (takes back the item's dismissals up to "t"),
# "tr": trending slices "<window_s>:<slice>", "c": 1 when the event withdraws personalization
# consent, "xd"/"xe"/"xv"/"xk": day, experiment, variant and count name of today's live
# experiment counts (attune.experiments.live.live_fields)}. ARGV[3]: JSON object item id ->
# the item's catalog genres (read by the writer from the items' meta keys, which live in other
# slots). An applied interaction that adds to the aggregates (an engagement, a live count)
# leaves that part in the user's outbox (field: its id). Returns {applied, duplicates,
# too_late, max_t, outbox} where outbox is every entry waiting there, this call's and any a
# failed earlier call left (HGETALL's flat list).
APPLY_SCRIPT = r"""
local P = cjson.decode(ARGV[1])
local rows = cjson.decode(ARGV[2])
local catalog = cjson.decode(ARGV[3])
local K_RECENT, K_RMETA, K_AFF, K_CNT, K_SES, K_DIS, K_NEG, K_UNDO, K_APP, K_META, K_OUT =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10],
  KEYS[11]
local function num(x) if x == false or x == nil then return nil end return tonumber(x) end
local function fmt(x) return string.format('%d', x) end

local m = redis.call('HMGET', K_META, 'floor_t', 'floor_i', 'revoked_t', 'aff_max_b')
local floor_t, floor_i, revoked_t, maxb = num(m[1]), m[2], num(m[3]), num(m[4])
local applied, dups, late, max_t = 0, 0, 0, nil

local function bucket_of(field) return tonumber(string.match(field, '^(-?%d+):')) end

local function drop_old_buckets()
  local fields = redis.call('HKEYS', K_AFF)
  for _, f in ipairs(fields) do
    local b = bucket_of(f)
    if b == nil or b < maxb - 1 then redis.call('HDEL', K_AFF, f) end
  end
end

local function update_session(r)
  local t = r.t
  local s = redis.call('HMGET', K_SES, 'id', 'start_t', 'last_t', 'last_i')
  local sid, start_t, last_t, last_i = s[1], num(s[2]), num(s[3]), s[4]
  local new_id = nil
  if not sid then
    new_id = r.s or ('t' .. fmt(t))
  elseif r.s then
    if r.s == sid then new_id = false
    elseif t >= last_t then new_id = r.s
    else return end
  else
    if t > last_t + P.gap then new_id = 't' .. fmt(t)
    elseif t >= start_t - P.gap then new_id = false
    else return end
  end
  if new_id then
    redis.call('DEL', K_SES)
    redis.call('HSET', K_SES, 'id', new_id, 'start_t', fmt(t), 'last_t', fmt(t), 'last_i', r.i,
      'events', 1, 'n:' .. r.y, 1, 'last_type', r.y)
    if r.it then redis.call('HSET', K_SES, 'last_item', r.it) end
    return
  end
  redis.call('HINCRBY', K_SES, 'events', 1)
  redis.call('HINCRBY', K_SES, 'n:' .. r.y, 1)
  if t < start_t then redis.call('HSET', K_SES, 'start_t', fmt(t)) end
  -- the latest event (ties: the highest interaction id) names the last item and type
  if t > last_t or (t == last_t and r.i > (last_i or '')) then
    redis.call('HSET', K_SES, 'last_t', fmt(t), 'last_i', r.i, 'last_type', r.y)
    if r.it then redis.call('HSET', K_SES, 'last_item', r.it)
    else redis.call('HDEL', K_SES, 'last_item') end
  end
end

local function forget_user(t)
  redis.call('DEL', K_RECENT, K_RMETA, K_AFF, K_CNT, K_SES, K_DIS, K_NEG)
  if revoked_t == nil or t > revoked_t then revoked_t = t end
  redis.call('HSET', K_META, 'revoked_t', fmt(revoked_t))
  -- undos up to the withdrawal have nothing left to undo (earlier events stay out)
  redis.call('ZREMRANGEBYSCORE', K_UNDO, '-inf', fmt(revoked_t))
  redis.call('HDEL', K_META, 'aff_max_b')
  maxb = nil
end

-- An item's genres: the catalog's (ARGV[3], from the item's meta key), else the event's
-- category; the same rule as attune.features.with_genres.
local function genres_of(r)
  local g = catalog[r.it]
  if g == nil or #g == 0 then
    if r.ca then return {r.ca} end
    return {}
  end
  return g
end

-- what an applied interaction adds to the aggregates, kept until the aggregate script counts it
local function to_outbox(r)
  local e = {t = r.t}
  if r.n == 1 then e.it, e.y, e.tr = r.it, r.y, r.tr end
  if r.xk then e.xd, e.xe, e.xv, e.xk = r.xd, r.xe, r.xv, r.xk end
  redis.call('HSET', K_OUT, r.i, cjson.encode(e))
end

local function apply(r)
  local t = r.t
  if r.xk or (r.n == 1 and r.it) then to_outbox(r) end
  if r.c == 1 then forget_user(t) return end
  if r.x == 1 then
    redis.call('HINCRBY', K_CNT, r.y, 1)
    redis.call('HINCRBY', K_CNT, 'events', 1)
    local c = redis.call('HMGET', K_CNT, 'first_t', 'last_t')
    if not c[1] or t < tonumber(c[1]) then redis.call('HSET', K_CNT, 'first_t', fmt(t)) end
    if not c[2] or t > tonumber(c[2]) then redis.call('HSET', K_CNT, 'last_t', fmt(t)) end
    update_session(r)
  end
  local item = r.it
  if not item then return end
  local genres = genres_of(r)
  if r.r == 1 then
    local cur = num(redis.call('ZSCORE', K_RECENT, item))
    local newer = (cur == nil) or (t > cur)
    if (not newer) and t == cur then
      local old = redis.call('HGET', K_RMETA, item)
      newer = (not old) or (r.i > cjson.decode(old).i)
    end
    if newer then
      redis.call('ZADD', K_RECENT, t, item)
      redis.call('HSET', K_RMETA, item, cjson.encode({type = r.y, t = t, i = r.i}))
    end
  end
  if r.a and r.a ~= '0' and #genres > 0 then
    local b = r.b
    if maxb == nil or b > maxb then maxb = b drop_old_buckets() end
    if b >= maxb - 1 then
      for _, g in ipairs(genres) do redis.call('HINCRBY', K_AFF, fmt(b) .. ':' .. g, r.a) end
    end
  end
  if r.m == 1 then
    for _, g in ipairs(genres) do redis.call('HINCRBY', K_NEG, 'imp:' .. g, 1) end
  end
  if r.n == 1 then
    for _, g in ipairs(genres) do redis.call('HINCRBY', K_NEG, 'eng:' .. g, 1) end
  end
  if r.d == 1 then
    local cur = num(redis.call('ZSCORE', K_DIS, item))
    if cur == nil or t > cur then redis.call('ZADD', K_DIS, t, item) end
  end
  -- the reader keeps a dismissal only while it is later than the item's latest undo
  if r.u == 1 then
    local cur = num(redis.call('ZSCORE', K_UNDO, item))
    if cur == nil or t > cur then redis.call('ZADD', K_UNDO, t, item) end
  end
end

for _, r in ipairs(rows) do
  local t = r.t
  if revoked_t ~= nil and t <= revoked_t then
    late = late + 1
  elseif floor_t ~= nil and (t < floor_t or (t == floor_t and r.i <= floor_i)) then
    late = late + 1
  elseif redis.call('ZADD', K_APP, 'NX', t, r.i) == 0 then
    dups = dups + 1
  else
    applied = applied + 1
    apply(r)
    if max_t == nil or t > max_t then max_t = t end
  end
end

if applied > 0 then
  local n = redis.call('ZCARD', K_RECENT)
  if n > P.recent_n then
    local old = redis.call('ZRANGE', K_RECENT, 0, n - P.recent_n - 1)
    redis.call('ZREMRANGEBYRANK', K_RECENT, 0, n - P.recent_n - 1)
    for i = 1, #old, 500 do
      redis.call('HDEL', K_RMETA, unpack(old, i, math.min(i + 499, #old)))
    end
  end
  n = redis.call('ZCARD', K_DIS)
  if n > P.dismissed_n then redis.call('ZREMRANGEBYRANK', K_DIS, 0, n - P.dismissed_n - 1) end
  n = redis.call('ZCARD', K_UNDO)
  if n > P.dismissed_n then redis.call('ZREMRANGEBYRANK', K_UNDO, 0, n - P.dismissed_n - 1) end
  n = redis.call('ZCARD', K_APP)
  if n > P.dedup_n then
    local cut = redis.call('ZRANGE', K_APP, n - P.dedup_n - 1, n - P.dedup_n - 1, 'WITHSCORES')
    redis.call('HSET', K_META, 'floor_t', cut[2], 'floor_i', cut[1])
    redis.call('ZREMRANGEBYRANK', K_APP, 0, n - P.dedup_n - 1)
  end
  if maxb ~= nil then redis.call('HSET', K_META, 'aff_max_b', fmt(maxb)) end
  for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], P.ttl) end
end
local outbox = redis.call('HGETALL', K_OUT)
if max_t == nil then return {applied, dups, late, false, outbox} end
return {applied, dups, late, fmt(max_t), outbox}
"""

# Adds interactions' outbox entries to the aggregates: popular, item stats, trending slices,
# today's live experiment counts; and raises the latest event time. KEYS[1]: the seen set
# (interaction id -> arrival ms), KEYS[2]: the aggregates' meta hash, KEYS[3]: popular, KEYS[4..]:
# every other key the entries touch (OnlineStoreWriter._agg_keys; all in the {agg} slot, and
# the script refuses to touch one it was not given). ARGV[1]: OnlineStore.script_params(),
# ARGV[2]: JSON array of {"i": id, "u": user, "e": outbox entry (JSON text)}, ARGV[3]: the
# calls' latest event time ms, or ''. An id seen within P.seen_ms is skipped: a writer that
# failed after this call but before it emptied the outboxes sends the same entries again.
# Returns {counted, already_counted}.
AGG_SCRIPT = r"""
local P = cjson.decode(ARGV[1])
local K = P.k
local entries = cjson.decode(ARGV[2])
local K_SEEN, K_GMETA, K_POP = KEYS[1], KEYS[2], KEYS[3]
local declared = {}
for i = 1, #KEYS do declared[KEYS[i]] = true end
local function key(t, a, b, c)
  local k
  if b == nil then k = t[1] .. a .. t[2]
  elseif c == nil then k = t[1] .. a .. t[2] .. b .. t[3]
  else k = t[1] .. a .. t[2] .. b .. t[3] .. c .. t[4] end
  if not declared[k] then error('undeclared key ' .. k) end
  return k
end
-- every key is built and checked before the first write
local plans = {}
for n, x in ipairs(entries) do
  local r = cjson.decode(x.e)
  local plan = {i = x.i, u = x.u, r = r, slices = {}}
  if r.it then
    plan.stats = key(K.item_stats, r.it)
    for _, s in ipairs(r.tr or {}) do
      local window, slice = string.match(s, '^(%d+):(.*)$')
      plan.slices[#plan.slices + 1] = {key(K.trend_slice, window, slice), P.trend_ttl[window]}
    end
  end
  if r.xk then
    plan.live = key(K.exp_live, r.xd)
    if r.xk == 'impressions' then plan.live_users = key(K.exp_live_users, r.xd, r.xe, r.xv) end
  end
  plans[n] = plan
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local expiring = {}
local function expire_once(k, ttl)
  if not expiring[k] then redis.call('EXPIRE', k, ttl) expiring[k] = true end
end
local counted, again = 0, 0
for _, plan in ipairs(plans) do
  local r = plan.r
  if redis.call('ZADD', K_SEEN, 'NX', now_ms, plan.i) == 0 then
    again = again + 1
  else
    counted = counted + 1
    if plan.stats then
      redis.call('ZINCRBY', K_POP, 1, r.it)
      redis.call('HINCRBY', plan.stats, r.y, 1)
      for _, s in ipairs(plan.slices) do
        redis.call('ZINCRBY', s[1], 1, r.it)
        expire_once(s[1], s[2])
      end
    end
    if plan.live then
      redis.call('HINCRBY', plan.live, r.xe .. '|' .. r.xv .. '|' .. r.xk, 1)
      expire_once(plan.live, P.live_ttl)
      if plan.live_users then
        redis.call('PFADD', plan.live_users, plan.u)
        expire_once(plan.live_users, P.live_ttl)
      end
    end
  end
end
redis.call('ZREMRANGEBYSCORE', K_SEEN, '-inf', '(' .. string.format('%d', now_ms - P.seen_ms))
if ARGV[3] ~= '' then
  local max_t = tonumber(ARGV[3])
  local gm = tonumber(redis.call('HGET', K_GMETA, 'max_t') or '')
  if gm == nil or max_t > gm then redis.call('HSET', K_GMETA, 'max_t', ARGV[3]) end
end
return {counted, again}
"""

# Recomputes every trending window as of the latest event time: the sum of the window's
# slices. KEYS[1]: the aggregates' meta hash; then per window its destination and its slices'
# keys, as of ARGV[3] (OnlineStoreWriter.refresh_trending computes them). ARGV[1]: slices per
# window, ARGV[2]: JSON array of window lengths in seconds, ARGV[3]: the latest event time the
# keys were computed for. When the stored time moved on meanwhile (another writer), nothing is
# written and the stored time is returned, for the caller to try again; else returns 'ok'.
# Deterministic given the slices, so running it again changes nothing.
TRENDING_SCRIPT = r"""
local slices = tonumber(ARGV[1])
local windows = cjson.decode(ARGV[2])
local stored = redis.call('HGET', KEYS[1], 'max_t')
if not stored then return 'ok' end
if stored ~= ARGV[3] then return stored end
local n = 2
for _, w in ipairs(windows) do
  local dest = KEYS[n]
  redis.call('ZUNIONSTORE', dest, slices, unpack(KEYS, n + 1, n + slices))
  redis.call('EXPIRE', dest, 2 * w)
  redis.call('HSET', KEYS[1], 'trending:' .. string.format('%d', w) .. ':as_of', stored)
  n = n + slices + 1
end
return 'ok'
"""


@dataclass
class ApplyStats:
    """What one :func:`apply_updates` call did."""

    users: int = 0
    applied: int = 0
    duplicates: int = 0
    too_late: int = 0
    max_event_ms: int | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Wall time per step (``genres``, ``users``, ``count``, ``clear``), ms."""

    def add(self, other: ApplyStats) -> None:
        self.users += other.users
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.too_late += other.too_late
        add_timings(self.timings_ms, other.timings_ms)
        if other.max_event_ms is not None and (
            self.max_event_ms is None or other.max_event_ms > self.max_event_ms
        ):
            self.max_event_ms = other.max_event_ms


def live_payload(payload: str, pattern: str) -> str:
    """A row's JSON with its recommendation id (``rc``) replaced by the fields the write script
    counts (:func:`attune.experiments.live.live_fields`; none when it counts nothing)."""
    row = orjson.loads(payload)
    rec = row.pop("rc", None)
    fields = live_fields(rec, str(row.get("y", "")), int(row.get("t", 0)), pattern)
    if fields:
        row.update(fields)
    return orjson.dumps(row).decode()


def add_elapsed_ms(timings: dict[str, float], step: str, start: float) -> None:
    """Add the ms since ``start`` (``time.perf_counter()``) to ``timings[step]``."""
    timings[step] = timings.get(step, 0.0) + (time.perf_counter() - start) * 1000


def add_timings(into: dict[str, float], other: Mapping[str, float]) -> None:
    """Add each step's ms of ``other`` to ``into``."""
    for step, ms in other.items():
        into[step] = into.get(step, 0.0) + ms


class OnlineStoreWriter:
    """Applies interaction rows to Redis: one write-script call per user, then one aggregate
    call per pipeline of users (see the module docstring, "Redis Cluster")."""

    def __init__(self, redis: Redis, store: OnlineStore, users_per_pipeline: int = 500) -> None:
        self.redis = redis
        self.store = store
        self._apply = redis.register_script(APPLY_SCRIPT)
        self._aggregate = redis.register_script(AGG_SCRIPT)
        self._trending = redis.register_script(TRENDING_SCRIPT)
        self._params = store.script_params()
        self._users_per_pipeline = users_per_pipeline

    def apply(self, rows: Iterable[tuple[str, int, str, str]]) -> ApplyStats:
        """Apply ``(user, event time ms, interaction id, row JSON)`` tuples.

        Rows of one user are applied in (event time, interaction id) order, in one script
        call; users are sent in pipelines of ``users_per_pipeline`` calls. A row carrying a
        recommendation id (``rc``, see :func:`attune.features.online_rows`) gets what the
        script counts for today's live experiment counts instead (:func:`live_payload`).

        Three steps per pipeline, each safe to repeat: (1) the items' genres are read from
        their meta keys; (2) each user's write script applies the new interactions and answers
        with the user's outbox; (3) the aggregate script counts the outbox entries it has not
        counted yet, and the entries are removed from the outboxes. A failure between (2) and
        (3) leaves the entries in the outboxes, and the retry's step (2) returns them again.
        """
        by_user: dict[str, list[tuple[int, str, str]]] = {}
        items: dict[str, set[str]] = {}
        pattern = self.store.recommendation_id_pattern
        for user, t, iid, payload in rows:
            if '"rc":' in payload:
                payload = live_payload(payload, pattern)
            by_user.setdefault(user, []).append((t, iid, payload))
            if '"it":' in payload:
                items.setdefault(user, set()).add(str(orjson.loads(payload)["it"]))
        stats = ApplyStats()
        users = list(by_user)
        for start in range(0, len(users), self._users_per_pipeline):
            chunk = users[start : start + self._users_per_pipeline]
            began = time.perf_counter()
            genres = self._genres({i for u in chunk for i in items.get(u, ())})
            add_elapsed_ms(stats.timings_ms, "genres", began)
            began = time.perf_counter()
            pipe = self.redis.pipeline(transaction=False)
            for user in chunk:
                batch = sorted(by_user[user])
                body = b"[" + b",".join(p.encode() for _, _, p in batch) + b"]"
                catalog = (
                    b"{"
                    + b",".join(
                        orjson.dumps(i) + b":" + genres[i]
                        for i in items.get(user, ())
                        if i in genres
                    )
                    + b"}"
                )
                keys = self.store.keys.online_user_keys(user)
                queue_script(pipe, self._apply, keys, [self._params, body, catalog])
            outboxes: dict[str, list[bytes]] = {}
            entries: list[dict[str, str]] = []
            for user, (applied, dups, late, max_t, outbox) in zip(
                chunk, pipe.execute(), strict=True
            ):
                stats.add(
                    ApplyStats(
                        users=1,
                        applied=int(applied),
                        duplicates=int(dups),
                        too_late=int(late),
                        max_event_ms=int(max_t) if max_t else None,
                    )
                )
                for n in range(0, len(outbox), 2):
                    outboxes.setdefault(user, []).append(outbox[n])
                    entries.append({"i": _s(outbox[n]), "u": user, "e": _s(outbox[n + 1])})
            add_elapsed_ms(stats.timings_ms, "users", began)
            began = time.perf_counter()
            if entries or stats.max_event_ms is not None:
                self._count(entries, stats.max_event_ms)
            add_elapsed_ms(stats.timings_ms, "count", began)
            began = time.perf_counter()
            if outboxes:
                self._clear(outboxes)
            add_elapsed_ms(stats.timings_ms, "clear", began)
        return stats

    def _clear(self, outboxes: Mapping[str, list[bytes]]) -> None:
        """Remove counted entries from the users' outboxes (entries a later write added stay)."""
        pipe = self.redis.pipeline(transaction=False)
        for user, fields in outboxes.items():
            pipe.hdel(self.store.keys.user_key(user, "outbox"), *fields)
        pipe.execute()

    def _genres(self, items: set[str]) -> dict[str, bytes]:
        """The catalog genres (JSON text) of ``items`` that have them, from their meta keys:
        read here, not in the write script, because they live in other hash slots."""
        if not items:
            return {}
        ordered = sorted(items)
        pipe = self.redis.pipeline(transaction=False)
        for item in ordered:
            pipe.hget(self.store.keys.item_meta(item), "genres")
        return {i: g for i, g in zip(ordered, pipe.execute(), strict=True) if g}

    def _count(self, entries: list[dict[str, str]], max_t: int | None) -> None:
        """Run the aggregate script on outbox entries, declaring every key it will touch."""
        k = self.store.keys
        touched: dict[str, None] = {}
        for x in entries:
            e = orjson.loads(x["e"])
            if "it" in e:
                touched[k.item_stats(e["it"])] = None
                for s in e.get("tr") or ():
                    window, _, index = s.partition(":")
                    touched[k.trend_slice(window, index)] = None
            if "xk" in e:
                touched[k.experiment_live(e["xd"])] = None
                if e["xk"] == "impressions":
                    touched[k.experiment_live_users(e["xd"], e["xe"], e["xv"])] = None
        self._aggregate(
            keys=[k.agg_seen, k.meta, k.popular, *touched],
            args=[self._params, orjson.dumps(entries), "" if max_t is None else str(max_t)],
        )

    def refresh_trending(self) -> None:
        """Recompute every trending window as of the latest event time (tried again if another
        writer moves the latest time on between reading it and the script's run)."""
        for _ in range(5):
            raw = self.redis.hget(self.store.keys.meta, "max_t")
            if raw is None:
                return
            max_t = int(raw)
            answer = self._trending(
                keys=self.store.trending_keys(max_t),
                args=[
                    self.store.trending_slices,
                    orjson.dumps(list(self.store.trending_windows_s)),
                    str(max_t),
                ],
            )
            if _s(answer) == "ok":
                return
        log.warning("trending not refreshed: the latest event time kept moving; next batch will")

    def write_item_metadata(self, items: Mapping[str, Mapping[str, Any] | None]) -> None:
        """Mirror catalog records (``None`` deletes) into the items' meta keys."""
        pipe = self.redis.pipeline(transaction=False)
        for n, (item_id, record) in enumerate(items.items(), start=1):
            key = self.store.keys.item_meta(item_id)
            pipe.delete(key)
            if record is not None:
                genres = list(dict.fromkeys(g for g in record.get("genres") or [] if g))
                mapping: dict[str | bytes, bytes | float | int | str] = {
                    "title": str(record.get("title") or ""),
                    "genres": orjson.dumps(genres).decode(),
                }
                if record.get("year") is not None:
                    mapping["year"] = str(record["year"])
                pipe.hset(key, mapping=mapping)
            if n % 1000 == 0:
                pipe.execute()
        pipe.execute()


# ----------------------------------------------------------------------------------------
# Keys of earlier versions

# KEYS[1]: an aggregate key of an earlier version, KEYS[2]: its new name; ARGV[1]: its kind.
# Adds the old key into the new one (what a writer of this version counted meanwhile stays),
# keeps the old key's time to live, deletes the old key. Returns 1 when it moved one, else 0.
MIGRATE_AGGREGATE_SCRIPT = r"""
local old, new, kind = KEYS[1], KEYS[2], ARGV[1]
if redis.call('EXISTS', old) == 0 then return 0 end
local ttl = redis.call('PTTL', old)
if kind == 'zsum' then
  redis.call('ZUNIONSTORE', new, 2, new, old)
elseif kind == 'hsum' then
  local h = redis.call('HGETALL', old)
  for i = 1, #h, 2 do redis.call('HINCRBY', new, h[i], h[i + 1]) end
elseif kind == 'hll' then
  redis.call('PFMERGE', new, new, old)
elseif kind == 'meta' then
  local a = tonumber(redis.call('HGET', old, 'max_t') or '')
  local b = tonumber(redis.call('HGET', new, 'max_t') or '')
  if a ~= nil and (b == nil or a > b) then
    redis.call('HSET', new, 'max_t', string.format('%d', a))
  end
elseif kind == 'derived' then
  if redis.call('EXISTS', new) == 0 then redis.call('RENAME', old, new) return 1 end
end
if ttl > 0 then redis.call('PEXPIRE', new, ttl) end
redis.call('DEL', old)
return 1
"""


def legacy_aggregate_keys(key: str, keys: Keys) -> tuple[str, str] | None:
    """The new name and the migration kind of ``key`` when it is an aggregate key of the
    versions before the ``{agg}`` hash tag (``P:popular``, ``P:meta``, ``P:trend:<w>:<n>``,
    ``P:trending:<w>``, ``P:i:{item}:stats``, ``P:exp:live:<d>[:users:<e>|<v>]``) or the
    experiments' state and history before ``{exp}`` (``P:exp:state``, ``P:exp:history``), else
    None. A "derived" key is renamed only when its new name does not exist yet."""
    p = keys.prefix + ":"
    if not key.startswith(p):
        return None
    rest = key[len(p) :]
    if rest == "popular":
        return keys.popular, "zsum"
    if rest == "meta":
        return keys.meta, "meta"
    if rest == "exp:state":
        return keys.experiments_state, "derived"
    if rest == "exp:history":
        return keys.experiments_history, "derived"
    parts = rest.split(":")
    if len(parts) == 3 and parts[0] == "trend" and parts[1].isdigit():
        return keys.trend_slice(parts[1], parts[2]), "zsum"
    if len(parts) == 2 and parts[0] == "trending" and parts[1].isdigit():
        return keys.trending(parts[1]), "derived"
    if rest.startswith("i:{") and rest.endswith("}:stats"):
        return keys.item_stats(rest[3 : -len("}:stats")]), "hsum"
    if rest.startswith("exp:live:"):
        day, sep, who = rest[len("exp:live:") :].partition(":users:")
        if not sep:
            return keys.experiment_live(day), "hsum"
        experiment, bar, variant = who.partition("|")
        if bar:
            return keys.experiment_live_users(day, experiment, variant), "hll"
    return None


def has_legacy_aggregates(redis: Redis, keys: Keys) -> bool:
    """Whether an earlier version's aggregates or experiments state are still under their old
    names (single-key reads: cheap enough for every speed-layer start, and valid on a
    cluster)."""
    return any(redis.exists(f"{keys.prefix}:{old}") for old in ("popular", "meta", "exp:state"))


def migrate_aggregate_keys(redis: Redis, keys: Keys) -> int:
    """Move the aggregate keys of earlier versions to their ``{agg}`` names (see
    :func:`legacy_aggregate_keys`); returns how many moved. Safe to run again, and while a
    writer of this version runs: each old key is added into its new one. On one Redis only:
    the versions that wrote the old names could not run on a cluster."""
    from attune.keys import glob_escape

    script = redis.register_script(MIGRATE_AGGREGATE_SCRIPT)
    p = glob_escape(keys.prefix)
    moved = 0
    for pattern in (
        f"{p}:popular",
        f"{p}:meta",
        f"{p}:trend*",
        f"{p}:i:{{*}}:stats",
        f"{p}:exp:live:*",
        f"{p}:exp:state",
        f"{p}:exp:history",
    ):
        for raw in redis.scan_iter(match=pattern, count=1000):
            key = _s(raw)
            target = legacy_aggregate_keys(key, keys)
            if target is not None and is_cluster(redis):
                raise ValueError(
                    f"{key} is an aggregate key of an earlier version, on a Redis Cluster, where "
                    "it cannot be merged into its new name (another slot): run `attune store "
                    "migrate-keys` on one Redis before moving its data to a cluster"
                )
            if target is not None:
                moved += int(script(keys=[key, target[0]], args=[target[1]]))
    return moved


# ----------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class RecentItem:
    item_id: str
    type: str
    event_ms: int


@dataclass(frozen=True)
class SessionState:
    session_id: str
    start_ms: int
    last_ms: int
    events: int
    by_type: dict[str, int]
    last_item: str | None
    last_type: str | None


@dataclass(frozen=True)
class UserFeatures:
    """All of one user's online features, as read in one round trip."""

    user: str
    recent: list[RecentItem] = field(default_factory=list)
    affinities: dict[str, float] = field(default_factory=dict)
    as_of_ms: int | None = None
    counters: dict[str, int] = field(default_factory=dict)
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    session: SessionState | None = None
    dismissed_items: list[str] = field(default_factory=list)
    impressions_by_genre: dict[str, int] = field(default_factory=dict)
    engagements_by_genre: dict[str, int] = field(default_factory=dict)
    ignored_genres: list[str] = field(default_factory=list)

    @property
    def recent_item_ids(self) -> list[str]:
        """The last N interacted item ids, newest first: the models' sequence input."""
        return [r.item_id for r in self.recent]

    @property
    def views(self) -> int:
        return self.counters.get("item_view", 0)

    @property
    def carts(self) -> int:
        return self.counters.get("add_to_cart", 0)

    @property
    def purchases(self) -> int:
        return self.counters.get("purchase", 0)

    @property
    def is_empty(self) -> bool:
        return not (self.recent or self.counters or self.affinities or self.dismissed_items)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def evaluate_affinities(
    units: Mapping[str, int], as_of_ms: int, store: OnlineStore
) -> dict[str, float]:
    """Affinity per genre as of ``as_of_ms`` from ``{"<bucket>:<genre>": units}``."""
    out: dict[str, float] = {}
    span = store.bucket_span_ms
    for key, value in units.items():
        bucket_s, _, genre = key.partition(":")
        exponent = (int(bucket_s) * span - as_of_ms) / store.half_life_ms
        out[genre] = out.get(genre, 0.0) + int(value) * math.pow(2.0, exponent) / SCALE
    return out


def dismissals_in_force(
    dismissed: Mapping[str, float], undo: Mapping[str, float]
) -> frozenset[str]:
    """Dismissed items still in force: dismissed later than their last undo."""
    return frozenset(i for i, t in dismissed.items() if t > undo.get(i, float("-inf")))


def decode_user_features(
    user: str, raw: Sequence[Any], store: OnlineStore, as_of_ms: int | None = None
) -> UserFeatures:
    """Turn the :data:`FEATURE_READS` replies of :func:`user_feature_commands` into
    :class:`UserFeatures`.

    Dismissed items are those in force: dismissed later than the item's latest undo, if any
    (the same rule as :func:`attune.features.dismissed_items`).
    """
    recent_raw, rmeta_raw, aff_raw, cnt_raw, ses_raw, dis_raw, neg_raw, undo_raw = raw
    dismissed_at = {_s(m): float(t) for m, t in dis_raw}
    in_force = dismissals_in_force(dismissed_at, {_s(m): float(t) for m, t in undo_raw})
    meta = {_s(k): orjson.loads(v) for k, v in rmeta_raw.items()}
    recent = []
    for member, score in recent_raw:
        item = _s(member)
        info = meta.get(item, {})
        recent.append(RecentItem(item, str(info.get("type", "")), int(score)))
    counters_all = {_s(k): int(v) for k, v in cnt_raw.items()}
    first = counters_all.pop("first_t", None)
    last = counters_all.pop("last_t", None)
    when = as_of_ms if as_of_ms is not None else last
    units = {_s(k): int(v) for k, v in aff_raw.items()}
    affinities = evaluate_affinities(units, when, store) if (units and when is not None) else {}
    session = None
    if ses_raw:
        ses = {_s(k): _s(v) for k, v in ses_raw.items()}
        session = SessionState(
            session_id=ses["id"],
            start_ms=int(ses["start_t"]),
            last_ms=int(ses["last_t"]),
            events=int(ses.get("events", 0)),
            by_type={k[2:]: int(v) for k, v in ses.items() if k.startswith("n:")},
            last_item=ses.get("last_item"),
            last_type=ses.get("last_type"),
        )
    neg = {_s(k): int(v) for k, v in neg_raw.items()}
    imp = {k[4:]: v for k, v in neg.items() if k.startswith("imp:")}
    eng = {k[4:]: v for k, v in neg.items() if k.startswith("eng:")}
    ignored = sorted(
        g for g, n in imp.items() if n >= store.ignore_min_impressions and eng.get(g, 0) == 0
    )
    return UserFeatures(
        user=user,
        recent=recent,
        affinities=affinities,
        as_of_ms=when if affinities else None,
        counters=counters_all,
        first_event_ms=first,
        last_event_ms=last,
        session=session,
        dismissed_items=[m for m in dismissed_at if m in in_force],
        impressions_by_genre=imp,
        engagements_by_genre=eng,
        ignored_genres=ignored,
    )


FEATURE_READS = 8
"""How many commands :func:`user_feature_commands` queues (and replies it decodes)."""


def user_feature_commands(pipe: Any, user: str, store: OnlineStore) -> None:
    """Queue the reads of all of ``user``'s features on a pipeline (:data:`FEATURE_READS`)."""
    k = store.keys
    pipe.zrevrange(k.user_key(user, "recent"), 0, -1, withscores=True)
    pipe.hgetall(k.user_key(user, "recent_meta"))
    pipe.hgetall(k.user_key(user, "aff"))
    pipe.hgetall(k.user_key(user, "counters"))
    pipe.hgetall(k.user_key(user, "session"))
    pipe.zrevrange(k.user_key(user, "dismissed"), 0, -1, withscores=True)
    pipe.hgetall(k.user_key(user, "neg"))
    pipe.zrange(k.user_key(user, "undo"), 0, -1, withscores=True)


def read_user_features(
    redis: Redis, user: str, store: OnlineStore, *, as_of_ms: int | None = None
) -> UserFeatures:
    """All of ``user``'s online features in one pipelined round trip.

    ``user`` is the pseudonymized id (the events topic's key). Affinities are evaluated as of
    ``as_of_ms``, by default the user's latest event time (so the numbers do not depend on when
    they are read; pass the request time to compare users with each other).
    """
    pipe = redis.pipeline(transaction=False)
    user_feature_commands(pipe, user, store)
    return decode_user_features(user, pipe.execute(), store, as_of_ms)


def read_many_user_features(
    redis: Redis, users: Sequence[str], store: OnlineStore
) -> dict[str, UserFeatures]:
    """Features of several users, still one round trip."""
    pipe = redis.pipeline(transaction=False)
    for user in users:
        user_feature_commands(pipe, user, store)
    replies = pipe.execute()
    n = FEATURE_READS
    return {
        u: decode_user_features(u, replies[i * n : (i + 1) * n], store) for i, u in enumerate(users)
    }


def read_trending(
    redis: Redis, store: OnlineStore, window_s: int, k: int = 20
) -> list[tuple[str, int]]:
    """The ``k`` items with the most engagements in the trending window, best first."""
    if window_s not in store.trending_windows_s:
        raise ValueError(
            f"no trending window of {window_s} s; configured: {store.trending_windows_s}"
        )
    rows = redis.zrevrange(store.keys.trending(window_s), 0, k - 1, withscores=True)
    return [(_s(m), int(s)) for m, s in rows]


def read_popular(redis: Redis, store: OnlineStore, k: int = 20) -> list[tuple[str, int]]:
    """The ``k`` items with the most engagements of all time, best first."""
    rows = redis.zrevrange(store.keys.popular, 0, k - 1, withscores=True)
    return [(_s(m), int(s)) for m, s in rows]


def read_item_stats(redis: Redis, store: OnlineStore, item_id: str) -> dict[str, int]:
    return {_s(k): int(v) for k, v in redis.hgetall(store.keys.item_stats(item_id)).items()}


def delete_user(redis: Redis, user: str, store: OnlineStore) -> int:
    """Erase every key of ``user`` (right to erasure); returns how many keys existed.

    That is every key under the user's prefix (:meth:`attune.keys.Keys.user_glob`): the
    features, the API's suppressions, undo times and message caps, the batch layer's
    precomputed recommendations and the consent state, found with SCAN so a key added later is
    not forgotten; and the consent key of older versions, in case it was not migrated yet.
    """
    return int(redis.delete(*user_key_names(redis, user, store.keys)))


def mark_erased(redis: Redis, users: Iterable[str], keys: Keys, now_ms: int, ttl_s: int) -> int:
    """Mark ``users`` erased for ``ttl_s`` (:meth:`attune.keys.Keys.erased`): the API stops
    sending their ids to the models at once. Returns how many were marked."""
    users = list(users)
    pipe = redis.pipeline(transaction=False)
    for user in users:
        pipe.set(keys.erased(user), now_ms, ex=ttl_s)
    pipe.execute()
    return len(users)


def user_key_names(redis: Redis, user: str, keys: Keys) -> set[str]:
    """The name of every key ``user`` may have (some may not exist): the fixed per-user keys
    (:data:`attune.keys.USER_KEYS`), the consent key of older versions, and what a SCAN of the
    user's own prefix finds (message caps, and any key added later). Erasure deletes them;
    ``attune privacy export`` reads them."""
    names = {*keys.user_keys(user), keys.legacy_consent(user)}
    where: dict[str, Any] = {}
    if is_cluster(redis):  # only the master of the user's slot can hold the user's keys
        cluster: Any = redis
        where["target_nodes"] = cluster.get_node_from_key(keys.user_prefix(user))
    for key in redis.scan_iter(match=keys.user_glob(user), count=1000, **where):
        names.add(key.decode() if isinstance(key, bytes) else key)
    return names


def wait_for_item(
    redis: Redis,
    user: str,
    item_id: str,
    store: OnlineStore,
    timeout_s: float = 30.0,
    poll_s: float = 0.05,
) -> bool:
    """Wait until ``item_id`` is among ``user``'s recent items (tests, demos, benchmarks)."""
    key = store.keys.user_key(user, "recent")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if redis.zscore(key, item_id) is not None:
            return True
        time.sleep(poll_s)
    return False

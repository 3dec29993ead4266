"""What the API reads from and writes to Redis.

Reads. Every recommendation request reads everything it needs about the user in ONE pipelined round
trip (:meth:`ApiStore.read_request`): the online features of
:func:`attune.online_store.user_feature_commands` (recent items, affinities, counters, session,
dismissed items, ignored genres), the batch layer's view for the user (precomputed recommendations
and segment), the API's own feedback keys, the consent state the collector keeps, and the global
trending and popular lists. Every key name comes from :mod:`attune.keys`. Co-occurrence neighbours
of the user's items depend on what that read returned, so they are a second round trip that runs
while the model server works (:meth:`ApiStore.neighbours`).

Writes. The API owns four per-user keys (``P`` = ``speed.online_store.key_prefix``, user in
braces so a user's keys share a Redis Cluster slot; names from :mod:`attune.keys`; the first two
expire with ``user_ttl``, a message cap with its window, a chosen variant with
``user_ttl`` from the first exposure):

==============================  =====  ======================================================
key                             type   content
==============================  =====  ======================================================
``P:u:{u}:undo``                zset   item -> time (ms) its dismissal was undone
``P:u:{u}:suppressed``          zset   ``<category>\\t<item>`` -> time (ms) of the "not
                                       interested" in the item that hides the category
``P:u:{u}:msg:<message id>``    zset   showing id -> time (ms) the message was shown
``P:u:{u}:exp:<experiment>``    str    the variant a bandit chose for the user, with its
                                       propensity (:mod:`attune.experiments.bandit`)
==============================  =====  ======================================================

Feedback is also written straight into the speed layer's ``P:u:{u}:dismissed`` with exactly the
value the speed layer writes when the event reaches it (item -> event time, kept only if newer:
``ZADD GT``), so the dismissal counts at once and the later stream write changes nothing. A
dismissal is in force while its time is later than the item's undo time. ``P:u:{u}:undo`` is
shared the same way: the speed layer writes the same value (item -> undo time, if newer) when
the ``undo_feedback`` event reaches it (the same :meth:`attune.keys.Keys.user_key`), and the feature
reader applies the same rule (:func:`attune.online_store.decode_user_features`).

The catalog mirror (``P:i:{item}:meta``: title, genres) is read into memory by
:class:`CatalogCache` every ``api.catalog_refresh_s`` in a thread, so rules and reasons look
categories and titles up without another round trip. The new items' vectors
(:mod:`attune.api.new_items`) are re-read every ``api.candidates.new_items_refresh_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from attune.api.new_items import NewItems, load_new_items
from attune.config import AttuneConfig, ConfigError
from attune.experiments.bandit import REMEMBER_SCRIPT
from attune.experiments.bandit import policy_name as experiment_policy
from attune.ingest.consent import decode_state
from attune.keys import KeyTemplate
from attune.online_store import (
    FEATURE_READS,
    OnlineStore,
    UserFeatures,
    decode_user_features,
    user_feature_commands,
)
from attune.redis_connect import connect, connect_async, is_cluster

log = logging.getLogger(__name__)

SUPPRESSED_SEP = "\t"

# Frequency cap: drop showings older than the window, refuse at the cap, else record this one.
# KEYS[1]: the message's cap key. ARGV: now ms, window ms, cap, showing id.
CAP_SCRIPT = r"""
local now, window, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= cap then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return 1
"""


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass
class RequestData:
    """Everything one request knows about its user, from one round trip."""

    features: UserFeatures
    segment: str | None
    batch_recs: list[tuple[str, float]]
    suppressed: dict[str, str]  # category -> the item whose "not interested" hides it
    consent: dict[str, bool]
    trending: list[str]
    popular: list[str]
    erased: bool = False  # erased: the models must not see the user's id (Keys.erased)
    # bandit-allocated experiment -> (the user's stored variant, raw; the bandit's HGETALL)
    experiment_bandits: dict[str, tuple[Any, dict[Any, Any]]] = field(default_factory=dict)

    @property
    def has_history(self) -> bool:
        return bool(self.features.recent)


@dataclass
class ItemInfo:
    title: str = ""
    genres: tuple[str, ...] = ()


@dataclass
class CatalogCache:
    """Titles and categories of the catalog mirror, refreshed in a thread."""

    items: dict[str, ItemInfo] = field(default_factory=dict)
    loaded_at: float = 0.0

    def categories(self, item_id: str) -> tuple[str, ...]:
        info = self.items.get(item_id)
        return info.genres if info is not None else ()

    def title(self, item_id: str) -> str:
        info = self.items.get(item_id)
        return info.title if info is not None and info.title else item_id


def load_catalog(
    client: redis.Redis, store: OnlineStore, batch: int = 1000, scan_count: int = 20_000
) -> dict[str, ItemInfo]:
    """Every item's catalog mirror hash (SCAN + pipelined HMGET)."""
    family = KeyTemplate.of(store.keys.item_meta)
    out: dict[str, ItemInfo] = {}
    keys: list[bytes] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "title", "genres")
        for key, (title, genres) in zip(keys, pipe.execute(), strict=True):
            item = family.id_of(key)
            if item is None:  # cannot happen: the SCAN pattern is the family's
                continue
            try:
                parsed = orjson.loads(genres) if genres else []
            except orjson.JSONDecodeError:
                parsed = []
            out[item] = ItemInfo(_s(title or b""), tuple(str(g) for g in parsed if g))
        keys.clear()

    for key in client.scan_iter(match=family.glob(), count=scan_count):
        keys.append(key)
        if len(keys) >= batch:
            flush()
    if keys:
        flush()
    return out


class ApiStore:
    """Async Redis access of one API process."""

    def __init__(self, cfg: AttuneConfig, client: aioredis.Redis | None = None) -> None:
        self.cfg = cfg
        self.store = OnlineStore.from_config(cfg)
        self.keys = self.store.keys
        window = cfg.api.candidates.trending_window_s
        if window not in self.store.trending_windows_s:
            raise ConfigError(
                f"api.candidates.trending_window_s is {window}, but the speed layer keeps "
                f"trending windows of {list(self.store.trending_windows_s)} s "
                "(speed.features.trending_windows): pick one of those"
            )
        self.trending_key = self.keys.trending(window)
        r = cfg.redis
        self.client: aioredis.Redis = client or connect_async(
            r,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            max_connections=256,
        )
        self._cap = self.client.register_script(CAP_SCRIPT)
        self._remember = self.client.register_script(REMEMBER_SCRIPT)
        self.catalog = CatalogCache()
        self._catalog_lock = threading.Lock()
        self.new_items = NewItems()

    async def close(self) -> None:
        await self.client.aclose()  # type: ignore[attr-defined]

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    # -- reads ------------------------------------------------------------------------
    async def read_request(
        self, subject: str, now_ms: int, bandit_experiments: Sequence[str] = ()
    ) -> RequestData:
        """All of ``subject``'s data for one request, in one pipelined round trip; with
        ``bandit_experiments``, also each one's stored variant of the user and its bandit's
        state (:mod:`attune.experiments.bandit`)."""
        c = self.cfg.api.candidates
        pipe = self.client.pipeline(transaction=False)
        user_feature_commands(pipe, subject, self.store)  # FEATURE_READS replies
        pipe.zrevrange(self.keys.user_recs(subject), 0, 99, withscores=True)
        pipe.hget(self.keys.user_batch(subject), "segment")
        since = now_ms - int(self.cfg.api.rules.suppress_for.total_seconds() * 1000)
        pipe.zrangebyscore(self.keys.suppressed(subject), since, "+inf")
        pipe.get(self.keys.consent(subject))
        pipe.zrevrange(self.trending_key, 0, max(c.trending, 1) - 1)
        pipe.zrevrange(self.keys.popular, 0, c.popular - 1)
        pipe.exists(self.keys.erased(subject))
        for experiment in bandit_experiments:
            pipe.get(self.keys.user_experiment_variant(subject, experiment))
            pipe.hgetall(self.keys.bandit(experiment_policy(experiment)))
        raw = await pipe.execute()
        features = decode_user_features(subject, raw[:FEATURE_READS], self.store)
        fixed = FEATURE_READS + 7
        recs, segment, suppressed, consent, trending, popular, erased = raw[FEATURE_READS:fixed]
        bandits = {
            experiment: (raw[fixed + 2 * i], dict(raw[fixed + 2 * i + 1] or {}))
            for i, experiment in enumerate(bandit_experiments)
        }
        hidden: dict[str, str] = {}
        for member in suppressed:
            category, _, item = _s(member).partition(SUPPRESSED_SEP)
            hidden[category] = item
        return RequestData(
            features=features,
            segment=_s(segment) if segment else None,
            batch_recs=[(_s(m), float(s)) for m, s in recs],
            suppressed=hidden,
            consent=decode_state(consent),
            trending=[_s(m) for m in trending],
            popular=[_s(m) for m in popular],
            erased=bool(erased),
            experiment_bandits=bandits,
        )

    async def neighbours(
        self, seeds: Sequence[str], per_seed: int, kind: str = "session"
    ) -> dict[str, list[tuple[str, float]]]:
        """The batch layer's co-occurrence neighbours of each seed item, best first: of the
        ``kind`` ``session`` (seen in the same sessions) or ``user`` (item-kNN)."""
        if not seeds:
            return {}
        key = self.keys.item_knn if kind == "user" else self.keys.item_similar
        pipe = self.client.pipeline(transaction=False)
        for seed in seeds:
            pipe.zrevrange(key(seed), 0, per_seed - 1, withscores=True)
        replies = await pipe.execute()
        return {
            seed: [(_s(m), float(s)) for m, s in rows]
            for seed, rows in zip(seeds, replies, strict=True)
        }

    async def similar(self, item_id: str, k: int) -> tuple[list[tuple[str, float]], str]:
        """Neighbours of ``item_id``: seen in the same sessions, else bought together."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrevrange(self.keys.item_similar(item_id), 0, k - 1, withscores=True)
        pipe.zrevrange(self.keys.item_bought_with(item_id), 0, k - 1, withscores=True)
        session, bought = await pipe.execute()
        if session:
            return [(_s(m), float(s)) for m, s in session], "session_cooccurrence"
        return [(_s(m), float(s)) for m, s in bought], "purchase_cooccurrence"

    async def trending(self, k: int) -> list[tuple[str, float]]:
        rows = await self.client.zrevrange(self.trending_key, 0, k - 1, withscores=True)
        return [(_s(m), float(s)) for m, s in rows]

    async def popular(self, k: int) -> list[tuple[str, float]]:
        rows = await self.client.zrevrange(self.keys.popular, 0, k - 1, withscores=True)
        return [(_s(m), float(s)) for m, s in rows]

    async def experiment_states(self) -> dict[Any, Any]:
        """The experiments' running state hash as stored (decoded by
        :func:`attune.experiments.state.parse_states`)."""
        return dict(await self.client.hgetall(self.keys.experiments_state))

    async def read_features(self, subject: str) -> tuple[UserFeatures, str | None]:
        """Features and segment only (content slots and messages)."""
        pipe = self.client.pipeline(transaction=False)
        user_feature_commands(pipe, subject, self.store)
        pipe.hget(self.keys.user_batch(subject), "segment")
        raw = await pipe.execute()
        segment = raw[FEATURE_READS]
        return decode_user_features(subject, raw[:FEATURE_READS], self.store), (
            _s(segment) if segment else None
        )

    async def read_features_and_bandit(
        self, subject: str, policy: str
    ) -> tuple[UserFeatures, str | None, dict[Any, Any]]:
        """Features, segment and one bandit policy's state (its ``HGETALL`` reply), in one
        round trip (a content slot with a bandit, :mod:`attune.bandits.slots`)."""
        pipe = self.client.pipeline(transaction=False)
        user_feature_commands(pipe, subject, self.store)
        pipe.hget(self.keys.user_batch(subject), "segment")
        pipe.hgetall(self.keys.bandit(policy))
        raw = await pipe.execute()
        segment = raw[FEATURE_READS]
        features = decode_user_features(subject, raw[:FEATURE_READS], self.store)
        return features, (_s(segment) if segment else None), dict(raw[FEATURE_READS + 1] or {})

    async def read_features_bandit_and_caps(
        self, subject: str, policy: str, caps: Sequence[tuple[str, str, str]]
    ) -> tuple[UserFeatures, str | None, dict[Any, Any], dict[str, int]]:
        """Features, segment, one bandit policy's state and, per ``(message id, min, max)`` of
        ``caps``, the user's showings of the message with times in ``[min, max]`` (``ZCOUNT``
        bounds: :func:`attune.bandits.messages.cap_count_range`), in one round trip (the
        messages' bandit)."""
        pipe = self.client.pipeline(transaction=False)
        user_feature_commands(pipe, subject, self.store)
        pipe.hget(self.keys.user_batch(subject), "segment")
        pipe.hgetall(self.keys.bandit(policy))
        for message_id, low, high in caps:
            pipe.zcount(self.keys.message_cap(subject, message_id), low, high)
        raw = await pipe.execute()
        segment = raw[FEATURE_READS]
        features = decode_user_features(subject, raw[:FEATURE_READS], self.store)
        shown = {m: int(n) for (m, _, _), n in zip(caps, raw[FEATURE_READS + 2 :], strict=True)}
        return (
            features,
            (_s(segment) if segment else None),
            dict(raw[FEATURE_READS + 1] or {}),
            shown,
        )

    # -- writes -----------------------------------------------------------------------
    async def write_feedback(
        self,
        subject: str,
        action: str,
        items: Iterable[str],
        event_ms: int,
        undo: bool,
    ) -> None:
        """Apply dismiss / not_interested feedback (or its undo) to Redis at once."""
        ttl = self.store.user_ttl_s
        items = list(items)
        if is_cluster(self.client):  # all keys in the user's slot, so MULTI works; but redis-py
            # 8.1's cluster transaction does not read the slot map itself: read it first
            await self.client.initialize()
        pipe = self.client.pipeline(transaction=True)
        dismissed = self.keys.user_key(subject, "dismissed")
        suppressed = self.keys.suppressed(subject)
        undo_key = self.keys.user_key(subject, "undo")
        if undo:
            pipe.zadd(undo_key, {i: event_ms for i in items}, gt=True)
            pipe.zremrangebyrank(undo_key, 0, -self.store.dismissed_items - 1)
            pipe.expire(undo_key, ttl)
            if action == "not_interested":
                lifted = [
                    f"{cat}{SUPPRESSED_SEP}{i}" for i in items for cat in self.catalog.categories(i)
                ]
                if lifted:
                    pipe.zrem(suppressed, *lifted)
        else:
            pipe.zadd(dismissed, {i: event_ms for i in items}, gt=True)
            pipe.expire(dismissed, ttl)
            if action == "not_interested":
                hidden: dict[str | bytes, float] = {
                    f"{cat}{SUPPRESSED_SEP}{i}": event_ms
                    for i in items
                    for cat in self.catalog.categories(i)
                }
                if hidden:
                    pipe.zadd(suppressed, hidden, gt=True)
                    pipe.expire(suppressed, ttl)
        await pipe.execute()

    async def remember_variant(self, subject: str, experiment: str, value: bytes) -> bytes:
        """Store the user's variant of a bandit-allocated experiment unless one is stored
        (:data:`attune.experiments.bandit.REMEMBER_SCRIPT`, expiring with the user TTL);
        returns the value that is stored now: ``value``, or the one that was there first."""
        key = self.keys.user_experiment_variant(subject, experiment)
        _, stored = await self._remember(keys=[key], args=[value, self.store.user_ttl_s * 1000])
        return bytes(stored) if not isinstance(stored, bytes) else stored

    async def take_message_slot(
        self, subject: str, message_id: str, now_ms: int, window_ms: int, cap: int, showing: str
    ) -> bool:
        """Record one showing of the message unless the user reached its cap in the window."""
        key = self.keys.message_cap(subject, message_id)
        return bool(await self._cap(keys=[key], args=[now_ms, window_ms, cap, showing]))

    # -- catalog ----------------------------------------------------------------------
    def refresh_catalog_sync(self) -> int:
        """Re-read the catalog mirror (blocking; run it in a thread)."""
        r = self.cfg.redis
        client = connect(r, socket_timeout=10.0)
        try:
            items = load_catalog(client, self.store)
        finally:
            client.close()
        with self._catalog_lock:
            self.catalog = CatalogCache(items, time.time())
        return len(items)

    def refresh_new_items_sync(self) -> int:
        """Re-read the new items' vectors and content (blocking; run it in a thread); their
        titles and genres join the catalog cache at once (it is re-read far less often)."""
        r = self.cfg.redis
        client = connect(r, socket_timeout=10.0)
        try:
            new = load_new_items(client, self.keys)
        finally:
            client.close()
        missing = {
            i: ItemInfo(c.title, c.genres)
            for i, c in new.content.items()
            if i not in self.catalog.items
        }
        with self._catalog_lock:
            if missing:
                old = self.catalog
                self.catalog = CatalogCache({**old.items, **missing}, old.loaded_at)
            self.new_items = new
        return len(new)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def decode_pairs(rows: Iterable[Any]) -> list[tuple[str, float]]:
    return [(_s(m), float(s)) for m, s in rows]
